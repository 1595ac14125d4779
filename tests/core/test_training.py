"""The shared loop's switches that no model test exercises: warm-up, the time budget, training without validation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn

from arcast_core.checkpoint import selected_weights
from arcast_core.training import Replica, Selection, StepLoss, TrainConfig, fit, make_scheduler, shuffled_index_batches


@dataclass
class LineTask:
    """Least squares on y = 2x: a model the loop can train in milliseconds."""

    model: nn.Module
    validate_every_epoch: bool = True

    def __post_init__(self) -> None:
        self.x = torch.linspace(-1, 1, 64).unsqueeze(1)
        self.y = 2 * self.x
        self.size = len(self.x)
        self.generator = torch.Generator().manual_seed(0)
        self.ended: list[int] = []

    def batches(self, batch_size: int, shard: tuple[int, int]) -> Iterator[torch.Tensor]:
        return shuffled_index_batches(self.size, batch_size, self.generator, shard)

    def loss(self, idx: torch.Tensor, progress: float) -> StepLoss:
        return StepLoss(nn.functional.mse_loss(self.model(self.x[idx]), self.y[idx]), len(idx), {})

    def end_epoch(self, epoch: int, train_loss: float) -> None:
        self.ended.append(epoch)

    def validate(self, replica: Replica) -> dict[str, float] | None:
        if not self.validate_every_epoch:
            return None
        with torch.no_grad():
            return {"mse": float(nn.functional.mse_loss(self.model(self.x), self.y))}


def test_warmup_rises_linearly_then_decays() -> None:
    model = nn.Linear(1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = make_scheduler(optimizer, TrainConfig(epochs=2, lr=1.0, lr_schedule="cosine", warmup_steps=4), 5)
    assert scheduler is not None
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0])  # from lr / warmup_steps to lr
    assert rates[4] == pytest.approx(1.0) and rates[4:] == sorted(rates[4:], reverse=True)
    with pytest.raises(ValueError, match="onecycle"):
        TrainConfig(lr_schedule="onecycle", warmup_steps=2)


def test_inverse_square_root_decay_after_the_warmup() -> None:
    optimizer = torch.optim.AdamW(nn.Linear(1, 1).parameters(), lr=1.0)
    config = TrainConfig(epochs=1, lr=1.0, lr_schedule="inverse_sqrt", warmup_steps=4)
    scheduler = make_scheduler(optimizer, config, 100)
    assert scheduler is not None
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0])
    # T5/TIGER: lr * sqrt(warmup / step), continuing from lr at the end of the warm-up, with no planned end.
    assert rates[4 + 12] == pytest.approx((4 / 16) ** 0.5)
    assert rates[4:] == sorted(rates[4:], reverse=True)


def test_time_budget_stops_after_a_validated_epoch() -> None:
    cfg = TrainConfig(epochs=50, batch_size=8, lr=0.05, max_seconds=0.0, progress=False, device="cpu")
    _, report = fit(lambda device: LineTask(nn.Linear(1, 1)), cfg, Selection("mse"))
    assert report.stopped_by == "time_budget" and report.epochs_run == 1
    assert report.history[0].validation is not None and report.best_epoch == 0


def test_a_cpu_budget_counts_this_process_cpu_time(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(0, 1000, 10))  # every reading of the CPU clock 10 s later: two epochs reach 15 s
    monkeypatch.setattr("arcast_core.training.time.process_time", lambda: next(ticks))
    cfg = TrainConfig(epochs=50, batch_size=8, max_seconds=15.0, budget_clock="cpu", progress=False, device="cpu")
    _, report = fit(lambda device: LineTask(nn.Linear(1, 1)), cfg, Selection("mse"))
    assert report.stopped_by == "time_budget" and report.epochs_run == 2


def test_a_run_its_budget_stopped_goes_on_with_a_larger_budget(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restarted with the budget that stopped it, a run only returns its result; with a larger one it trains on from
    its next epoch, the budget counting the CPU time spent before."""
    clock = {"now": 0}

    def tick() -> int:  # every reading of the CPU clock 10 s later
        clock["now"] += 10
        return clock["now"]

    monkeypatch.setattr("arcast_core.training.time.process_time", tick)
    path = str(tmp_path / "run.pt")

    def run(budget: float):
        cfg = TrainConfig(
            epochs=50,
            batch_size=8,
            lr=0.05,
            max_seconds=budget,
            budget_clock="cpu",
            checkpoint=path,
            progress=False,
            device="cpu",
        )
        return fit(lambda device: LineTask(nn.Linear(1, 1)), cfg, Selection("mse"))

    task, first = run(15.0)
    assert first.stopped_by == "time_budget" and task.ended == [0, 1]
    task, same = run(15.0)
    assert task.ended == [] and same.epochs_run == 2
    task, longer = run(60.0)
    assert longer.stopped_by == "time_budget" and task.ended == [2, 3]
    assert [r.epoch for r in longer.history] == [0, 1, 2, 3]
    assert [r.train_loss for r in longer.history[:2]] == [r.train_loss for r in first.history]


def test_without_validation_the_final_weights_are_kept() -> None:
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, lr_schedule="constant", progress=False, device="cpu")
    task, report = fit(lambda device: LineTask(nn.Linear(1, 1), validate_every_epoch=False), cfg)
    assert report.epochs_run == 3 and report.best_validation == {} and task.ended == [0, 1, 2]
    assert report.history[-1].train_loss < report.history[0].train_loss


