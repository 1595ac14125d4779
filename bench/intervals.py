"""Prediction intervals on every ETTh1 test window: split conformal against adaptive conformal, per model kind.

For each model kind on ETTh1 S (OT) and M: train (the baselines' closed-form fits as they are; a small AR-Net and
Informer, to early stopping; AutoTimes with SmolLM2-135M and its CPU recipe), export with the conformal calibration
on the validation split, then roll the artifact out as served (onnxruntime) from every origin of the test split and
score the 80/90/95% intervals: coverage, mean width, Winkler score and CRPS (from the 2.5/5/10/50/90/95/97.5%
quantiles), on the standardised scale, at horizon 24 (one step of every model) and 48 (rolled out; within AutoTimes'
step of 96). The adaptive method uses, for each test origin, the 336 origins before it (the history a caller would
send; ``--origins``), exactly as the server does (``serving.intervals.adapt_needed``). Then the extra latency per
request, side by side over real gRPC (a server process, one client): no levels, split-conformal levels, adaptive
levels.

    python bench/intervals.py                 # everything: bench/results/intervals.json
    python bench/intervals.py --readme        # print the README tables, draw bench/results/intervals.svg
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "intervals.json"
CHART = ROOT / "bench" / "results" / "intervals.svg"
LEVELS = (0.8, 0.9, 0.95)
CRPS_PROBS = np.array([0.025, 0.05, 0.1, 0.5, 0.9, 0.95, 0.975])
LOOKBACK, STEP, MAX_HORIZON, HORIZONS = 96, 24, 48, (24, 48)
KINDS = ("naive", "seasonal_naive", "linear", "arnet", "informer", "autotimes")
# What differs from each model's published protocol (the baselines are fitted in closed form as they are).
REDUCED = {
    "arnet": "hidden (64,), lookback 96, no tuning (up to 40 epochs, patience 5 on validation)",
    "informer": "d_model 32, lookback 96 / label 48 (the paper: 512, tuned lengths; its 6 epochs, patience 3, halving)",
    "autotimes": "SmolLM2-135M (the paper: LLaMA-7B), MLP maps 2x512, 3 epochs, lookback 672 (the CPU recipe)",
}


def this_command() -> str:
    return " ".join(["bench/intervals.py", *sys.argv[1:]])


def save(results: dict[str, Any]) -> None:
    """Write the results, recording this invocation in ``commands`` (every command that wrote the file, in order)."""
    from arcast_core.files import atomic_write_text

    command = this_command()
    commands = results.setdefault("commands", [])
    if command not in commands:
        commands.append(command)
    atomic_write_text(RESULTS, json.dumps(results, indent=1))


def changed_results(results: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to the results file as it is now (a run in parallel may have written since this one read
    it: two model kinds can train at once, a rescore can run beside a training), save, and return what was saved."""
    from arcast_core.files import exclusive_lock

    with exclusive_lock(RESULTS.with_name(RESULTS.name + ".lock")):
        current = json.loads(RESULTS.read_text()) if RESULTS.exists() else results
        change(current)
        save(current)
    return current


