"""The forecasting models, by kind, with how each binds to the data and what Optuna may tune."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from forecasting.data import DataConfig
from forecasting.models.arnet import ARNet, ARNetConfig
from forecasting.models.autotimes import AutoTimes, AutoTimesConfig
from forecasting.models.base import ForecastModel
from forecasting.models.informer import Informer, InformerConfig


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


def _data_freq(data: DataConfig) -> str:
    """The data's frequency as prepare_data resolves it: given, the known dataset's, or read off the timestamps."""
    from forecasting.data import _FREQ_ALIASES
    from forecasting.datasets import KNOWN_DATASETS, resolve_dataset
    from forecasting.loading import read_table
    from forecasting.time_features import infer_freq

    if data.freq:
        freq = data.freq
    elif data.dataset in KNOWN_DATASETS:
        freq = KNOWN_DATASETS[data.dataset].freq
    else:
        try:
            path, _ = resolve_dataset(data.dataset, data.data_dir, download=False)
        except FileNotFoundError as err:
            raise ValueError(f"cannot tell the frequency of {data.dataset!r} ({err}): set the data's freq") from err
        columns = [data.target] if data.features == "S" else None
        freq = infer_freq(read_table(path, data.date_column, data.missing, columns).timestamps)
    return _FREQ_ALIASES.get(freq, freq)


def _informer_bind(params: dict[str, Any], data: DataConfig, n_channels: int) -> InformerConfig:
    lengths = {"seq_len": data.lookback, "label_len": data.label_len, "pred_len": data.horizon}
    channels = {"enc_in": n_channels, "dec_in": n_channels, "c_out": n_channels}
    freq = params.get("freq") or _data_freq(data)
    return InformerConfig(**{**params, **lengths, **channels, "freq": freq})


def _informer_space(trial: Any) -> dict[str, dict[str, Any]]:
    lookback = trial.suggest_categorical("lookback", [48, 96, 168, 336])
    label_share = trial.suggest_categorical("label_share", [0.25, 0.5, 1.0])  # label_len = share * lookback
    d_model = trial.suggest_categorical("d_model", [128, 256, 512])
    return {
        "data": {"lookback": lookback, "label_len": int(lookback * label_share)},
        "model": {
            "d_model": d_model,
            "d_ff": 4 * d_model,
            "e_layers": trial.suggest_int("e_layers", 1, 3),
            "d_layers": trial.suggest_int("d_layers", 1, 2),
            "factor": trial.suggest_categorical("factor", [3, 5, 8]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3),
        },
        "train": {"lr": trial.suggest_float("lr", 1e-5, 1e-3, log=True)},
    }


def _data_timeline(data: DataConfig, freq: str) -> tuple[str, int]:
    """(first timestamp, rows) of the data's timeline, checked to be a regular grid at ``freq``."""
    from forecasting.datasets import resolve_dataset
    from forecasting.loading import read_table
    from forecasting.models.autotimes import regular_timeline

    path, _ = resolve_dataset(data.dataset, data.data_dir, download=False)
    columns = [data.target] if data.features == "S" else None
    return regular_timeline(read_table(path, data.date_column, data.missing, columns).timestamps, freq)


def _autotimes_bind(params: dict[str, Any], data: DataConfig, n_channels: int) -> AutoTimesConfig:
    """Lookback -> context_length, horizon -> segment (one token per training target), plus the data's timeline."""
    freq = params.get("freq") or _data_freq(data)
    bound: dict[str, Any] = {**params, "context_length": data.lookback, "segment": data.horizon, "freq": freq}
    if bound.get("timestamps", True) and not bound.get("time_start"):
        bound["time_start"], bound["time_rows"] = _data_timeline(data, freq)
    return AutoTimesConfig(**bound)


def _autotimes_space(trial: Any) -> dict[str, dict[str, Any]]:
    """The protocol fixes lookback 672 and segment 96 (one-for-all); tune the maps, timestamps and the rate."""
    layers = trial.suggest_categorical("mlp_hidden_layers", [0, 1, 2])
    model: dict[str, Any] = {
        "mlp_hidden_layers": layers,
        "timestamps": trial.suggest_categorical("timestamps", [True, False]),
    }
    if layers:
        model["mlp_hidden_dim"] = trial.suggest_categorical("mlp_hidden_dim", [128, 256, 512])
        model["dropout"] = trial.suggest_float("dropout", 0.0, 0.3)
    return {"model": model, "train": {"lr": trial.suggest_float("lr", 1e-4, 5e-3, log=True)}}


MODELS: dict[str, ModelSpec] = {
    "arnet": ModelSpec("arnet", ARNet, ARNetConfig, _arnet_bind, _arnet_space),
    "informer": ModelSpec("informer", Informer, InformerConfig, _informer_bind, _informer_space),
    "autotimes": ModelSpec("autotimes", AutoTimes, AutoTimesConfig, _autotimes_bind, _autotimes_space),
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
