"""Where AutoTimes loses to `linear`: the next segment's (96 h) scaled MSE per ETTh1 channel, on validation and test.

The AutoTimes runs are compared on their four-horizon average, which hides which series carry the difference.
This scores, on the windows `bench/autotimes.py` scores (every 4th validation window, every 2nd test window), the
one-segment forecast of each given AutoTimes checkpoint (sliding rollout, as served) beside `linear` (fitted as the
leaderboard fits it) and seasonal naive (the last day repeated), channel by channel.

    .venv/bin/python bench/autotimes_channels.py bench/work/autotimes-seed1/plain-k1-mlp2x512-bf16-lr0.001.pt \\
        bench/work/autotimes-seed2/plain-k1-mlp2x512-bf16-lr0.001.pt   # -> bench/results/autotimes-channels.json

A checkpoint must come from `bench/autotimes.py --variants plain` with the MLP maps given here (the selected
recipe's: two hidden layers of 512).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autotimes import (
    LOOKBACK,
    REPO_ROOT,
    SEGMENT,
    baseline_forecast,
    choice_windows,
    load_plain,
    predict,
    save,
    scored_windows,
)
from leaderboard import CLOSED_FORM, Task, linear_on_validation, timed_train

from forecasting.data import DataConfig, WindowDataset, prepare_data

VAL_STRIDE, TEST_STRIDE = 4, 2  # bench/autotimes.py's --val-stride and --test-stride of the seed runs


def channel_mse(pred: np.ndarray, split: WindowDataset, index: np.ndarray) -> list[float]:
    """Scaled MSE of ``pred`` (windows, >= SEGMENT, C) per channel, over the next SEGMENT steps of each window."""
    true = np.stack([split.values[i + LOOKBACK : i + LOOKBACK + SEGMENT] for i in index])
    return ((pred[:, :SEGMENT].astype(np.float64) - true) ** 2).mean(axis=(0, 1)).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, help="AutoTimes checkpoints (bench/autotimes.py)")
    parser.add_argument("--mlp-hidden-layers", type=int, default=2)
    parser.add_argument("--mlp-hidden-dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="the runs' --seed, for their window choice")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "autotimes-channels.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = DataConfig(dataset="ETTh1", features="M", lookback=LOOKBACK, horizon=SEGMENT)
    prepared = prepare_data(data)
    # the windows bench/autotimes.py scores: choose_rollout's on validation, main's on test
    splits = {
        "val": (prepared.val, choice_windows(prepared.val, VAL_STRIDE, args.seed)),
        "test": (prepared.test, scored_windows(prepared.test, TEST_STRIDE, None, args.seed)),
    }
    rows: dict[str, dict[str, list[float]]] = {"val": {}, "test": {}}
    # the baselines as bench/autotimes.py's ``baselines`` fits them, rolled out by their torch models as served
    linear = linear_on_validation(Task("autotimes", "ETTh1", "M", SEGMENT, LOOKBACK, train_horizon=SEGMENT), data)
    runs = {
        "linear": linear.run,
        "seasonal_naive": timed_train("seasonal_naive", data, {}, CLOSED_FORM, prepared=prepared)[0],
    }
    for name, (split, index) in splits.items():
        for kind, run in runs.items():
            rows[name][kind] = channel_mse(baseline_forecast(run, prepared, split, index, SEGMENT), split, index)
    for checkpoint in args.checkpoints:
        model = load_plain(checkpoint, data, prepared.n_channels, args.mlp_hidden_layers, args.mlp_hidden_dim)
        label = f"autotimes {checkpoint.parent.name}"
        for name, (split, index) in splits.items():
            started = time.perf_counter()
            pred = predict(model, split, index, 64, "sliding", 1)
            rows[name][label] = channel_mse(pred, split, index)
            print(f"{label} {name}: {time.perf_counter() - started:.0f} s", flush=True)
    result: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "about": __doc__.split("\n\n")[0] if __doc__ else "",
        "channels": list(prepared.channels),
        "windows": {name: len(index) for name, (_, index) in splits.items()},
        "linear_chosen": linear.details["chosen"],
        "mse": rows,
    }
    save(result, args.out)
    for name, table in rows.items():
        print(f"\n{name}: scaled MSE of the next {SEGMENT} h | " + " | ".join(prepared.channels) + " | mean")
        for model, values in table.items():
            print(f"{model} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