def test_patience_counts_validations_and_the_best_weights_come_back() -> None:
    cfg = TrainConfig(epochs=40, batch_size=8, lr=3.0, lr_schedule="constant", patience=2, progress=False)
    task, report = fit(lambda device: LineTask(nn.Linear(1, 1)), cfg, Selection("mse"))
    best = min(r.validation["mse"] for r in report.history if r.validation)
    assert report.best_validation["mse"] == best
    with torch.no_grad():
        assert float(nn.functional.mse_loss(task.model(task.x), task.y)) == pytest.approx(best)


def test_a_checkpointed_run_resumes_where_it_stopped(tmp_path) -> None:
    """Killed after 2 of 5 epochs and started again: the same weights, history and stop as one straight run."""
    cfg = TrainConfig(epochs=5, batch_size=8, lr=0.01, patience=5, progress=False, device="cpu")
    task, straight = fit(lambda device: LineTask(nn.Linear(1, 1)), cfg, Selection("mse"))
    straight_weights = [p.detach().clone() for p in task.model.parameters()]

    path = tmp_path / "run.pt"
    resumable = TrainConfig(**{**cfg.__dict__, "checkpoint": str(path)})

    def killed_at_epoch_2(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        fit(lambda device: LineTask(nn.Linear(1, 1)), resumable, Selection("mse"), killed_at_epoch_2)
    torch.manual_seed(99)  # a restart starts from other random states: the checkpoint brings back the saved ones
    task, resumed = fit(lambda device: LineTask(nn.Linear(1, 1)), resumable, Selection("mse"))
    assert [r.epoch for r in resumed.history] == [0, 1, 2, 3, 4] and task.ended == [2, 3, 4]
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in straight.history]
    for a, b in zip(task.model.parameters(), straight_weights, strict=True):
        torch.testing.assert_close(a.detach(), b, atol=0, rtol=0)
    assert resumed.best_epoch == straight.best_epoch and resumed.epochs_run == 5

    # a finished run restarted returns its result without training; other settings are refused by name
    task, again = fit(lambda device: LineTask(nn.Linear(1, 1)), resumable, Selection("mse"))
    assert task.ended == [] and again.best_epoch == straight.best_epoch
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.01 then, 0.02 now\)"):
        fit(lambda device: LineTask(nn.Linear(1, 1)), TrainConfig(**{**resumable.__dict__, "lr": 0.02}))


def test_a_checkpoints_selected_weights_are_its_best_epochs_not_its_last(tmp_path) -> None:
    """What a warm start reads from a finished run: the weights validation kept, though the file also holds the
    last epoch's (a rate of 6 makes the line fit oscillate, so the last epoch is not the best)."""
    path = tmp_path / "run.pt"
    cfg = TrainConfig(epochs=6, batch_size=8, lr=6.0, lr_schedule="constant", progress=False, checkpoint=str(path))
    torch.manual_seed(0)
    _, report = fit(lambda device: LineTask(nn.Linear(1, 1)), cfg, Selection("mse"))
    last = torch.load(path, weights_only=False)["model"]
    assert report.best_epoch != report.epochs_run - 1
    started = LineTask(nn.Linear(1, 1))
    started.model.load_state_dict(selected_weights(path))
    with torch.no_grad():
        assert float(nn.functional.mse_loss(started.model(started.x), started.y)) == pytest.approx(
            report.best_validation["mse"]
        )
    assert not torch.equal(last["weight"], started.model.weight.detach())


def test_a_checkpoint_older_than_a_setting_resumes_at_that_settings_default(tmp_path) -> None:
    """A setting added after a checkpoint was written (``autocast`` came after runs were checkpointed) reads as
    its default: the finished run is returned as it was, and asking for another value is refused by name."""
    path = tmp_path / "run.pt"
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, patience=2, progress=False, device="cpu", checkpoint=str(path))
    _, done = fit(lambda device: LineTask(nn.Linear(1, 1)), cfg, Selection("mse"))
    payload = torch.load(path, weights_only=False)
    del payload["settings"]["autocast"]  # as written before the setting existed
    torch.save(payload, path)

    task, again = fit(lambda device: LineTask(nn.Linear(1, 1)), cfg, Selection("mse"))
    assert task.ended == [] and again.best_epoch == done.best_epoch
    with pytest.raises(ValueError, match=r"other settings \(autocast: 'none' then, 'bf16' now\)"):
        fit(lambda device: LineTask(nn.Linear(1, 1)), TrainConfig(**{**cfg.__dict__, "autocast": "bf16"}))


def test_bf16_autocast_covers_training_steps_not_validation() -> None:
    """autocast "bf16": the training forward's products in bfloat16, the weights and validation in float32."""
    seen: dict[str, set[torch.dtype]] = {"train": set(), "eval": set()}
    model = nn.Linear(1, 1)
    # training steps run with gradients, validation (LineTask.validate) without
    model.register_forward_hook(lambda m, _, out: seen["train" if torch.is_grad_enabled() else "eval"].add(out.dtype))
    cfg = TrainConfig(epochs=12, batch_size=16, lr=0.1, autocast="bf16", progress=False, device="cpu")
    before = LineTask(model).validate(Replica(None, torch.device("cpu")))
    _, report = fit(lambda device: LineTask(model), cfg, Selection("mse"))
    assert seen == {"train": {torch.bfloat16}, "eval": {torch.float32}}
    assert before is not None and model.weight.dtype == torch.float32
    assert report.best_validation["mse"] < before["mse"] / 10  # it still learns y = 2x
    seen["train"].clear()
    fit(lambda device: LineTask(model), replace(cfg, autocast="none"), Selection("mse"))
    assert seen["train"] == {torch.float32}
    with pytest.raises(ValueError, match="autocast must be 'none' or 'bf16'"):
        TrainConfig(autocast="fp16")  # type: ignore[arg-type]
