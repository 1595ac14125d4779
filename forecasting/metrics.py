"""Forecast accuracy: the papers' scaled metrics and the same in original units."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from forecasting.splits import StandardScaler


def error_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    err = pred.astype(np.float64) - true.astype(np.float64)
    mse = float(np.mean(err**2))
    return {"mse": mse, "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(mse))}


def forecast_metrics(
    pred_scaled: np.ndarray, true_scaled: np.ndarray, scaler: StandardScaler
) -> dict[str, dict[str, float]]:
    """Metrics over every window, horizon step and channel: scaled (the published protocol) and original units."""
    return {
        "scaled": error_metrics(pred_scaled, true_scaled),
        "original": error_metrics(scaler.inverse(pred_scaled), scaler.inverse(true_scaled)),
    }


def error_by_horizon(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """MSE at each horizon step (N, H, C) -> (H,), for plots of how error grows with lead time."""
    return np.mean((pred.astype(np.float64) - true) ** 2, axis=(0, 2))


def paired_difference(loss_a: np.ndarray, loss_b: np.ndarray, lag: int) -> dict[str, Any]:
    """Is forecast A's mean loss really below B's on the same windows? The Diebold-Mariano comparison (1995):
    ``d = loss_a - loss_b`` per window (in time order), its mean, and a standard error from the Newey-West (Bartlett)
    long-run variance over ``lag`` autocovariances, since neighbouring windows share most of their targets and their
    errors are correlated (a horizon-h forecast's overlap alone reaches lag h - 1). Returns the mean difference, its
    standard error, the 95% interval (normal), the DM statistic and its two-sided p-value; negative: A is better."""
    d = np.asarray(loss_a, np.float64) - np.asarray(loss_b, np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"paired losses: {d.shape} is not one loss per window for two or more windows")
    n, lag = len(d), min(max(lag, 0), len(d) - 1)
    centred = d - d.mean()
    variance = float(centred @ centred) / n
    for k in range(1, lag + 1):
        variance += 2 * (1 - k / (lag + 1)) * float(centred[k:] @ centred[:-k]) / n
    se = float(np.sqrt(max(variance, 0.0) / n))
    mean = float(d.mean())
    stat = mean / se if se > 0 else 0.0
    p_value = float(math.erfc(abs(stat) / math.sqrt(2)))
    return {
        "mean_difference": mean,
        "se": se,
        "ci95": [mean - 1.96 * se, mean + 1.96 * se],
        "dm_statistic": stat,
        "p_value": p_value,
        "windows": n,
        "lag": lag,
    }