def append_rows(results: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Add ``rows`` to the results file as it is now, save, and return what was saved."""
    return changed_results(results, lambda current: current["rows"].extend(rows))


def model_setup(kind: str, folder: Path, features: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    from arcast_core.training import TrainConfig

    data: dict[str, Any] = {"lookback": LOOKBACK, "horizon": STEP}
    train = TrainConfig(epochs=1, batch_size=64, lr=1e-3, progress=False)
    params: dict[str, Any] = {}
    # AR-Net and Informer train until validation stops improving (the best epoch is kept), as a user would serve
    # them: until 2026-12-05 they stopped after 5 and 1 epochs, and their intervals were those of unfinished models.
    if kind == "arnet":
        params = {"hidden_sizes": (64,)}
        train = replace(train, epochs=40, patience=5, lr=3e-3)
    elif kind == "informer":
        data["label_len"] = 48
        params = {"d_model": 32, "n_heads": 4, "d_ff": 64}
        train = replace(train, epochs=6, patience=3, batch_size=32, lr=1e-3, lr_schedule="halving")
    elif kind == "autotimes":  # the selected CPU recipe of bench/autotimes.py (autotimes-mlp.json), every window
        data = {"lookback": 672, "horizon": 96}  # 7 segments of 96 in, the next segment out; served at 24 and 48
        params = {"backbone": "smollm2-135m", "mlp_hidden_layers": 2, "mlp_hidden_dim": 512}
        checkpoint = str(folder / f"autotimes-{features}.checkpoint")  # resumable: a few CPU-hours on M
        train = replace(train, epochs=3, batch_size=32, lr=1e-3, warmup_steps=36, autocast="bf16", progress=True)
        train = replace(train, checkpoint=checkpoint)
    return data, params, train


def served_rollouts(runner: Any, table: Any, first: int, end: int, horizon: int) -> np.ndarray:
    """Forecasts (origins, horizon, C) from every origin in first..end-1 (context: the rows before it)."""
    length = runner.context_length
    origins = np.arange(first, end)
    out = []
    for lo in range(0, len(origins), 512):
        chunk = origins[lo : lo + 512]
        rows = chunk[:, None] + np.arange(-length, 0)[None]
        stamps = table.timestamps[rows] if runner.calendar is not None else None
        out.append(runner.forecast(table.values[rows].astype(np.float32), horizon, stamps))
    return np.concatenate(out).astype(np.float64)


def past_needs(need: np.ndarray, origins: np.ndarray, windows: np.ndarray, origins_k: int, chunk: int = 256):
    """Per chunk of ``windows`` (indices into ``origins``): the needed levels (B, K, h, C) of the K origins before
    each, NaN where the actual was not yet observed at the window's origin (what a caller's history holds)."""
    horizon = need.shape[1]
    for lo in range(0, len(windows), chunk):
        w = windows[lo : lo + chunk]
        idx = w[:, None] - origins_k + np.arange(origins_k)[None]  # (B, K) into origins
        seen = origins[idx][:, :, None] + np.arange(horizon)[None, None] < origins[w][:, None, None]
        yield lo, np.where(seen[..., None], need[idx], np.nan)


def score(
    kind: str, features: str, artifact_path: Path, origins_k: int, gamma: float, warm: bool, decay: float
) -> list[dict[str, Any]]:
    from forecasting.data import DataConfig, prepare_data
    from serving.artifact import read_artifact
    from serving.intervals import adapt_needed, coverage, crps_from_quantiles, load_calibration, winkler
    from serving.runners import load_runner

    artifact = read_artifact(artifact_path)
    runner, calibration = load_runner(artifact), load_calibration(artifact)
    assert calibration is not None
    prepared = prepare_data(DataConfig(**artifact.manifest.data.config))  # type: ignore[arg-type]
    table = prepared.table
    test_start, test_end = prepared.borders.test
    first_target = test_start + prepared.config.lookback  # the test split starts lookback rows early
    start = first_target - origins_k  # the adaptive backtest's earliest origin (rows of the validation period)
    preds = served_rollouts(runner, table, start, test_end, MAX_HORIZON)
    origins = np.arange(start, test_end)
    rows = origins[:, None] + np.arange(MAX_HORIZON)[None]
    actual = table.values[np.minimum(rows, len(table) - 1)].astype(np.float64)
    residuals = np.where((rows < test_end)[..., None], actual - preds, np.nan)  # (O, H, C)
    std = np.asarray(prepared.scaler.std, np.float64)
    out = []
    for horizon in HORIZONS:
        windows = np.flatnonzero((origins >= first_target) & (origins + horizon <= test_end))
        point, truth = preds[windows, :horizon] / std, actual[windows, :horizon] / std
        levels = np.array(LEVELS)
        split = np.broadcast_to(levels[:, None, None, None], (len(levels), len(windows), horizon, 1))
        # Adaptive: per test origin t, the residuals of origins t-K..t-1 observed before t, through the server's
        # update (``adapt`` = needed levels, then ``adapt_needed``; each residual's needed level computed once).
        adapted = np.empty((len(levels), len(windows), horizon, std.size))
        need = calibration.needed_levels(residuals[:, :horizon])
        for lo, past in past_needs(need, origins, windows, origins_k):
            adapted[:, lo : lo + len(past)] = adapt_needed(levels, past, gamma, warm, decay)
        for method, level_grid in (("split_conformal", split), ("adaptive", adapted)):
            lo_off, hi_off = calibration.offsets(level_grid, horizon)
            quantiles = [point + calibration.at(np.full((horizon, 1), 0.5), horizon) / std]
            for k in range(len(LEVELS)):
                quantiles += [point + lo_off[k] / std, point + hi_off[k] / std]
            probs = np.array([0.5, *[p for level in LEVELS for p in ((1 - level) / 2, (1 + level) / 2)]])
            order = np.argsort(probs)
            crps = crps_from_quantiles(np.stack(quantiles)[order], probs[order], truth)
            for k, level in enumerate(LEVELS):
                lower, upper = point + lo_off[k] / std, point + hi_off[k] / std
                out.append(
                    {
                        "model": kind,
                        "dataset": "ETTh1",
                        "features": features,
                        "horizon": horizon,
                        "method": method,
                        "level": level,
                        "coverage": coverage(lower, upper, truth),
                        "width": float(np.mean(upper - lower)),
                        "winkler": winkler(lower, upper, truth, level),
                        "crps": crps,
                        "windows": len(windows),
                        "mean_adapted_level": float(level_grid[k].mean()),
                    }
                )
    return out


def train_and_export(kind: str, features: str, work: Path, quantile: bool = False) -> tuple[Any, Any, float]:
    """Train ``kind`` on ETTh1 ``features`` with this benchmark's settings (``quantile``: with the quantile levels)
    and export it to the work folder's store as ``kind[-quantile]-features``: the run, the artifact and the
    training seconds."""
    from forecasting.data import DataConfig
    from forecasting.export import export_run
    from forecasting.runs import train_run

    t0 = time.perf_counter()
    data, params, train = model_setup(kind, work, features)
    params = {**params, "quantile_levels": LEVELS} if quantile else params
    config = DataConfig(dataset="ETTh1", features=features, target="OT", **data)
    run = train_run(kind, config, params, train, evaluate_test=False)
    trained = time.perf_counter() - t0
    return (
        run,
        export_run(run, work / "store", artifact_name(kind, features, quantile), max_horizon=MAX_HORIZON),
        trained,
    )


def artifact_name(kind: str, features: str, quantile: bool = False) -> str:
    """The store name of this benchmark's model of ``kind`` on ``features`` (its quantile-trained variant)."""
    return f"{kind}-quantile-{features}" if quantile else f"{kind}-{features}"


