"""Optuna tuning through the shared entry point: trials run, the study resumes, best settings retrain."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from arcast_core.training import TrainConfig
from arcast_core.tuning import BEST_PARAMS_FILE
from forecasting.data import DataConfig
from forecasting.tuning import tune


def test_tune_resumes_and_writes_best_params(etth1_slice: Path, tmp_path: Path) -> None:
    data = DataConfig(dataset=str(etth1_slice), lookback=48, horizon=12)
    train = TrainConfig(epochs=3, progress=False)
    first = tune("arnet", data, train, n_trials=3, out_dir=tmp_path, study_name="s")
    second = tune("arnet", data, train, n_trials=2, out_dir=tmp_path, study_name="s")
    assert first["n_trials"] == 3 and second["n_trials"] == 5  # the same SQLite study, resumed
    study = optuna.load_study(study_name="s", storage=second["storage"])
    finished = [
        t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == 5
    # The resumed run samples anew: with the first run's sampler seed it would redraw its random start-up trials.
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 5
    assert second["best_value"] == min(t.value for t in study.trials if t.value is not None)
    best = json.loads((tmp_path / BEST_PARAMS_FILE).read_text())
    assert best["settings"]["data"]["lookback"] == best["params"]["lookback"]
    assert best["settings"]["train"]["lr"] == best["params"]["lr"]


def test_train_from_best_params(etth1_slice: Path, tmp_path: Path) -> None:
    from forecasting.cli import main

    tune(
        "arnet",
        DataConfig(dataset=str(etth1_slice), lookback=48, horizon=12),
        TrainConfig(epochs=2, progress=False),
        n_trials=2,
        out_dir=tmp_path / "tune",
    )
    assert (
        main(
            [
                "train",
                "--params",
                str(tmp_path / "tune" / BEST_PARAMS_FILE),
                "--epochs",
                "2",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    best = json.loads((tmp_path / "tune" / BEST_PARAMS_FILE).read_text())
    assert info["data"]["lookback"] == best["params"]["lookback"]
    assert info["train"]["lr"] == best["params"]["lr"]


def test_tune_with_folds_backtests_every_trial(etth1_slice: Path, tmp_path: Path) -> None:
    data = DataConfig(dataset=str(etth1_slice), lookback=48, horizon=12)
    result = tune("arnet", data, TrainConfig(epochs=2, progress=False), n_trials=2, out_dir=tmp_path, folds=2)
    assert result["n_trials"] == 2 and result["folds"] == 2 and result["study"].endswith("-folds2")
    best = json.loads((tmp_path / BEST_PARAMS_FILE).read_text())
    lookback = best["settings"]["data"]["lookback"]
    last, first = best["fold_borders"][-1], best["fold_borders"][0]
    assert last == {"train": [0, 1400], "val": [1400 - lookback, 1600]}  # the published 70/10/20 split
    assert first["val"][1] == 1400 and first["train"][1] == 1200  # a validation-length block just before it
    study = optuna.load_study(study_name=result["study"], storage=result["storage"])
    for trial in study.trials:
        losses = trial.user_attrs["fold_val_loss"]
        assert len(losses) == 2 and len(trial.user_attrs["folds"]) == 2
        assert trial.value is not None and abs(trial.value - sum(losses) / 2) < 1e-12


def test_tune_holds_fixed_parameters(etth1_slice: Path, tmp_path: Path) -> None:
    data = DataConfig(dataset=str(etth1_slice), lookback=48, horizon=12)
    pins = {"lookback": 24, "norm": "last"}
    result = tune("arnet", data, TrainConfig(epochs=1, progress=False), n_trials=2, out_dir=tmp_path, pins=pins)
    assert result["pins"] == pins and "lookback" not in result["params"]
    assert result["settings"]["data"]["lookback"] == 24 and result["settings"]["model"]["norm"] == "last"
    with pytest.raises(ValueError, match="not in arnet's search space"):
        tune("arnet", data, TrainConfig(epochs=1, progress=False), n_trials=1, out_dir=tmp_path, pins={"lookbak": 24})


def test_a_diverging_trial_is_pruned_not_a_crash(etth1_slice: Path, tmp_path: Path) -> None:
    from arcast_core.tuning import DIVERGED_ATTR

    data = DataConfig(dataset=str(etth1_slice), lookback=48, horizon=12)
    pins = {"lr": 1e30, "hidden": 32, "loss": "mse"}  # a rate no network survives
    with pytest.raises(RuntimeError, match=r"no trial of .* finished: 2 stopped as diverged"):
        tune("arnet", data, TrainConfig(epochs=3, progress=False), n_trials=2, out_dir=tmp_path, pins=pins)
    (storage,) = tmp_path.glob("*.db")
    (name,) = optuna.get_all_study_names(f"sqlite:///{storage}")
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{storage}").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all("training loss became" in t.user_attrs[DIVERGED_ATTR] for t in trials)
