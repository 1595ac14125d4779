"""A training run: train a model on prepared data, evaluate it, and save/load it as a run folder.

A run folder holds ``run.json`` (everything needed to rebuild the model and its data: configs, scaler,
channels, fit history, metrics) and ``model.pt`` (the weights). Export reads runs; nothing else does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arcast_core.files import atomic_write, atomic_write_text, sha256_file
from arcast_core.runtime import library_versions, seed_everything
from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, PreparedData, WindowDataset, data_facts, prepare_data
from forecasting.metrics import forecast_metrics
from forecasting.models import build_model
from forecasting.models.base import ForecastModel
from forecasting.splits import StandardScaler
from forecasting.training import EpochCallback, FitResult, fit, predict_dataset

RUN_FILE, WEIGHTS_FILE = "run.json", "model.pt"


@dataclass
class Run:
    """A trained model with the facts export and evaluation need."""

    model: ForecastModel
    model_params: dict[str, Any]
    data: DataConfig
    train: TrainConfig
    channels: tuple[str, ...]
    scaler: StandardScaler
    freq: str
    fingerprint: str
    fit: dict[str, Any]
    metrics: dict[str, Any]
    loading: dict[str, Any] = field(default_factory=dict)  # the loading policies, what they changed, the split

    def info(self) -> dict[str, Any]:
        return {
            "model_kind": self.model.kind,
            "model_params": self.model_params,
            "model_config": _jsonable(asdict(self.model.config)),
            "data": self.data.as_dict(),
            "train": asdict(self.train),
            "channels": list(self.channels),
            "scaler": self.scaler.as_dict(),
            "freq": self.freq,
            "fingerprint": self.fingerprint,
            "fit": self.fit,
            "metrics": self.metrics,
            "loading": self.loading,
            "versions": library_versions(),
        }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def evaluate_split(model: ForecastModel, split: WindowDataset, scaler: StandardScaler) -> dict[str, dict[str, float]]:
    pred = predict_dataset(model, split)
    true = np.ascontiguousarray(split.batch(np.arange(len(split)))["y"].numpy())
    return forecast_metrics(pred, true, scaler)


def train_run(
    kind: str,
    data_config: DataConfig,
    model_params: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    prepared: PreparedData | None = None,
    on_epoch: EpochCallback | None = None,
    evaluate_test: bool = True,
) -> Run:
    """Prepare the data (unless given), train, and measure validation and test metrics on every window."""
    params = dict(model_params or {})
    train_config = train_config or TrainConfig()
    prepared = prepared or prepare_data(data_config)
    seed_everything(train_config.seed)  # the initial weights are drawn here, so the seed must rule them too
    model = build_model(kind, params, prepared.facts())
    result: FitResult = fit(model, prepared.train, prepared.val, train_config, on_epoch=on_epoch)
    metrics = {"val": evaluate_split(model, prepared.val, prepared.scaler)}
    if evaluate_test:
        metrics["test"] = evaluate_split(model, prepared.test, prepared.scaler)
    return Run(
        model=model.cpu(),
        model_params=params,
        data=data_config,
        train=train_config,
        channels=prepared.channels,
        scaler=prepared.scaler,
        freq=prepared.freq,
        fingerprint=prepared.fingerprint,
        fit=result.as_dict(),
        metrics=metrics,
        loading=prepared.loading_report(),
    )


def save_run(run: Run, folder: Path | str) -> Path:
    """Write the weights, then ``run.json`` (with the weights' sha256) last: a run without it is incomplete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: torch.save(run.model.state_dict(), tmp))
    info = {**run.info(), "weights_sha256": sha256_file(folder / WEIGHTS_FILE)}
    atomic_write_text(folder / RUN_FILE, json.dumps(info, indent=2))
    return folder


def load_run(folder: Path | str) -> Run:
    folder = Path(folder)
    if not (folder / RUN_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} is not a training run (no {RUN_FILE}); train one with `python -m forecasting train`"
        )
    info = json.loads((folder / RUN_FILE).read_text())
    if sha256_file(folder / WEIGHTS_FILE) != info["weights_sha256"]:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not match the checksum in {RUN_FILE}")
    # The recorded frequency, so a model whose shape depends on it rebuilds without the data file at hand.
    data = DataConfig(**{**info["data"], "freq": info["data"].get("freq") or info["freq"]})
    model = build_model(info["model_kind"], info["model_params"], data_facts(data, len(info["channels"])))
    model.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    model.eval()
    return Run(
        model=model,
        model_params=info["model_params"],
        data=data,
        train=TrainConfig(**info["train"]),
        channels=tuple(info["channels"]),
        scaler=StandardScaler.from_dict(info["scaler"]),
        freq=info["freq"],
        fingerprint=info["fingerprint"],
        fit=info["fit"],
        metrics=info["metrics"],
        loading=info.get("loading", {}),
    )
