"""Conformal calibration at export: the staged artifact rolled out by its own serving runner over every validation
window, its signed residuals per horizon step and channel stored as quantiles (``serving.intervals``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forecasting.data import prepare_data
from forecasting.runs import Run
from serving.artifact import Artifact
from serving.intervals import backtest_residuals, write_calibration
from serving.runners import load_runner
from serving.runners.forecast import ForecastRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationOptions:
    """``horizon``: steps calibrated (default: the artifact's max_horizon, at most half the validation targets, so
    the last step still has half the windows); ``stride``: every stride-th validation origin (1: every window)."""

    horizon: int | None = None
    stride: int = 1
    batch_size: int = 512


def validation_residuals(
    run: Run, runner: ForecastRunner, options: CalibrationOptions
) -> tuple[np.ndarray, dict[str, Any]]:
    """Signed residuals (origins, H, C), NaN where the actual lies past the validation split, of the served
    rollout from every validation origin (the forecasts' targets all lie in the validation split)."""
    prepared = prepare_data(run.data)
    if tuple(prepared.channels) != tuple(runner.channels):
        raise ValueError(f"data channels {prepared.channels} differ from the artifact's {runner.channels}")
    start, end = prepared.borders.val
    first = max(start + run.data.lookback, runner.context_length)  # the first validation target's row
    if end - first < 1:
        raise ValueError("the validation split has no target rows to calibrate on")
    horizon = min(options.horizon or runner.max_horizon, runner.max_horizon, max((end - first) // 2, 1))
    history = prepared.table.values[:end]
    origins = np.arange(first, end, max(options.stride, 1))
    stamps = prepared.table.timestamps
    length = runner.context_length
    preds = []
    for lo in range(0, len(origins), options.batch_size):
        chunk = origins[lo : lo + options.batch_size]
        rows = chunk[:, None] + np.arange(-length, 0)[None]
        context = np.ascontiguousarray(history[rows], dtype=np.float32)
        preds.append(runner.forecast(context, horizon, stamps[rows] if runner.calendar is not None else None))
    residuals = backtest_residuals(history.astype(np.float64), origins, np.concatenate(preds).astype(np.float64))
    dates = prepared.table.timestamps
    facts = {
        "split": "validation",
        "method": "split conformal: signed residual quantiles per step and channel, finite-sample corrected",
        "origins": [str(dates[first]), str(dates[end - 1])],
        "stride": max(options.stride, 1),
    }
    return residuals, facts


def calibrate(run: Run, options: CalibrationOptions, staged: Artifact, folder: Path) -> dict[str, Any]:
    """Write ``calibration.npz`` into the staged artifact folder; returns its manifest entry."""
    runner = load_runner(staged)
    assert isinstance(runner, ForecastRunner)
    residuals, facts = validation_residuals(run, runner, options)
    entry = {**write_calibration(folder, residuals), **facts}
    log.info("calibrated %s: %d windows, %d steps", staged.name, entry["windows"], entry["horizon"])
    return entry
