"""Would averaging several AutoTimes runs' forecasts beat `linear`? A study, not a served model.

Every recipe tried on this CPU scores 0.407 to 0.442 on test while reruns of one command move validation by up to
0.04: much of what separates the runs is the draw. Averaging the forecasts of several runs (each a head over the same
frozen backbone) cancels some of it. This rolls out each member (a ``bench/autotimes.py --variants plain`` run with
MLP maps 2 x 512, given by its results file; its checkpoint is the one file under the command's ``--checkpoint-dir``)
with the sliding rollout on the windows the runs are compared on (every 4th validation window, which the
leaderboard's choice reads, and every 2nd test window), checks that each member reproduces its file's validation and
test averages, and scores the members' mean forecast on both. Each member's forecasts are cached (``--work-dir``), so
an interrupted study resumes. Results: ``bench/results/autotimes-ensemble.json``.

    .venv/bin/python bench/autotimes_ensemble.py --threads 2 --members bench/results/autotimes-full2.json \\
        bench/results/autotimes-mix.json bench/results/autotimes-full-mix.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autotimes import (
    BLOCKS,
    LOOKBACK,
    REPO_ROOT,
    SEGMENT,
    choice_windows,
    load_plain,
    now,
    predict,
    save,
    score,
    scored_windows,
)
from leaderboard import command_option

from forecasting.data import DataConfig, prepare_data

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "autotimes-ensemble.json"
VARIANT = "plain, sliding"
REPRODUCED_RTOL = 1e-3  # a member's average MSE against its file's (thread counts change the last bits)


def member_checkpoint(run: dict[str, Any]) -> Path:
    """The one checkpoint under the run's ``--checkpoint-dir`` (relative to the repository, as the runs record it)."""
    folder = command_option(run["command"], "--checkpoint-dir")
    if folder is None:
        raise ValueError(f"the run {run['command']!r} kept no checkpoint (no --checkpoint-dir)")
    found = sorted((REPO_ROOT / folder).glob("plain-*.pt"))
    if len(found) != 1:
        raise ValueError(f"expected one plain-*.pt checkpoint under {REPO_ROOT / folder}, found {len(found)}")
    return found[0]


def check_member(path: Path, run: dict[str, Any]) -> None:
    """A member must be a plain run with the 2 x 512 MLP maps that chose and scored the sliding rollout."""
    wrong = [
        f"{option} {value}"
        for option, value in (("--mlp-hidden-layers", "2"), ("--mlp-hidden-dim", "512"), ("--test-stride", "2"))
        if command_option(run["command"], option) != value
    ]
    if command_option(run["command"], "--variants") not in (None, "plain"):  # absent: bench/autotimes.py's plain
        wrong.append("--variants plain")
    if run.get("rollout_choice", {}).get("plain", {}).get("chosen") != "sliding" or VARIANT not in run["accuracy"]:
        wrong.append("validation's choice and test score of the sliding rollout")
    if wrong:
        raise ValueError(f"{path}: not a member this study can use (needs {', '.join(wrong)})")


def member_forecasts(
    member: Path, checkpoint: Path, windows: dict[str, np.ndarray], prepared: Any, data: DataConfig, work: Path
) -> dict[str, np.ndarray]:
    """The member's sliding rollouts (windows, 720, C) from each split's ``windows``, each cached under ``work``
    (the model is loaded only where a split's cache is missing)."""
    model = None
    out = {}
    for split, index in windows.items():
        cache = work / f"{member.stem}-{split}.npy"
        if cache.exists():
            out[split] = np.load(cache)
            continue
        if model is None:
            model = load_plain(checkpoint, data, prepared.n_channels, hidden_layers=2, hidden_dim=512)
        out[split] = predict(model, getattr(prepared, split), index, 16, "sliding", BLOCKS).astype(np.float32)
        work.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.npy")
        np.save(partial, out[split])
        partial.replace(cache)  # a cache file is whole or absent
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", nargs="+", type=Path, required=True, help="bench/autotimes.py results files")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' --seed (their windows' draw)")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "bench" / "work" / "autotimes-ensemble")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if len(args.members) < 2:
        parser.error("--members: an ensemble needs at least two runs")
    runs, checkpoints = {}, {}
    for path in args.members:
        if not path.is_file():
            parser.error(f"--members: {path} is not a file")
        runs[path] = json.loads(path.read_text())
        try:
            check_member(path, runs[path])
            checkpoints[path] = member_checkpoint(runs[path])
        except ValueError as err:
            parser.error(f"--members: {err}")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = DataConfig(dataset="ETTh1", features="M", lookback=LOOKBACK, horizon=SEGMENT)
    prepared = prepare_data(data)
    windows = {  # as bench/autotimes.py draws them: validation at --val-stride 4, test at --test-stride 2
        "val": choice_windows(prepared.val, 4, args.seed),
        "test": scored_windows(prepared.test, 2, None, args.seed),
    }
    result: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "started": now(),
        "rollout": "sliding",
        "windows": {split: len(index) for split, index in windows.items()},
        "members": {},
    }
    recorded_key = {"val": "validation", "test": "accuracy"}
    totals: dict[str, np.ndarray] = {}
    for member, run in runs.items():
        preds = member_forecasts(member, checkpoints[member], windows, prepared, data, args.work_dir)
        for split, pred in preds.items():
            scored = score(pred, getattr(prepared, split).values, windows[split])
            recorded = run[recorded_key[split]][VARIANT]["average"]["mse"]
            if not np.isclose(scored["average"]["mse"], recorded, rtol=REPRODUCED_RTOL, atol=0):
                raise SystemExit(
                    f"{member}: its checkpoint scores {scored['average']['mse']:.4f} on {split}, its file records "
                    f"{recorded:.4f}: the checkpoint is not the run's"
                )
            result["members"].setdefault(str(member), {})[split] = scored
            totals[split] = totals[split] + pred if split in totals else pred.astype(np.float64)
            print(f"{member.name} {split}: {scored['average']['mse']:.4f}", flush=True)
    result["ensemble"] = {
        split: score(total / len(runs), getattr(prepared, split).values, windows[split])
        for split, total in totals.items()
    }
    for split, scored in result["ensemble"].items():
        print(f"mean of {len(runs)} {split}: {scored['average']['mse']:.4f}", flush=True)
    result["baselines"] = runs[args.members[0]].get("baselines", {})  # on the same test windows
    result["seconds"] = time.perf_counter() - started
    save(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
