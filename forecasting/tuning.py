"""Optuna tuning for every forecasting model through one entry point (``arcast_core.tuning`` runs the study).

Each trial samples the model's search space (data, model and training settings), trains from the same seed and
reports the validation loss after every epoch to the median pruner; the best trial's settings are what
``python -m forecasting train --params`` applies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from arcast_core.training import TrainConfig
from arcast_core.tuning import Heartbeat, default_storage, optimize, report_or_prune, write_best_params
from forecasting.data import DataConfig, PreparedData, prepare_data
from forecasting.models import model_spec
from forecasting.runs import train_run


def trial_settings(
    kind: str, trial: optuna.Trial, base_data: DataConfig, base_train: TrainConfig
) -> tuple[DataConfig, dict[str, Any], TrainConfig]:
    space = model_spec(kind).search_space(trial)
    return (
        replace(base_data, **space.get("data", {})),
        space.get("model", {}),
        replace(base_train, **space.get("train", {})),
    )


@dataclass(frozen=True)
class ForecastObjective:
    """The objective factory a tuning worker calls once (picklable: spawned workers get it whole)."""

    kind: str
    base_data: DataConfig
    base_train: TrainConfig
    seed: int  # the training seed: every trial trains from the same seed

    def __call__(self) -> Callable[[optuna.Trial], float]:
        prepared_cache: dict[str, PreparedData] = {}  # trials that share data settings share the prepared windows

        def objective(trial: optuna.Trial) -> float:
            data, params, train = trial_settings(self.kind, trial, self.base_data, self.base_train)
            train = replace(train, progress=False, seed=self.seed)
            key = json.dumps(data.as_dict(), sort_keys=True)
            if key not in prepared_cache:
                prepared_cache[key] = prepare_data(data)
            run = train_run(
                self.kind,
                data,
                params,
                train,
                prepared=prepared_cache[key],
                on_epoch=lambda epoch, val_loss: report_or_prune(trial, epoch, val_loss),
                evaluate_test=False,
            )
            trial.set_user_attr("settings", {"data": data.as_dict(), "model": params, "train": asdict(train)})
            return float(run.fit["best_val_loss"])

        return objective


def tune(
    kind: str,
    base_data: DataConfig,
    base_train: TrainConfig,
    n_trials: int,
    out_dir: Path | str,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    seed: int = 0,
    workers: int = 1,
    heartbeat: Heartbeat | None = None,
) -> dict[str, Any]:
    """Add ``n_trials`` finished trials to the study (``workers`` processes share them); write and return the best."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out_dir)
    study_name = study_name or f"{kind}-{base_data.dataset}-{base_data.features}-h{base_data.horizon}"
    objective = ForecastObjective(kind, base_data, base_train, seed)
    study = optimize(objective, n_trials, storage, study_name, timeout, seed, workers, heartbeat)
    return write_best_params(study, storage, out_dir, model=kind, workers=workers)
