"""Evaluate an exported artifact exactly as it is served: onnxruntime, window-shift rollout, every test window."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from forecasting.data import DataConfig, WindowDataset, prepare_data
from forecasting.metrics import error_by_horizon, forecast_metrics
from forecasting.splits import StandardScaler
from serving.artifact import read_artifact
from serving.runners import load_runner


@dataclass
class ServedForecasts:
    """An artifact's forecasts on every window of a split as served, and the actuals, on the training scale."""

    artifact: Any  # serving.artifact.Artifact
    config: DataConfig  # the data the windows come from (horizon and lookback as evaluated)
    prepared: Any  # forecasting.data.PreparedData
    predictions: np.ndarray  # (windows, horizon, channels), scaled
    actuals: np.ndarray  # (windows, horizon, channels), scaled
    scaler: StandardScaler


def served_forecasts(
    path: Path | str,
    horizon: int | None = None,
    split: str = "test",
    data_dir: str | None = None,
    dataset: str | None = None,
    batch_size: int = 512,
    progress: bool = True,
) -> ServedForecasts:
    """The artifact at ``path`` run as served (onnxruntime, its rollout) from every window of ``split``."""
    artifact = read_artifact(path)
    model = load_runner(artifact)
    horizon = horizon or model.step
    manifest = artifact.manifest
    if manifest.data.config is None:
        raise ValueError(f"{path}: the manifest records no data config to evaluate on")
    base = DataConfig(**manifest.data.config)
    config = replace(
        base, horizon=horizon, lookback=model.context_length, data_dir=data_dir, dataset=dataset or base.dataset
    )
    prepared = prepare_data(config)
    if tuple(prepared.channels) != manifest.channels:
        raise ValueError(f"data channels {prepared.channels} differ from the model's {list(manifest.channels)}")
    rows = getattr(prepared.borders, split)
    raw = prepared.table.values[slice(*rows)]
    windows = WindowDataset(raw, np.zeros((len(raw), 0), np.float32), config.lookback, horizon, 0)
    # The context rows' timestamps, for models that take calendar features: window i starts at row i.
    stamps = np.lib.stride_tricks.sliding_window_view(prepared.table.timestamps[slice(*rows)], config.lookback)
    preds, trues = [], []
    for start in tqdm(range(0, len(windows), batch_size), desc=f"evaluate {artifact.name}", disable=not progress):
        index = np.arange(start, min(start + batch_size, len(windows)))
        batch = windows.batch(index)
        preds.append(model.forecast(batch["x"].numpy(), horizon, stamps[index] if model.calendar else None))
        trues.append(batch["y"].numpy())
    if manifest.normalization is None:
        raise ValueError(f"{path}: the manifest records no training scaler")
    norm = manifest.normalization
    scaler = StandardScaler.from_dict({"mean": list(norm.mean), "std": list(norm.std)})
    return ServedForecasts(
        artifact,
        config,
        prepared,
        scaler.transform(np.concatenate(preds)),
        scaler.transform(np.concatenate(trues)),
        scaler,
    )


def evaluate_artifact(
    path: Path | str,
    horizon: int | None = None,
    split: str = "test",
    data_dir: str | None = None,
    dataset: str | None = None,
    batch_size: int = 512,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of the artifact at ``path`` on every window of ``split`` (published protocol: scaled)."""
    served = served_forecasts(path, horizon, split, data_dir, dataset, batch_size, progress)
    artifact, config, prepared = served.artifact, served.config, served.prepared
    return {
        "model": artifact.name,
        "version": artifact.version,
        "dataset": config.dataset,
        "split": split,
        "horizon": config.horizon,
        "windows": len(served.predictions),
        "split_summary": prepared.split_summary(),
        "data_matches_training": prepared.fingerprint == artifact.manifest.data.fingerprint,
        "metrics": forecast_metrics(served.predictions, served.actuals, served.scaler),
        "mse_by_step": error_by_horizon(served.predictions, served.actuals).tolist(),
    }
