"""Is a leaderboard margin real? Two rows of one cell compared window by window on the same test windows.

A row's MSE is a mean over thousands of overlapping windows whose errors move together, so two rows 0.5% apart may
differ by chance alone. This rebuilds both rows' models from what ``bench/results/leaderboard.json`` records (the
baselines refitted as the leaderboard fits them; AR-Net retrained with the settings its search chose), exports
them, runs each artifact as served on every test window (``forecasting.evaluate.served_forecasts``), checks that
the rebuilt model scores the row's MSE, and compares the per-window losses with the Diebold-Mariano test
(``forecasting.metrics.paired_difference``; Newey-West variance over ``horizon`` lags, and over 4 x ``horizon``
as a check on that choice). Results go to ``bench/results/paired.json`` (a ``rows`` list, one per comparison,
replaced when rerun).

AutoTimes rows cost hours to rebuild, so that comparison takes a checkpoint of ``bench/autotimes.py`` instead
(``--autotimes-checkpoint``; with ``--autotimes-run``, the results file of the run that wrote it, whose test MSE the
checkpoint's forecasts are checked against) and scores it on the windows that script scores.

    .venv/bin/python bench/paired.py --protocol arnet --horizon 48 --models arnet linear
    .venv/bin/python bench/paired.py --autotimes-run bench/results/autotimes-mlp.json --baseline linear \\
        --autotimes-checkpoint bench/work/autotimes-mlp/plain-k1-mlp2x512-bf16-lr0.001.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import leaderboard

from arcast_core.files import atomic_write_text
from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, prepare_data
from forecasting.evaluate import served_forecasts
from forecasting.export import export_run
from forecasting.metrics import paired_difference

RESULTS = leaderboard.REPO_ROOT / "bench" / "results" / "paired.json"
REBUILDABLE = (*leaderboard.BASELINES, "arnet")  # refitted in seconds, or retrained in about a minute
# A rebuilt model must score its row's MSE within this (relative): else it is not the row's model.
REPRODUCED_RTOL = 1e-3
AUTOTIMES_TEST_STRIDE = 2  # bench/autotimes.py's default --test-stride here without --autotimes-run (every 2nd)


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


def per_window_losses(task: leaderboard.Task, row: dict[str, Any], data_dir: str | None) -> np.ndarray:
    """The rebuilt model's squared error per test window (mean over steps and channels, scaled; their mean is its
    MSE)."""
    run = rebuild(task, row, data_dir)
    with tempfile.TemporaryDirectory(prefix="paired-") as store:
        artifact = export_run(run, store, "m", max_horizon=max(task.horizon, run.model.step))
        served = served_forecasts(artifact.path, horizon=task.horizon, data_dir=data_dir, progress=False)
    return np.mean((served.predictions.astype(np.float64) - served.actuals) ** 2, axis=(1, 2))


def comparison_row(
    cell: dict[str, Any], loss_a: np.ndarray, loss_b: np.ndarray, lag: int, started: float, **facts: Any
) -> dict[str, Any]:
    """A results row: the ``cell`` (protocol ... b), both mean losses, ``facts``, the paired difference at ``lag``
    (windows) and the check at 4 x ``lag``."""
    primary, wider = paired_difference(loss_a, loss_b, lag), paired_difference(loss_a, loss_b, 4 * lag)
    mse_a, mse_b = float(loss_a.mean()), float(loss_b.mean())
    return {
        **cell,
        "mse_a": mse_a,
        "mse_b": mse_b,
        **facts,
        "relative_difference": primary["mean_difference"] / mse_b,
        **primary,
        "check_lag_4h": {k: wider[k] for k in ("se", "ci95", "dm_statistic", "p_value", "lag")},
        "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(["bench/paired.py", *sys.argv[1:]]),
    }


def compare(task: leaderboard.Task, rows: dict[str, dict[str, Any]], data_dir: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    (a, row_a), (b, row_b) = rows.items()
    loss_a, loss_b = (per_window_losses(task, row, data_dir) for row in (row_a, row_b))
    for name, row, losses in ((a, row_a, loss_a), (b, row_b, loss_b)):
        mse = float(losses.mean())
        if len(losses) != row["windows"] or not np.isclose(mse, row["mse"], rtol=REPRODUCED_RTOL, atol=0):
            raise SystemExit(
                f"{name}: the rebuilt model scores {mse:.6g} on {len(losses)} windows, its row {row['mse']:.6g} on "
                f"{row['windows']}: not the row's model"
            )
    cell = {"protocol": task.protocol, "dataset": task.dataset, "features": task.features, "horizon": task.horizon}
    facts = {"row_mse_a": row_a["mse"], "row_mse_b": row_b["mse"]}
    return comparison_row({**cell, "a": a, "b": b}, loss_a, loss_b, task.horizon, started, **facts)


def autotimes_comparison(
    checkpoint: Path, baseline: str, seed: int, run_file: Path | None = None
) -> list[dict[str, Any]]:
    """AutoTimes (a checkpoint of ``bench/autotimes.py --variants plain`` with the selected recipe's MLP maps) against
    ``baseline`` on the windows the run scored (``run_file``'s test stride and cap; without it every 2nd), each
    rolled out to 720 h (AutoTimes: the sliding rollout it serves; the baseline as the leaderboard fits it, its torch
    model rolled out as served), one comparison per horizon and one of the four horizons' mean loss on the windows
    that fit 720 h. ``run_file``: the results of the run that wrote the checkpoint; each row then records that run's
    test MSE and whether the checkpoint's forecasts reproduce it (``reproduced``, within ``REPRODUCED_RTOL``)."""
    from autotimes import BLOCKS, HORIZONS, LOOKBACK, SEGMENT, baseline_forecast, load_plain, predict, scored_windows

    started = time.perf_counter()
    task = leaderboard.Task("autotimes", "ETTh1", "M", SEGMENT, LOOKBACK, train_horizon=SEGMENT)
    data = DataConfig(dataset="ETTh1", features="M", lookback=LOOKBACK, horizon=SEGMENT)
    prepared = prepare_data(data)
    split = prepared.test
    recorded_run = json.loads(run_file.read_text()) if run_file else None
    # the run's own test windows (its --test-stride and --max-test-windows), so that its recorded MSE is reproduced
    bounds = recorded_run["bounds"] if recorded_run else {"test_stride": AUTOTIMES_TEST_STRIDE}
    stride = bounds["test_stride"]
    index = scored_windows(split, stride, bounds.get("max_test_windows"), seed)
    model = load_plain(checkpoint, data, prepared.n_channels, hidden_layers=2, hidden_dim=512)
    ours = predict(model, split, index, 64, "sliding", BLOCKS).astype(np.float64)
    run = leaderboard.baseline(task, baseline, None).run
    theirs = baseline_forecast(run, prepared, split, index, BLOCKS * SEGMENT).astype(np.float64)
    losses = horizon_losses(ours, theirs, split.values, index, HORIZONS, LOOKBACK)
    recorded = recorded_run["accuracy"]["plain, sliding"] if recorded_run else None
    out = []
    for horizon, (a, b) in losses.items():
        lag = -(-(max(HORIZONS) if horizon == "average" else int(horizon)) // stride)  # in windows
        cell = {"protocol": "autotimes", "dataset": "ETTh1", "features": "M", "horizon": horizon}
        facts = {"checkpoint": str(checkpoint), "test_stride": stride}
        if recorded:
            facts.update(reproduction(recorded, horizon, float(a.mean())))
        out.append(comparison_row({**cell, "a": "autotimes", "b": baseline}, a, b, lag, started, **facts))
    return out


def reproduction(recorded: dict[str, Any], horizon: str, mse: float) -> dict[str, Any]:
    """The run's own test MSE at ``horizon`` (a horizon or "average", which the run averages over every horizon's
    windows, not only those that fit the longest: no check) and whether ``mse`` reproduces it."""
    if horizon == "average":
        return {"row_mse_a": recorded["average"]["mse"]}
    row = recorded["per_horizon"][horizon]["mse"]
    return {"row_mse_a": row, "reproduced": bool(np.isclose(mse, row, rtol=REPRODUCED_RTOL, atol=0))}


def horizon_losses(
    ours: np.ndarray,
    theirs: np.ndarray,
    values: np.ndarray,
    index: np.ndarray,
    horizons: Sequence[int],
    lookback: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per horizon, both forecasts' squared error per window (mean over steps and channels) on the windows of
    ``index`` (sorted starts in ``values``, lookback first) whose horizon lies within ``values``; "average": the
    horizons' mean loss on the windows that fit the longest."""
    losses: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for h in horizons:
        valid = index[index + lookback + h <= len(values)]
        true = np.stack([values[i + lookback : i + lookback + h] for i in valid]).astype(np.float64)
        a, b = ((pred[: len(valid), :h] - true) ** 2 for pred in (ours, theirs))  # index sorted: valid ones first
        losses[str(h)] = (a.mean(axis=(1, 2)), b.mean(axis=(1, 2)))
    fit_all = len(losses[str(max(horizons))][0])
    losses["average"] = (
        np.mean([losses[str(h)][0][:fit_all] for h in horizons], axis=0),
        np.mean([losses[str(h)][1][:fit_all] for h in horizons], axis=0),
    )
    return losses


def save_rows(out: Path, results: list[dict[str, Any]]) -> None:
    """Add ``results`` to the file, replacing the rows of the same comparisons."""
    done = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    same = ("protocol", "dataset", "features", "horizon", "a", "b")
    keys = {tuple(r[k] for k in same) for r in results}
    done["rows"] = [r for r in done["rows"] if tuple(r[k] for k in same) not in keys] + results
    atomic_write_text(out, json.dumps(done, indent=1) + "\n")


def report(result: dict[str, Any]) -> None:
    print(
        f"{result['protocol']} {result['dataset']} {result['features']} {result['horizon']}: {result['a']} "
        f"{result['mse_a']:.5f} - {result['b']} {result['mse_b']:.5f} = {result['mean_difference']:+.5f} "
        f"(95% [{result['ci95'][0]:+.5f}, {result['ci95'][1]:+.5f}], p {result['p_value']:.3f})",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="arnet", choices=("informer", "autotimes", "arnet"))
    parser.add_argument("--dataset", default="ETTh1")
    parser.add_argument("--features", default="S", choices=("S", "M"))
    parser.add_argument("--horizon", type=int, nargs="+", help="one comparison per horizon")
    parser.add_argument("--models", nargs=2, metavar=("A", "B"), help=f"two of {', '.join(REBUILDABLE)}: is A below B?")
    parser.add_argument(
        "--autotimes-checkpoint",
        type=Path,
        help="instead of --models: AutoTimes from this checkpoint of bench/autotimes.py (the selected recipe: "
        "--variants plain, MLP maps 2 x 512) against --baseline, at every horizon of the autotimes protocol",
    )
    parser.add_argument("--autotimes-run", type=Path, help="the results file of the run that wrote the checkpoint")
    parser.add_argument("--baseline", default="linear", choices=leaderboard.BASELINES)
    parser.add_argument("--seed", type=int, default=0, help="the AutoTimes run's --seed (its test window choice)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for AutoTimes' forecasts")
    parser.add_argument("--data-dir", default=None, help="the ETT folder (default: ../shared/data)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.autotimes_checkpoint is not None:
        if not args.autotimes_checkpoint.is_file():
            parser.error(f"--autotimes-checkpoint: {args.autotimes_checkpoint} is not a file")
        torch.set_num_threads(args.threads)
        results = autotimes_comparison(args.autotimes_checkpoint, args.baseline, args.seed, args.autotimes_run)
        save_rows(args.out, results)
        for result in results:
            report(result)
        return 0
    if not args.horizon or not args.models:
        parser.error("--horizon and --models are required (or --autotimes-checkpoint)")
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
        save_rows(args.out, [result])
        report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