def run_models(args: argparse.Namespace, results: dict[str, Any], work: Path) -> None:
    done = {(r["model"], r["features"]) for r in results["rows"]}
    for features in args.features:
        for kind in args.models:
            if (kind, features) in done:
                continue
            t0 = time.perf_counter()
            run, artifact, trained = train_and_export(kind, features, work)
            calibrated = artifact.manifest.facts["calibration"]
            rows = score(kind, features, artifact.path, args.origins, args.gamma, args.warm, args.decay)
            for row in rows:
                row.update(
                    reduced=kind in REDUCED,
                    reduced_reasons=REDUCED.get(kind, ""),
                    calibration_windows=calibrated["windows"],
                    val_mse=run.metrics["val"]["scaled"]["mse"],
                    adaptive_origins=args.origins,
                    adaptive_gamma=args.gamma,
                    adaptive_warm=args.warm,
                    adaptive_decay=args.decay,
                    seconds=round(time.perf_counter() - t0, 1),
                    train_seconds=round(trained, 1),
                )
            results = append_rows(results, rows)
            short = [(r["method"][:5], r["horizon"], r["level"], round(r["coverage"], 3)) for r in rows]
            print(f"{kind} {features}: {time.perf_counter() - t0:.0f}s {short}", flush=True)


def export_models(args: argparse.Namespace, results: dict[str, Any], work: Path) -> None:
    """Train and export, without scoring, every model of ``--models`` and ``--features`` (with ``--quantile`` their
    quantile-trained variants) that the work folder lacks: a new work folder for ``--rescore``, ``--adaptive-study``
    and ``--latency-only`` when the one that made the rows is gone (same settings as the rows' runs)."""
    from serving.artifact import list_artifacts

    have = {p.parent.name for p in list_artifacts(work / "store")} if (work / "store").is_dir() else set()
    for features in args.features:
        for kind in args.models:
            quantile = args.quantile and kind in QUANTILE_KINDS
            name = artifact_name(kind, features, quantile)
            if name in have or (args.quantile and not quantile):
                continue
            t0 = time.perf_counter()
            train_and_export(kind, features, work, quantile)
            print(f"exported {name}: {time.perf_counter() - t0:.0f}s", flush=True)


def latest_artifact(work: Path, name: str) -> Path:
    from serving.artifact import list_artifacts

    found = [p for p in list_artifacts(work / "store") if p.parent.name == name]
    if not found:
        raise FileNotFoundError(f"no artifact {name} under {work / 'store'} (set ARCAST_BENCH_WORK)")
    return max(found, key=lambda p: int(p.name))


def trained_facts(kind: str, artifact: Path) -> dict[str, Any]:
    """What a row says of the model it scored, read from that artifact (a rescore may score a retrained one)."""
    from serving.artifact import read_artifact

    manifest = read_artifact(artifact).manifest
    facts = {"reduced": kind in REDUCED, "reduced_reasons": REDUCED.get(kind, "")}
    if manifest.metrics.get("val"):  # the baselines without a validation pass have none
        facts["val_mse"] = manifest.metrics["val"]["scaled"]["mse"]
    fit = manifest.facts.get("fit") or {}
    if fit.get("seconds") is not None:  # the training loop's own time
        facts["train_seconds"] = round(fit["seconds"], 1)
    return facts


