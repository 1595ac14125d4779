"""Optuna tuning for every forecasting model through one entry point (``arcast_core.tuning`` runs the study).

Each trial samples the model's search space (data, model and training settings), trains from the same seed and
reports the validation loss after every epoch to the median pruner; the best trial's settings are what
``python -m forecasting train --params`` applies.

Rolling-origin backtesting (``folds`` > 1): a trial trains and validates once per fold of
``data.fold_windows`` (the last fold is the published split) and its objective is the mean of the folds' best
validation MSE, so the chosen settings must do well over K periods rather than fit one validation period. Then
the pruner sees the running mean after each fold but the last (step k = fold k), not the epochs: epochs of
different folds are not comparable, and a report after the last fold could prune a finished trial.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from arcast_core.training import TrainConfig
from arcast_core.tuning import DIVERGED_ATTR, Heartbeat, default_storage, optimize, report_or_prune, write_best_params
from forecasting.data import DataConfig, Fold, PreparedData, fold_windows, prepare_data
from forecasting.models import model_spec
from forecasting.runs import train_run


class PinnedTrial:
    """A trial whose search space holds the ``pins`` at their values (``tune --fix lookback=168``): not sampled."""

    def __init__(self, trial: optuna.Trial, pins: dict[str, Any]) -> None:
        self.trial, self.pins, self.asked = trial, pins, set[str]()

    def _pinned(self, name: str) -> bool:
        self.asked.add(name)
        return name in self.pins

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.pins[name] if self._pinned(name) else self.trial.suggest_categorical(name, choices)

    def suggest_float(self, name: str, low: float, high: float, **kwargs: Any) -> float:
        return self.pins[name] if self._pinned(name) else self.trial.suggest_float(name, low, high, **kwargs)

    def suggest_int(self, name: str, low: int, high: int, **kwargs: Any) -> int:
        return self.pins[name] if self._pinned(name) else self.trial.suggest_int(name, low, high, **kwargs)

    def check(self, kind: str) -> None:
        """A pin the search space never asked for is a typo, not a setting to ignore silently."""
        unknown = set(self.pins) - self.asked
        if unknown:
            raise ValueError(f"--fix {sorted(unknown)}: not in {kind}'s search space (it has {sorted(self.asked)})")


def trial_settings(
    kind: str, trial: optuna.Trial, base_data: DataConfig, base_train: TrainConfig, pins: dict[str, Any] | None = None
) -> tuple[DataConfig, dict[str, Any], TrainConfig]:
    if pins:
        pinned = PinnedTrial(trial, pins)
        space = model_spec(kind).search_space(pinned)
        pinned.check(kind)
    else:
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
    folds: int = 1  # rolling-origin folds; 1 is the published validation split alone
    pins: dict[str, Any] | None = None  # search-space parameters held at a value

    def __call__(self) -> Callable[[optuna.Trial], float]:
        # Trials that share data settings share the prepared data and its folds' windows.
        cache: dict[str, tuple[PreparedData, list[Fold]]] = {}

        def objective(trial: optuna.Trial) -> float:
            data, params, train = trial_settings(self.kind, trial, self.base_data, self.base_train, self.pins)
            train = replace(train, progress=False, seed=self.seed)
            trial.set_user_attr("settings", {"data": data.as_dict(), "model": params, "train": asdict(train)})
            key = json.dumps(data.as_dict(), sort_keys=True)
            if key not in cache:
                prepared = prepare_data(data)
                cache[key] = prepared, fold_windows(prepared, self.folds)
            prepared, folds = cache[key]
            trial.set_user_attr("folds", [fold.borders.as_dict() for fold in folds])
            if self.folds == 1:
                run = train_run(
                    self.kind,
                    data,
                    params,
                    train,
                    prepared=prepared,
                    on_epoch=lambda epoch, val_loss: report_or_prune(trial, epoch, val_loss),
                    evaluate_test=False,
                )
                return float(run.fit["best_val_loss"])
            return _backtest(trial, self.kind, data, params, train, prepared, folds)

        return objective


def _backtest(
    trial: optuna.Trial,
    kind: str,
    data: DataConfig,
    params: dict[str, Any],
    train: TrainConfig,
    prepared: PreparedData,
    folds: list[Fold],
) -> float:
    """Mean over the folds of the best validation MSE, each fold trained afresh from the same seed."""
    losses: list[float] = []
    for k, fold in enumerate(folds):
        fold_data = replace(prepared, train=fold.train, val=fold.val)
        run = train_run(kind, data, params, train, prepared=fold_data, evaluate_test=False)
        losses.append(float(run.fit["best_val_loss"]))
        trial.set_user_attr("fold_val_loss", losses)
        if k < len(folds) - 1:
            report_or_prune(trial, k, sum(losses) / len(losses))
    return sum(losses) / len(losses)


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
    folds: int = 1,
    pins: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add ``n_trials`` finished trials to the study (``workers`` processes share them); write and return the best.

    ``folds`` > 1 selects by rolling-origin backtesting (module docstring); ``pins`` hold search-space parameters
    at a value. The default study name carries the folds, so studies with different objectives never mix.
    """
    if folds < 1:
        raise ValueError(f"--folds must be at least 1, got {folds}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out_dir)
    study_name = study_name or f"{kind}-{base_data.dataset}-{base_data.features}-h{base_data.horizon}" + (
        f"-folds{folds}" if folds > 1 else ""
    )
    objective = ForecastObjective(kind, base_data, base_train, seed, folds, pins or None)
    # Per epoch, pruning waits two epochs; per fold, it may stop a trial after its first fold.
    warmup_steps = 2 if folds == 1 else 0
    study = optimize(objective, n_trials, storage, study_name, timeout, seed, workers, heartbeat, warmup_steps)
    facts = {"model": kind, "workers": workers, "folds": folds, "pins": pins or {}}
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        diverged = sum(DIVERGED_ATTR in t.user_attrs for t in study.trials)
        raise RuntimeError(
            f"no trial of study {study_name!r} finished: {diverged} stopped as diverged (lower the rate), "
            f"{len(study.trials) - diverged} pruned or failed"
        )
    return write_best_params(study, storage, out_dir, **facts, fold_borders=study.best_trial.user_attrs.get("folds"))
