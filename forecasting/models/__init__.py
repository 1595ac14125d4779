"""The forecasting models, by kind, with how each binds to the data and what Optuna may tune."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from forecasting.data import DataConfig
from forecasting.models.arnet import ARNet, ARNetConfig
from forecasting.models.base import ForecastModel


@dataclass(frozen=True)
class ModelSpec:
    """A model kind: its class, its config dataclass, and the two functions the shared code needs.

    bind(params, data) builds the config from user/tuned parameters and the data's lookback/horizon/channels.
    search_space(trial) returns {"model": ..., "data": ..., "train": ...} parameter overrides for a trial.
    """

    kind: str
    model_cls: type[ForecastModel]
    config_cls: type
    bind: Callable[[dict[str, Any], DataConfig, int], Any]
    search_space: Callable[[Any], dict[str, dict[str, Any]]]


def _arnet_bind(params: dict[str, Any], data: DataConfig, n_channels: int) -> ARNetConfig:
    return ARNetConfig(**{**params, "n_lags": data.lookback, "n_forecasts": data.horizon})


def _arnet_space(trial: Any) -> dict[str, dict[str, Any]]:
    hidden = trial.suggest_categorical("hidden", [0, 32, 128])
    return {
        "data": {"lookback": trial.suggest_categorical("lookback", [24, 48, 96, 168, 336])},
        "model": {
            "hidden_sizes": (hidden,) if hidden else (),
            "loss": trial.suggest_categorical("loss", ["huber", "mse"]),
        },
        "train": {
            "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        },
    }


MODELS: dict[str, ModelSpec] = {
    "arnet": ModelSpec("arnet", ARNet, ARNetConfig, _arnet_bind, _arnet_space),
}


def model_spec(kind: str) -> ModelSpec:
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r} (known: {', '.join(MODELS)})")
    return MODELS[kind]


def build_model(kind: str, params: dict[str, Any], data: DataConfig, n_channels: int) -> ForecastModel:
    spec = model_spec(kind)
    known = {f.name for f in fields(spec.config_cls)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unknown {kind} parameters {sorted(unknown)} (known: {sorted(known)})")
    return spec.model_cls(spec.bind(params, data, n_channels))