def rescore(args: argparse.Namespace, results: dict[str, Any], work: Path) -> None:
    """Score the conformal rows again from the artifacts already exported (no training): new adaptive settings."""
    for kind, features in dict.fromkeys(
        (r["model"], r["features"]) for r in results["rows"] if r["method"] != "quantile"
    ):
        if kind not in args.models or features not in args.features:
            continue
        t0 = time.perf_counter()
        artifact = latest_artifact(work, artifact_name(kind, features))
        fresh = score(kind, features, artifact, args.origins, args.gamma, args.warm, args.decay)
        new = {(r["horizon"], r["method"], r["level"]): r for r in fresh}
        trained = trained_facts(kind, artifact)

        def rescored(
            current: dict[str, Any],
            kind: str = kind,
            features: str = features,
            new: dict = new,
            trained: dict = trained,
        ) -> None:
            for row in current["rows"]:
                if (row["model"], row["features"]) == (kind, features) and row["method"] != "quantile":
                    row.update(new[row["horizon"], row["method"], row["level"]], **trained)
                    row.update(adaptive_origins=args.origins, adaptive_gamma=args.gamma, adaptive_warm=args.warm)
                    row.update(adaptive_decay=args.decay)

        changed_results(results, rescored)
        short = [(r["horizon"], r["level"], round(r["coverage"], 3)) for r in fresh if r["method"] == "adaptive"]
        print(f"rescored {kind} {features}: {time.perf_counter() - t0:.0f}s adaptive {short}", flush=True)


# Adaptive settings compared on the validation split (``--adaptive-study``): (gamma, warm start, decay of the warm
# start's weights).
CANDIDATES = (
    *((gamma, False, 1.0) for gamma in (0.01, 0.02, 0.05)),
    *((gamma, True, 1.0) for gamma in (0.0, 0.005, 0.01, 0.02)),
    *((0.0, True, decay) for decay in (0.995, 0.99, 0.98, 0.97, 0.95)),
    *((gamma, True, 0.99) for gamma in (0.002, 0.005, 0.01)),  # the update on top of the weighted warm start
)


def adaptive_study(args: argparse.Namespace, results: dict[str, Any], work: Path) -> None:
    """Choose the adaptive defaults without the test split: calibrate on the first half of the validation split,
    adapt on its second half (K origins before each window, as a caller sends them), per candidate setting the
    coverage at every (horizon, level); a window's interval at level l covers exactly when l >= the needed level."""
    from forecasting.data import DataConfig, prepare_data
    from serving.artifact import read_artifact
    from serving.intervals import PROBS, Calibration, adapt_needed, conformal_quantiles
    from serving.runners import load_runner

    study = []
    for kind, features in dict.fromkeys(
        (r["model"], r["features"]) for r in results["rows"] if r["method"] != "quantile"
    ):
        if kind not in args.models or features not in args.features:
            continue
        artifact = read_artifact(latest_artifact(work, artifact_name(kind, features)))
        runner = load_runner(artifact)
        prepared = prepare_data(DataConfig(**artifact.manifest.data.config))  # type: ignore[arg-type]
        table, (val_start, val_end) = prepared.table, prepared.borders.val
        first = val_start + prepared.config.lookback
        mid = first + (val_end - first) // 2
        origins = np.arange(first - args.origins, val_end)
        preds = served_rollouts(runner, table, origins[0], val_end, MAX_HORIZON)
        rows = origins[:, None] + np.arange(MAX_HORIZON)[None]
        actual = table.values[np.minimum(rows, len(table) - 1)].astype(np.float64)
        residuals = np.where((rows < val_end)[..., None], actual - preds, np.nan)
        early = (origins >= first) & (origins < mid)
        calibrating = np.where((rows[early] < mid)[..., None], residuals[early], np.nan)
        calibration = Calibration(PROBS, *conformal_quantiles(calibrating), {})
        levels = np.array(LEVELS)
        for horizon in HORIZONS:
            windows = np.flatnonzero((origins >= mid) & (origins + horizon <= val_end))
            need = calibration.needed_levels(residuals[:, :horizon])
            own = need[windows]  # each window's own needed levels: covered when its level reaches them
            cells = {"split_conformal": (levels[:, None, None, None] >= own[None]).mean(axis=(1, 2, 3))}
            for gamma, warm, decay in CANDIDATES:
                covered = np.zeros(len(levels))
                for lo, past in past_needs(need, origins, windows, args.origins):
                    adapted = adapt_needed(levels, past, gamma, warm, decay)
                    covered += (adapted >= own[None, lo : lo + len(past)]).sum(axis=(1, 2, 3))
                name = f"gamma {gamma:g}{', warm' if warm else ''}{f', decay {decay:g}' if decay != 1 else ''}"
                cells[name] = covered / own.size
            for method, cov in cells.items():
                for k, level in enumerate(LEVELS):
                    study.append(
                        {
                            "model": kind,
                            "features": features,
                            "horizon": horizon,
                            "setting": method,
                            "level": level,
                            "coverage": float(cov[k]),
                            "windows": len(windows),
                        }
                    )
            print(kind, features, horizon, {m: np.round(c, 3).tolist() for m, c in cells.items()}, flush=True)
    settings = dict.fromkeys(r["setting"] for r in study)
    summary = {}
    for setting in settings:
        got = [r for r in study if r["setting"] == setting]
        gaps = np.array([abs(r["coverage"] - r["level"]) for r in got])
        summary[setting] = {
            "cells": len(got),
            "within_2_points": int((gaps <= 0.02).sum()),
            "mean_abs_gap": float(gaps.mean()),
            "max_abs_gap": float(gaps.max()),
        }
        print(setting, summary[setting], flush=True)
    entry = {
        "protocol": "validation split only: calibrated on its first half, adapted and scored on its second half",
        "origins": args.origins,
        "rows": study,
        "summary": summary,
        "command": " ".join(sys.argv),
    }
    changed_results(
        results, lambda current: current.setdefault("adaptive_study", {}).update({f"origins_{args.origins}": entry})
    )


