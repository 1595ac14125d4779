"""Optuna tuning for every forecasting model through one entry point.

TPE sampling, median pruning on the per-epoch validation loss, and a study in any storage Optuna supports:
a SQLite file by default, or an RDB URL (PostgreSQL) that many workers share. Running it again with the same
storage and study name resumes the study; the best trial's parameters are written beside the results.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import optuna

from forecasting.data import DataConfig, PreparedData, prepare_data
from forecasting.models import model_spec
from forecasting.runs import train_run
from forecasting.training import TrainConfig
from serving.artifact import atomic_write_text

log = logging.getLogger(__name__)
BEST_PARAMS_FILE = "best_params.json"


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'optuna.db').resolve()}"


def create_study(study_name: str, storage: str, seed: int = 0, warmup_epochs: int = 2) -> optuna.Study:
    # Heartbeats let a study notice a worker that died mid-trial and mark its trial failed (RDB storage only).
    rdb = (
        optuna.storages.RDBStorage(
            storage,
            heartbeat_interval=30,
            grace_period=120,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
        )
        if not storage.startswith("sqlite")
        else storage
    )
    return optuna.create_study(
        study_name=study_name,
        storage=rdb,
        direction="minimize",
        # TPE's default of 10 random start-up trials would make a short study a pure random search.
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs),
        load_if_exists=True,
    )


def trial_settings(
    kind: str, trial: optuna.Trial, base_data: DataConfig, base_train: TrainConfig
) -> tuple[DataConfig, dict[str, Any], TrainConfig]:
    space = model_spec(kind).search_space(trial)
    return (
        replace(base_data, **space.get("data", {})),
        space.get("model", {}),
        replace(base_train, **space.get("train", {})),
    )


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
) -> dict[str, Any]:
    """Run (or resume) ``n_trials`` more trials; write and return the best trial's settings."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out_dir)
    study_name = study_name or f"{kind}-{base_data.dataset}-{base_data.features}-h{base_data.horizon}"
    study = create_study(study_name, storage, seed=seed)
    prepared_cache: dict[str, PreparedData] = {}  # trials that share data settings share the prepared windows

    def objective(trial: optuna.Trial) -> float:
        data, params, train = trial_settings(kind, trial, base_data, base_train)
        train = replace(train, progress=False, seed=seed)
        key = json.dumps(data.as_dict(), sort_keys=True)
        if key not in prepared_cache:
            prepared_cache[key] = prepare_data(data)

        def report(epoch: int, val_loss: float) -> None:
            trial.report(val_loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        run = train_run(kind, data, params, train, prepared=prepared_cache[key], on_epoch=report, evaluate_test=False)
        trial.set_user_attr("settings", {"data": data.as_dict(), "model": params, "train": asdict(train)})
        return float(run.fit["best_val_loss"])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n_trials, timeout=timeout, show_progress_bar=True, gc_after_trial=True)
    best = study.best_trial
    result = {
        "study": study_name,
        "storage": storage,
        "model": kind,
        "best_value": best.value,
        "best_trial": best.number,
        "n_trials": len(study.trials),
        "params": best.params,
        "settings": best.user_attrs["settings"],
    }
    atomic_write_text(out_dir / BEST_PARAMS_FILE, json.dumps(result, indent=2, default=list))
    return result
