"""Optuna tuning of the generator, through the project's one way of tuning (``arcast_core.tuning``).

The study is run exactly as the forecasting models' (TPE sampler, median pruner, any Optuna storage URL: SQLite in
the output folder by default, PostgreSQL to share one study between worker processes and machines, where running
the same command again adds trials). Trials retrain only the generator: stage 1 and the semantic IDs come from an
existing run, so every trial sees the same codes. The objective is minimised, as the study's direction is fixed,
and is ``-NDCG@10`` on the run's fixed sample of validation users; pruning looks at it after every epoch.

The best trial's settings go to ``best_params.json`` in the forecasting format (``settings`` holds what
``python -m recsys train --params`` applies).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from arcast_core.tuning import Heartbeat, default_storage, optimize, report_or_prune, write_best_params
from recsys.prorec_training import (
    SELECTION_METRIC,
    GeneratorShape,
    GeneratorTrainConfig,
    PipelineConfig,
    distillation_targets,
    load_run,
    load_sequences,
    train_generator,
)
from recsys.split import leave_one_out

SPACES = ("size", "small")


def search_space(trial: optuna.Trial, variant: str, space: str = "small") -> dict[str, dict[str, Any]]:
    """The generator's size and training settings; the distillation terms only for prorec.

    "small": d_model 64 or 128, 1-3 layers each side (the earlier studies). "size": the generator's size up to
    TIGER's depth (d_model 64-256 in heads of 32, 1-4 layers each side, MLP up to 1024, item- or token-level
    encoder) and the warm-up; every trial trains under the same budget (``--minutes``), so the study picks the
    size that does best within it.
    """
    if space == "size":
        return _size_space(trial, variant)
    if space != "small":
        raise ValueError(f"unknown search space {space!r}; expected one of {SPACES}")
    d_model = trial.suggest_categorical("d_model", [64, 128])
    generator = {
        "d_model": d_model,
        "heads": 4,
        "encoder_layers": trial.suggest_int("encoder_layers", 1, 3),
        "decoder_layers": trial.suggest_int("decoder_layers", 1, 3),
        "d_ff": trial.suggest_categorical("d_ff_factor", [2, 4]) * d_model,
        "dropout": trial.suggest_float("dropout", 0.0, 0.3),
    }
    train: dict[str, Any] = {
        "lr": trial.suggest_float("lr", 3e-4, 5e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [128, 256]),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.1, log=True),
    }
    if variant == "prorec":
        train["distill_weight"] = trial.suggest_float("distill_weight", 0.01, 1.0, log=True)
        train["distill_temperature"] = trial.suggest_float("distill_temperature", 0.05, 0.5, log=True)
    return {"generator": generator, "train": train}


def _size_space(trial: optuna.Trial, variant: str) -> dict[str, dict[str, Any]]:
    d_model = trial.suggest_categorical("d_model", [64, 128, 192, 256])
    generator = {
        "d_model": d_model,
        "heads": d_model // 32,
        "encoder_layers": trial.suggest_int("encoder_layers", 1, 4),
        "decoder_layers": trial.suggest_int("decoder_layers", 1, 4),
        "d_ff": min(1024, trial.suggest_categorical("d_ff_factor", [2, 4, 8]) * d_model),
        "dropout": trial.suggest_float("dropout", 0.0, 0.3),
        "encoder_unit": trial.suggest_categorical("encoder_unit", ["item", "token"]),
    }
    train: dict[str, Any] = {
        "lr": trial.suggest_float("lr", 3e-4, 3e-3, log=True),
        "warmup_steps": trial.suggest_categorical("warmup_steps", [0, 500, 2000]),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.1, log=True),
    }
    if variant == "prorec":
        train["distill_weight"] = trial.suggest_float("distill_weight", 0.01, 1.0, log=True)
        train["distill_temperature"] = trial.suggest_float("distill_temperature", 0.05, 0.5, log=True)
    return {"generator": generator, "train": train}


def apply_settings(config: PipelineConfig, settings: dict[str, dict[str, Any]]) -> PipelineConfig:
    """``config`` with a ``best_params.json``'s (or a trial's) generator and training settings."""
    generator = replace(config.generator, **settings.get("generator", {}))
    train = replace(config.train, **settings.get("train", {}))
    return replace(config, generator=generator, train=train)


@dataclass(frozen=True)
class GeneratorObjective:
    """The objective factory a tuning worker calls once: it loads the run and its data (picklable paths only)."""

    run_dir: str
    base: PipelineConfig
    data_dir: str | None = None
    space: str = "small"

    def __call__(self) -> Callable[[optuna.Trial], float]:
        run = load_run(self.run_dir)
        spec = run.info.get("data", {"dataset": run.info["dataset"], "slice": None})
        split = leave_one_out(load_sequences(spec, self.data_dir), max_history=self.base.max_history)

        def objective(trial: optuna.Trial) -> float:
            config = apply_settings(self.base, search_space(trial, run.variant, self.space))
            train = replace(config.train, progress=False)
            distill = distillation_targets(run.variant, run.embeddings, train.distill_temperature)

            def report(epoch: int, validation: dict[str, float]) -> None:
                report_or_prune(trial, epoch, -validation[SELECTION_METRIC])

            fit = train_generator(split, run.ids, config.generator, train, distill, on_epoch=report)
            trial.set_user_attr("settings", {"generator": asdict(config.generator), "train": asdict(train)})
            trial.set_user_attr("validation", fit.best_validation)
            return -fit.best_validation[SELECTION_METRIC]

        return objective


def tune_generator(
    run_dir: Path | str,
    base: PipelineConfig,
    n_trials: int,
    out_dir: Path | str,
    data_dir: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    seed: int = 0,
    workers: int = 1,
    heartbeat: Heartbeat | None = None,
    space: str = "small",
) -> dict[str, Any]:
    """Add ``n_trials`` finished trials to the study of the run in ``run_dir`` (``workers`` processes share them);
    write ``best_params.json`` to ``out_dir`` and return its content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out_dir)
    run = load_run(run_dir)
    study_name = study_name or f"prorec-{run.info['dataset']}-{run.variant}"
    objective = GeneratorObjective(str(run_dir), base, data_dir, space)
    study = optimize(objective, n_trials, storage, study_name, timeout, seed, workers, heartbeat, warmup_steps=1)
    return write_best_params(
        study,
        storage,
        out_dir,
        model="prorec",
        variant=run.variant,
        objective=f"-{SELECTION_METRIC} on the validation sample",
        workers=workers,
        validation=study.best_trial.user_attrs.get("validation"),
    )


def settings_from_file(path: Path | str) -> dict[str, dict[str, Any]]:
    """The ``settings`` of a ``best_params.json``, checked to be the generator's (not a forecasting study's)."""
    payload = json.loads(Path(path).read_text())
    settings = payload.get("settings", {})
    if payload.get("model") != "prorec" or not {"generator", "train"} <= set(settings):
        raise ValueError(f"{path} is not a best_params.json of `python -m recsys tune`")
    unknown = set(settings["generator"]) - set(asdict(GeneratorShape())) | (
        set(settings["train"]) - set(asdict(GeneratorTrainConfig()))
    )
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
    return settings