QUANTILE_KINDS = ("linear", "arnet")  # the kinds with a quantile (pinball) training option


def score_quantiles(kind: str, features: str, artifact_path: Path) -> list[dict[str, Any]]:
    """Method "quantile" rows: the artifact's learnt quantiles on every test window at horizon 24 (one model step,
    which is all they cover), beside the split-conformal interval of the same artifact on the same windows."""
    from forecasting.data import DataConfig, prepare_data
    from serving.artifact import read_artifact
    from serving.intervals import coverage, crps_from_quantiles, load_calibration, winkler
    from serving.quantile_head import load_quantile_head, quantile_bounds, run_quantiles
    from serving.runners import load_runner

    artifact = read_artifact(artifact_path)
    runner, calibration, head = load_runner(artifact), load_calibration(artifact), load_quantile_head(artifact)
    assert calibration is not None and head is not None
    prepared = prepare_data(DataConfig(**artifact.manifest.data.config))  # type: ignore[arg-type]
    table = prepared.table
    test_start, test_end = prepared.borders.test
    first_target = test_start + prepared.config.lookback
    origins = np.arange(first_target, test_end - STEP + 1)  # every test window with all 24 actuals
    point = served_rollouts(runner, table, first_target, test_end - STEP + 1, STEP)
    length = runner.context_length
    quantiles = np.concatenate(
        [
            run_quantiles(runner, head, table.values[o[:, None] + np.arange(-length, 0)[None]].astype(np.float32))[1]
            for o in np.array_split(origins, max(1, len(origins) // 512))
        ]
    ).astype(np.float64)  # (O, Q, 24, C)
    rows = origins[:, None] + np.arange(STEP)[None]
    std = np.asarray(prepared.scaler.std, np.float64)
    truth, point = table.values[rows].astype(np.float64) / std, point / std
    levels = np.array(LEVELS)
    lower, upper = (b / std for b in quantile_bounds(quantiles, head.pick(levels), STEP))  # (K, O, 24, C)
    # CRPS over the same probabilities as the conformal rows: the point forecast stands in for the median
    probs = np.array([0.5, *[p for level in LEVELS for p in ((1 - level) / 2, (1 + level) / 2)]])
    stacked = np.stack([point, *[b for k in range(len(LEVELS)) for b in (lower[k], upper[k])]])
    order = np.argsort(probs)
    crps = crps_from_quantiles(stacked[order], probs[order], truth)
    out = []
    for k, level in enumerate(LEVELS):
        lo_off, hi_off = calibration.offsets(np.array(level), STEP)
        split_lo, split_hi = point + lo_off / std, point + hi_off / std
        out.append(
            {
                "model": kind,
                "dataset": "ETTh1",
                "features": features,
                "horizon": STEP,
                "method": "quantile",
                "level": level,
                "coverage": coverage(lower[k], upper[k], truth),
                "width": float(np.mean(upper[k] - lower[k])),
                "winkler": winkler(lower[k], upper[k], truth, level),
                "crps": crps,
                "windows": len(origins),
                "crps_median": "the point forecast",
                "quantile_levels": list(LEVELS),
                # the same artifact's split-conformal interval on the same windows (AR-Net's point forecast is
                # that of the quantile-trained model, not the plain model's of the split_conformal rows)
                "same_artifact_split_conformal": {
                    "coverage": coverage(split_lo, split_hi, truth),
                    "width": float(np.mean(split_hi - split_lo)),
                    "winkler": winkler(split_lo, split_hi, truth, level),
                },
            }
        )
    return out


def run_quantile_models(args: argparse.Namespace, results: dict[str, Any], work: Path) -> None:
    """Train the quantile variant of each kind (quantile_levels 0.8/0.9/0.95), export, score: method "quantile"."""
    done = {(r["model"], r["features"]) for r in results["rows"] if r["method"] == "quantile"}
    for features in args.features:
        for kind in QUANTILE_KINDS:
            if (kind, features) in done or kind not in args.models:
                continue
            t0 = time.perf_counter()
            run, artifact, trained = train_and_export(kind, features, work, quantile=True)
            rows = score_quantiles(kind, features, artifact.path)
            for row in rows:
                row.update(
                    reduced=kind in REDUCED,
                    reduced_reasons=REDUCED.get(kind, ""),
                    val_mse=run.metrics["val"]["scaled"]["mse"],
                    seconds=round(time.perf_counter() - t0, 1),
                    train_seconds=round(trained, 1),
                )
            results = append_rows(results, rows)
            short = [
                (r["level"], round(r["coverage"], 3), round(r["same_artifact_split_conformal"]["coverage"], 3))
                for r in rows
            ]
            print(f"{kind} {features} quantile: {time.perf_counter() - t0:.0f}s {short}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latency(args: argparse.Namespace, results: dict[str, Any], work: Path) -> None:
    """Median latency of one Forecast over real gRPC, 1 client, no levels / split conformal / adaptive, interleaved,
    for each of ``--models`` whose S artifact the work folder's store holds; each model is sent its own context
    plus ``--origins`` rows of history (every variant the same). Their rows replace those models' rows in the
    results; other models' rows stay (a costly model can run with fewer ``--requests``)."""
    from forecasting.data import DataConfig, prepare_data
    from serving.artifact import read_artifact
    from serving.client import ArcastClient
    from serving.runners import load_runner
    from serving.runners.forecast import ForecastRunner

    store = work / "store"
    prepared = prepare_data(DataConfig(dataset="ETTh1", features="S", target="OT", lookback=LOOKBACK, horizon=STEP))
    values = prepared.table.values[:, 0]
    start = prepared.borders.test[0]
    command = this_command()
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "serving", "serve", "--store", str(store), "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = []
    try:
        with ArcastClient(f"127.0.0.1:{port}") as client:
            for _ in range(200):
                try:
                    if client.health() == "SERVING":
                        break
                except Exception:
                    pass
                time.sleep(0.25)
            served = {m.name for m in client.list_models()}
            for kind in [k for k in args.models if artifact_name(k, "S") in served]:  # --models' S artifacts
                plain, learnt = artifact_name(kind, "S"), artifact_name(kind, "S", quantile=True)
                # A calendar-feature model (Informer) needs the history's timestamps, as its callers send them.
                runner = load_runner(read_artifact(latest_artifact(work, plain)))
                assert isinstance(runner, ForecastRunner)
                calendar, history = runner.calendar is not None, runner.context_length + args.origins
                del runner  # AutoTimes' holds its LLM's session: the server's is the one to keep
                # variant -> (model, request options, the variant it adds to)
                variants: dict[str, tuple[str, dict[str, Any], str]] = {
                    "none": (plain, {}, "none"),
                    "split_conformal": (plain, {"levels": LEVELS}, "none"),
                    "adaptive": (plain, {"levels": LEVELS, "method": "adaptive"}, "none"),
                }
                if learnt in served:  # the quantile-trained model: its own point forecast is the baseline
                    variants["quantile_none"] = (learnt, {}, "quantile_none")
                    variants["quantile"] = (learnt, {"levels": LEVELS, "method": "quantile"}, "quantile_none")
                times: dict[str, list[float]] = {name: [] for name in variants}
                names = list(variants)
                # Each round sends every variant once, in a fresh random order: a request runs slower after another
                # model's or a heavy (adaptive) one, and a fixed rotation would give each variant its own mix of
                # predecessors (seen: the quantile model's requests read 5 to 9% faster with levels than without).
                order = np.random.default_rng(0)
                for i in range(args.requests + 20):
                    rows = slice(start + i, start + i + history)
                    stamps = {"timestamps": [prepared.table.timestamps[rows]]} if calendar else {}
                    for name in order.permutation(names):
                        model, extra, _ = variants[name]
                        t0 = time.perf_counter()
                        client.forecast(model, [values[rows]], STEP, **extra, **stamps)
                        if i >= 20:  # warm-up
                            times[name].append(time.perf_counter() - t0)
                medians = {name: float(np.median(samples)) for name, samples in times.items()}
                for name, samples in times.items():
                    model, _, baseline = variants[name]
                    base = medians[baseline]
                    # The same round's requests differ only in the variant: the median of those paired differences
                    # cancels the load drifting between rounds, which a difference of two medians does not.
                    paired = np.asarray(samples) - np.asarray(times[baseline])
                    low, high = _median_interval(paired)
                    out.append(
                        {
                            "model": model,
                            "variant": name,
                            "requests": len(samples),
                            "median_ms": round(medians[name] * 1e3, 3),
                            "mean_ms": round(float(np.mean(samples)) * 1e3, 3),
                            "p90_ms": round(float(np.quantile(samples, 0.9)) * 1e3, 3),
                            "baseline": baseline,
                            "extra_vs_none_pct": round(100 * (medians[name] - base) / base, 1),
                            "paired_extra_ms": round(float(np.median(paired)) * 1e3, 4),
                            "paired_extra_pct": round(100 * float(np.median(paired)) / base, 1),
                            "paired_extra_pct_95ci": [round(100 * low / base, 1), round(100 * high / base, 1)],
                            "history_steps": history,
                            "origins": args.origins,
                            "command": command,
                        }
                    )
                    print(out[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    measured = {r["model"] for r in out}

    def merge(current: dict[str, Any]) -> None:
        kept = [r for r in current.get("latency", []) if r["model"] not in measured]
        current["latency"] = kept + out
        current.pop("latency_command", None)  # each row carries its command

    changed_results(results, merge)


def _median_interval(samples: np.ndarray, resamples: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval of the samples' median (seeded: a rerun on the same samples gives the same)."""
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(samples, (resamples, len(samples))), axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def _with_extra(row: dict[str, Any]) -> str:
    """A latency cell: the median and the extra over its baseline (paired, with its interval, where recorded)."""
    if "paired_extra_pct" not in row:  # a row from before the paired figures
        return f"{row['median_ms']:.2f} ({row['extra_vs_none_pct']:+.0f}%)"
    low, high = row["paired_extra_pct_95ci"]
    return f"{row['median_ms']:.2f} ({row['paired_extra_pct']:+.1f}% [{low:+.1f}, {high:+.1f}])"


def readme_table(results: dict[str, Any]) -> str:
    methods = ("split_conformal", "adaptive")
    head = (
        "| model | split conformal | adaptive | width split / adaptive "
        "| Winkler split / adaptive | CRPS split / adaptive |"
    )
    lines = []
    for features in ("S", "M"):
        for horizon in HORIZONS:
            lines.append(
                f"\n**ETTh1 {features}, horizon {horizon}** (coverage % at 80 / 90 / 95; at 90%: mean width and "
                "Winkler score; CRPS; standardised scale, every test window)\n"
            )
            lines += [head, "|---|---|---|---|---|---|"]
            for kind in KINDS:
                rows = [
                    r for r in results["rows"] if (r["model"], r["features"], r["horizon"]) == (kind, features, horizon)
                ]
                if not rows:
                    continue
                get = {(r["method"], r["level"]): r for r in rows}
                cov = {m: " / ".join(f"{100 * get[m, lv]['coverage']:.1f}" for lv in LEVELS) for m in methods}
                s90, a90 = get["split_conformal", 0.9], get["adaptive", 0.9]
                star = " *" if rows[0]["reduced"] else ""
                lines.append(
                    f"| {kind}{star} | {cov['split_conformal']} | {cov['adaptive']} | "
                    f"{s90['width']:.3f} / {a90['width']:.3f} | {s90['winkler']:.3f} / {a90['winkler']:.3f} | "
                    f"{s90['crps']:.4f} / {a90['crps']:.4f} |"
                )
    quantile = [r for r in results["rows"] if r["method"] == "quantile"]
    if quantile:
        lines += [
            "\n**Learnt quantiles against conformal, horizon 24** (same test windows; coverage % at 80 / 90 / 95; at "
            "90%: mean width, Winkler score; CRPS with the point forecast as the median; `split (same artifact)`: the "
            "quantile-trained artifact's own split-conformal interval)\n",
            "| model | features | quantile | split (same artifact) | split conformal | adaptive "
            "| width q / split | Winkler q / split | CRPS q / split |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for features in ("S", "M"):
            for kind in QUANTILE_KINDS:
                q = {r["level"]: r for r in quantile if (r["model"], r["features"]) == (kind, features)}
                conformal = {
                    (r["method"], r["level"]): r
                    for r in results["rows"]
                    if (r["model"], r["features"], r["horizon"]) == (kind, features, STEP)
                }
                if not q or not conformal:
                    continue
                same = " / ".join(f"{100 * q[lv]['same_artifact_split_conformal']['coverage']:.1f}" for lv in LEVELS)
                cov = {m: " / ".join(f"{100 * conformal[m, lv]['coverage']:.1f}" for lv in LEVELS) for m in methods}
                s90 = conformal["split_conformal", 0.9]
                star = " *" if q[0.9]["reduced"] else ""
                learnt = " / ".join(f"{100 * q[lv]['coverage']:.1f}" for lv in LEVELS)
                lines.append(
                    f"| {kind}{star} | {features} | {learnt} "
                    f"| {same} | {cov['split_conformal']} | {cov['adaptive']} "
                    f"| {q[0.9]['width']:.3f} / {s90['width']:.3f} | {q[0.9]['winkler']:.3f} / {s90['winkler']:.3f} "
                    f"| {q[0.9]['crps']:.4f} / {s90['crps']:.4f} |"
                )
    if results.get("latency"):
        origins = {r["origins"] for r in results["latency"]}
        if len(origins) != 1:
            raise ValueError(f"latency rows with different adaptive origins {sorted(origins)}: rerun them alike")
        (origins,) = origins
        lines += [
            f"\n**Latency per Forecast** (one series, the model's context plus {origins} rows of history, "
            "horizon 24, real gRPC, 1 client; median ms; in brackets: the extra over the same model without levels, "
            "the median of each round's paired difference (a round sends every variant once, back to back, "
            "in a random order), "
            "with its 95% bootstrap interval)\n",
            f"| model | no levels | split conformal (3 levels) | adaptive (3 levels, "
            f"{origins} origins) "
            "| quantile model: no levels | quantile (3 levels) |",
            "|---|---|---|---|---|---|",
        ]
        for model in dict.fromkeys(r["model"] for r in results["latency"] if "quantile" not in r["variant"]):
            kind = model.rsplit("-", 1)[0]
            got = {
                r["variant"]: r
                for r in results["latency"]
                if r["model"] in (model, artifact_name(kind, "S", quantile=True))
            }
            cells = [f"{got['none']['median_ms']:.2f}"] + [
                _with_extra(got[v]) if v in got else "-" for v in ("split_conformal", "adaptive")
            ]
            cells.append(f"{got['quantile_none']['median_ms']:.2f}" if "quantile_none" in got else "-")
            q = got.get("quantile")
            cells.append(_with_extra(q) if q else "-")
            lines.append(f"| {model} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(KINDS))
    parser.add_argument("--features", nargs="+", default=["S", "M"])
    parser.add_argument("--origins", type=int, default=None, help="adaptive: backtest origins (default: the server's)")
    parser.add_argument("--gamma", type=float, default=None, help="adaptive: step size (default: the server's)")
    parser.add_argument("--requests", type=int, default=300, help="latency: requests per variant")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="only the latency run (models already exported)")
    parser.add_argument(
        "--readme", action="store_true", help="print the README tables and draw bench/results/intervals.svg"
    )
    parser.add_argument("--fresh", action="store_true", help="start the results over")
    parser.add_argument("--warm", action=argparse.BooleanOptionalAction, default=None, help="adaptive: warm start")
    parser.add_argument("--decay", type=float, default=None, help="adaptive: warm start's weights (default: server's)")
    parser.add_argument("--rescore", action="store_true", help="score the conformal rows again (exported models)")
    parser.add_argument(
        "--export-only", action="store_true", help="train and export the models the work folder lacks, no rows"
    )
    parser.add_argument("--adaptive-study", action="store_true", help="compare adaptive settings on validation")
    parser.add_argument(
        "--quantile", action="store_true", help="only the quantile-trained linear and AR-Net: method quantile rows"
    )
    args = parser.parse_args()
    if args.readme:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from charts import coverage_chart  # matplotlib only for the chart

        results = json.loads(RESULTS.read_text())
        coverage_chart(results["rows"], KINDS, LEVELS, HORIZONS, CHART)
        print(readme_table(results))
        return 0
    results: dict[str, Any] = {"rows": [], "commands": []}
    if RESULTS.exists() and not args.fresh:
        results = json.loads(RESULTS.read_text())
    work = Path(os.environ.get("ARCAST_BENCH_WORK") or tempfile.mkdtemp(prefix="intervals-"))
    print(f"work folder {work}", flush=True)
    from serving.intervals import DEFAULT_DECAY, DEFAULT_GAMMA, DEFAULT_ORIGINS, DEFAULT_WARM

    args.warm = DEFAULT_WARM if args.warm is None else args.warm
    args.origins = DEFAULT_ORIGINS if args.origins is None else args.origins
    args.gamma = DEFAULT_GAMMA if args.gamma is None else args.gamma
    args.decay = DEFAULT_DECAY if args.decay is None else args.decay
    only = [
        mode
        for flag, mode in (
            (args.export_only, export_models),
            (args.quantile and not args.export_only, run_quantile_models),
            (args.rescore, rescore),
            (args.adaptive_study, adaptive_study),
        )
        if flag
    ]
    for mode in only:  # modes that stand alone (on the models already exported, except --quantile)
        mode(args, results, work)
    if only:
        return 0
    if not args.latency_only:
        run_models(args, results, work)
    if not args.skip_latency:
        latency(args, results, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
