"""Forecast accuracy: the papers' scaled metrics and the same in original units."""

from __future__ import annotations

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
