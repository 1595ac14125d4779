"""The shared training loop: reproducible by seed, best checkpoint restored, early stopping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, prepare_data
from forecasting.runs import train_run
from forecasting.training import validation_loss


def test_same_seed_same_model(etth1_slice: Path) -> None:
    data = DataConfig(dataset=str(etth1_slice), lookback=24, horizon=6)
    prepared = prepare_data(data)
    cfg = TrainConfig(epochs=2, progress=False, seed=3)
    a = train_run("arnet", data, {"hidden_sizes": [8]}, cfg, prepared=prepared)
    b = train_run("arnet", data, {"hidden_sizes": [8]}, cfg, prepared=prepared)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_best_checkpoint_is_restored_and_training_stops_early(etth1_slice: Path) -> None:
    data = DataConfig(dataset=str(etth1_slice), lookback=24, horizon=6)
    prepared = prepare_data(data)
    # A learning rate far too high makes validation loss worsen after the first epochs.
    run = train_run(
        "arnet",
        data,
        {},
        TrainConfig(epochs=30, lr=0.5, lr_schedule="constant", patience=2, progress=False),
        prepared=prepared,
    )
    history = run.fit["history"]
    assert run.fit["epochs_run"] < 30
    assert run.fit["best_val_loss"] == min(h["val_loss"] for h in history)
    assert abs(validation_loss(run.model, prepared.val) - run.fit["best_val_loss"]) < 1e-9


def test_halving_schedule_matches_informer(etth1_slice: Path) -> None:
    """The official Informer code trains two epochs at the full rate, then halves the rate every epoch."""
    data = DataConfig(dataset=str(etth1_slice), lookback=24, horizon=6)
    cfg = TrainConfig(epochs=4, lr=1e-3, lr_schedule="halving", patience=10, progress=False)
    run = train_run("arnet", data, {}, cfg)
    # history records the rate at the end of each epoch, i.e. the rate the next epoch starts with
    assert [h["lr"] for h in run.fit["history"]] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])


def test_a_killed_run_resumes_from_its_checkpoint(etth1_slice: Path, tmp_path: Path) -> None:
    """The windows' shuffling order (numpy) comes back too: resumed equals straight, weight for weight."""
    data = DataConfig(dataset=str(etth1_slice), features="S", lookback=48, horizon=12)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-3, progress=False)
    straight = train_run("arnet", data, {}, cfg, evaluate_test=False)
    resumable = TrainConfig(**{**cfg.__dict__, "checkpoint": str(tmp_path / "arnet.pt")})

    def killed(epoch: int, val_loss: float) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run("arnet", data, {}, resumable, evaluate_test=False, on_epoch=killed)
    resumed = train_run("arnet", data, {}, resumable, evaluate_test=False)
    assert [h["train_loss"] for h in resumed.fit["history"]] == [h["train_loss"] for h in straight.fit["history"]]
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
