"""Forecasting models on the shared training loop (``arcast_core.training``): their batches, loss and validation.

A model's training loss is its own (``ForecastModel.loss``); validation is the mean squared error over every
validation window; the best epoch is the lowest one, from the share of the epochs the model names
(``selection_from``: AR-Net's regulariser must be fully on first). Under torchrun the windows are sharded as the
shared loop's docstring describes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from arcast_core.training import Replica, Selection, StepLoss, TrainConfig, cpu_state
from arcast_core.training import fit as fit_task
from forecasting.data import WindowDataset
from forecasting.models.base import ForecastModel

EpochCallback = Callable[[int, float], None]


@dataclass
class FitResult:
    best_epoch: int  # -1: the warm start's weights, no epoch improved on them
    best_val_loss: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    warm_start: dict[str, object] | None = None  # what the model's warm start chose (AR-Net's ridge penalty)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_device(model: nn.Module) -> torch.device:
    """Where a model's tensors live: its parameters', else its buffers', else the CPU (naive has neither)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict_dataset(model: ForecastModel, data: WindowDataset, batch_size: int = 256) -> np.ndarray:
    """Scaled predictions (N, H, C) for every window of ``data``, in order."""
    device = model_device(model)
    model.eval()
    return np.concatenate([model.predict(_to(b, device)).cpu().numpy() for b in data.batches(batch_size)])


@torch.no_grad()
def _squared_error(
    model: ForecastModel, data: WindowDataset, batch_size: int, shard: tuple[int, int] = (0, 1)
) -> tuple[float, int]:
    """Sum of squared errors and the number of values, over this shard's windows."""
    device = model_device(model)
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

    A model's ``warm_start`` sets its starting weights first. ``on_epoch(epoch, val_loss)`` runs after every epoch;
    Optuna's pruning raises from it. Under torchrun (more than one process) it trains with DDP; every rank returns
    the same result. A model that fits in closed form (``ForecastModel.fit_closed_form``) is fitted that way
    instead, with no epochs for ``on_epoch`` to prune.
    """
    closed = _fit_closed_form(model, train, val, cfg)
    if closed is not None:
        return closed
    started_from = model.warm_start(train, val)
    selection = Selection("val_loss", start=model.selection_from())
    # A warm start is a candidate like any epoch (SGD that only moves away from it on validation keeps it), unless
    # the selection counts only later checkpoints (a sparse AR-Net once its regulariser is in force).
    start = None
    if started_from is not None and selection.start == 0:
        start = validation_loss(model, val, cfg.eval_batch_size), cpu_state(model)

    def build(device: torch.device) -> ForecastTask:
        return ForecastTask(model.to(device), train, val, cfg, device)

    hook = None if on_epoch is None else lambda epoch, metrics: on_epoch(epoch, metrics["val_loss"])
    _, report = fit_task(build, cfg, selection, hook, name=f"train {model.kind}")
    history = [
        {"epoch": r.epoch, "train_loss": r.train_loss, "val_loss": r.validation["val_loss"], "lr": r.lr}
        for r in report.history
        if r.validation is not None
    ]
    best_epoch, best_val_loss = report.best_epoch, report.best_validation["val_loss"]
    if start is not None:
        history.insert(0, {"epoch": -1, "val_loss": start[0]})
        if start[0] <= best_val_loss:
            model.load_state_dict(start[1])
            best_epoch, best_val_loss = -1, start[0]
    return FitResult(best_epoch, best_val_loss, report.epochs_run, report.seconds, history, started_from)


def _fit_closed_form(
    model: ForecastModel, train: WindowDataset, val: WindowDataset, cfg: TrainConfig
) -> FitResult | None:
    """A closed-form fit as one pass over the data (epoch 0), scored like an SGD epoch; None: fit by SGD.

    ``on_epoch`` is not called: pruning a fit that is already complete would only throw its result away. Every
    torchrun rank computes the same fit.
    """
    start = time.perf_counter()
    record = model.fit_closed_form(train, val)
    if record is None:
        return None
    val_loss = validation_loss(model, val, cfg.eval_batch_size)
    history = record.get("history") or [{"epoch": 0, "val_loss": val_loss}]
    return FitResult(0, val_loss, 1, time.perf_counter() - start, history)
