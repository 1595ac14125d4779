"""Forecasting models on the shared training loop (``arcast_core.training``): their batches, loss and validation.

A model's training loss is its own (``ForecastModel.loss``); validation is the mean squared error over every
validation window; the best epoch is the lowest one, from the share of the epochs the model names
(``selection_from``: AR-Net's regulariser must be fully on first). Under torchrun the windows are sharded as the
shared loop's docstring describes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from arcast_core.training import Replica, Selection, StepLoss, TrainConfig
from arcast_core.training import fit as fit_task
from forecasting.data import WindowDataset
from forecasting.models.base import ForecastModel

EpochCallback = Callable[[int, float], None]


@dataclass
class FitResult:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def predict_dataset(model: ForecastModel, data: WindowDataset, batch_size: int = 256) -> np.ndarray:
    """Scaled predictions (N, H, C) for every window of ``data``, in order."""
    device = next(model.parameters()).device
    model.eval()
    return np.concatenate([model.predict(_to(b, device)).cpu().numpy() for b in data.batches(batch_size)])


@torch.no_grad()
def _squared_error(
    model: ForecastModel, data: WindowDataset, batch_size: int, shard: tuple[int, int] = (0, 1)
) -> tuple[float, int]:
    """Sum of squared errors and the number of values, over this shard's windows."""
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for batch in data.batches(batch_size, shard=shard):
        batch = _to(batch, device)
        err = model.predict(batch) - batch["y"]
        total += float(err.pow(2).sum())
        count += err.numel()
    return total, count


def validation_loss(model: ForecastModel, data: WindowDataset, batch_size: int = 256) -> float:
    """Mean squared error over every window (not averaged per batch, so a short last batch is weighted right)."""
    total, count = _squared_error(model, data, batch_size)
    return total / count


@dataclass
class ForecastTask:
    """A forecasting model's part in the shared loop."""

    model: ForecastModel
    train: WindowDataset
    val: WindowDataset
    cfg: TrainConfig
    device: torch.device

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.cfg.seed)  # the order of the training windows, epoch after epoch
        self.size = len(self.train)

    def batches(self, batch_size: int, shard: tuple[int, int]) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.train.batches(batch_size, shuffle=True, rng=self.rng, shard=shard):
            yield _to(batch, self.device)

    def loss(self, batch: dict[str, torch.Tensor], progress: float) -> StepLoss:
        return StepLoss(self.model.loss(batch, progress), len(batch["x"]), {})

    def end_epoch(self, epoch: int, train_loss: float) -> None:
        self.model.on_epoch_end((epoch + 1) / self.cfg.epochs, train_loss)

    def validate(self, replica: Replica) -> dict[str, float]:
        return {
            "val_loss": replica.mean(*_squared_error(self.model, self.val, self.cfg.eval_batch_size, replica.shard))
        }


def fit(
    model: ForecastModel,
    train: WindowDataset,
    val: WindowDataset,
    cfg: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Train ``model`` in place, restore its best checkpoint by validation MSE and return the history.

    ``on_epoch(epoch, val_loss)`` runs after every epoch; Optuna's pruning raises from it. Under torchrun (more
    than one process) it trains with DDP; every rank returns the same result.
    """

    def build(device: torch.device) -> ForecastTask:
        return ForecastTask(model.to(device), train, val, cfg, device)

    hook = None if on_epoch is None else lambda epoch, metrics: on_epoch(epoch, metrics["val_loss"])
    selection = Selection("val_loss", start=model.selection_from())
    _, report = fit_task(build, cfg, selection, hook, name=f"train {model.kind}")
    history = [
        {"epoch": r.epoch, "train_loss": r.train_loss, "val_loss": r.validation["val_loss"], "lr": r.lr}
        for r in report.history
        if r.validation is not None
    ]
    best_val_loss = report.best_validation["val_loss"]
    return FitResult(report.best_epoch, best_val_loss, report.epochs_run, report.seconds, history)
