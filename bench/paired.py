"""Is a leaderboard margin real? Two rows of one cell compared window by window on the same test windows.

A row's MSE is a mean over thousands of overlapping windows whose errors move together, so two rows 0.5% apart may
differ by chance alone. This rebuilds both rows' models from what ``bench/results/leaderboard.json`` records (the
baselines refitted as the leaderboard fits them; AR-Net retrained with the settings its search chose), exports
them, runs each artifact as served on every test window (``forecasting.evaluate.served_forecasts``), checks that
the rebuilt model scores the row's MSE, and compares the per-window losses with the Diebold-Mariano test
(``forecasting.metrics.paired_difference``; Newey-West variance over ``horizon`` lags, and over 4 x ``horizon``
as a check on that choice). Results go to ``bench/results/paired.json`` (a ``rows`` list, one per comparison,
replaced when rerun).

    .venv/bin/python bench/paired.py --protocol arnet --horizon 48 --models arnet linear
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import leaderboard

from arcast_core.files import atomic_write_text
from arcast_core.training import TrainConfig
from forecasting.data import DataConfig
from forecasting.evaluate import served_forecasts
from forecasting.export import export_run
from forecasting.metrics import paired_difference

RESULTS = leaderboard.REPO_ROOT / "bench" / "results" / "paired.json"
REBUILDABLE = (*leaderboard.BASELINES, "arnet")  # refitted in seconds, or retrained in about a minute
# A rebuilt model must score its row's MSE within this (relative): else it is not the row's model.
REPRODUCED_RTOL = 1e-3


def leaderboard_row(rows: list[dict[str, Any]], task: leaderboard.Task, model: str) -> dict[str, Any]:
    for row in rows:
        if leaderboard.row_key(row) == (task.protocol, task.dataset, task.features, task.horizon, model):
            return row
    raise SystemExit(f"--models: no {model} row for {task} in {leaderboard.DEFAULT_OUT}")


def rebuild(task: leaderboard.Task, row: dict[str, Any], data_dir: str | None) -> Any:
    """The row's model trained again: a baseline as the leaderboard fits it, AR-Net with its recorded settings."""
    if row["model"] in leaderboard.BASELINES:
        return leaderboard.baseline(task, row["model"], data_dir).run
    settings = row["details"]["settings"]
    data = DataConfig(**{**settings["data"], "data_dir": data_dir})
    run, _ = leaderboard.timed_train("arnet", data, settings["model"], TrainConfig(**settings["train"]))
    return run


def per_window_losses(task: leaderboard.Task, row: dict[str, Any], data_dir: str | None) -> tuple[np.ndarray, float]:
    """The rebuilt model's squared error per test window (mean over steps and channels, scaled) and its MSE."""
    run = rebuild(task, row, data_dir)
    with tempfile.TemporaryDirectory(prefix="paired-") as store:
        artifact = export_run(run, store, "m", max_horizon=max(task.horizon, run.model.step))
        served = served_forecasts(artifact.path, horizon=task.horizon, data_dir=data_dir, progress=False)
    losses = np.mean((served.predictions.astype(np.float64) - served.actuals) ** 2, axis=(1, 2))
    return losses, float(losses.mean())


def compare(task: leaderboard.Task, rows: dict[str, dict[str, Any]], data_dir: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    (a, row_a), (b, row_b) = rows.items()
    loss_a, mse_a = per_window_losses(task, row_a, data_dir)
    loss_b, mse_b = per_window_losses(task, row_b, data_dir)
    for name, row, mse, losses in ((a, row_a, mse_a, loss_a), (b, row_b, mse_b, loss_b)):
        if len(losses) != row["windows"] or not np.isclose(mse, row["mse"], rtol=REPRODUCED_RTOL, atol=0):
            raise SystemExit(
                f"{name}: the rebuilt model scores {mse:.6g} on {len(losses)} windows, its row {row['mse']:.6g} on "
                f"{row['windows']}: not the row's model"
            )
    primary = paired_difference(loss_a, loss_b, lag=task.horizon)
    wider = paired_difference(loss_a, loss_b, lag=4 * task.horizon)
    return {
        "protocol": task.protocol,
        "dataset": task.dataset,
        "features": task.features,
        "horizon": task.horizon,
        "a": a,
        "b": b,
        "mse_a": mse_a,
        "mse_b": mse_b,
        "row_mse_a": row_a["mse"],
        "row_mse_b": row_b["mse"],
        "relative_difference": primary["mean_difference"] / mse_b,
        **primary,
        "check_lag_4h": {k: wider[k] for k in ("se", "ci95", "dm_statistic", "p_value", "lag")},
        "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(["bench/paired.py", *sys.argv[1:]]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="arnet", choices=("informer", "autotimes", "arnet"))
    parser.add_argument("--dataset", default="ETTh1")
    parser.add_argument("--features", default="S", choices=("S", "M"))
    parser.add_argument("--horizon", type=int, nargs="+", required=True, help="one comparison per horizon")
    parser.add_argument(
        "--models", nargs=2, required=True, metavar=("A", "B"), help=f"two of {', '.join(REBUILDABLE)}: is A below B?"
    )
    parser.add_argument("--data-dir", default=None, help="the ETT folder (default: ../shared/data)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the leaderboard trains by default (--threads 1): the same AR-Net weights
    unknown = [m for m in args.models if m not in REBUILDABLE]
    if unknown or args.models[0] == args.models[1]:
        parser.error(f"--models: {args.models}: two different models of {', '.join(REBUILDABLE)}")
    rows = json.loads(leaderboard.DEFAULT_OUT.read_text())["rows"]
    tasks = {(t.dataset, t.features, t.horizon): t for t in leaderboard.protocol_tasks(args.protocol)}
    for horizon in args.horizon:
        task = tasks.get((args.dataset, args.features, horizon))
        if task is None:
            where = f"the {args.protocol} protocol on {args.dataset} {args.features}"
            parser.error(f"--horizon: {horizon} is not a horizon of {where}")
        result = compare(task, {m: leaderboard_row(rows, task, m) for m in args.models}, args.data_dir)
        done = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
        same = ("protocol", "dataset", "features", "horizon", "a", "b")
        done["rows"] = [r for r in done["rows"] if any(r[k] != result[k] for k in same)] + [result]
        atomic_write_text(args.out, json.dumps(done, indent=1) + "\n")
        print(
            f"{task.protocol} {task.dataset} {task.features} {horizon}: {result['a']} {result['mse_a']:.5f} - "
            f"{result['b']} {result['mse_b']:.5f} = {result['mean_difference']:+.5f} "
            f"(95% [{result['ci95'][0]:+.5f}, {result['ci95'][1]:+.5f}], p {result['p_value']:.3f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
