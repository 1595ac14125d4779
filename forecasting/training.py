"""The one training loop for every forecasting model."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from forecasting.data import WindowDataset
from forecasting.models.base import ForecastModel

LrSchedule = Literal["constant", "cosine", "halving", "onecycle"]
EpochCallback = Callable[[int, float], None]


@dataclass
class TrainConfig:
    """Optimiser and stopping settings.

    lr_schedule: "halving" halves the rate every epoch (Informer's), "cosine" anneals to zero,
    "onecycle" warms up then anneals (AR-Net/NeuralProphet's choice), "constant" keeps it.
    weight_decay defaults to 0: decay would pull AR coefficients away from the least-squares solution.
    """

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: LrSchedule = "cosine"
    patience: int = 5
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 256
    progress: bool = True


@dataclass
class FitResult:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def predict_dataset(model: ForecastModel, data: WindowDataset, batch_size: int = 256) -> np.ndarray:
    """Scaled predictions (N, H, C) for every window of ``data``, in order."""
    device = next(model.parameters()).device
    model.eval()
    return np.concatenate([model.predict(_to(b, device)).cpu().numpy() for b in data.batches(batch_size)])


@torch.no_grad()
def validation_loss(model: ForecastModel, data: WindowDataset, batch_size: int = 256) -> float:
    """Mean squared error over every window (not averaged per batch, so a short last batch is weighted right)."""
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for batch in data.batches(batch_size):
        batch = _to(batch, device)
        err = model.predict(batch) - batch["y"]
        total += float(err.pow(2).sum())
        count += err.numel()
    return total / count


def _scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    total = cfg.epochs * steps_per_epoch
    if cfg.lr_schedule == "constant":
        return None
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total, 1))
    if cfg.lr_schedule == "halving":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** (step // max(steps_per_epoch, 1)))
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}")


def fit(
    model: ForecastModel,
    train: WindowDataset,
    val: WindowDataset,
    cfg: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Train ``model`` in place, restore its best checkpoint by validation MSE and return the history.

    ``on_epoch(epoch, val_loss)`` runs after every epoch; Optuna's pruning raises from it.
    """
    rng = seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    scheduler = _scheduler(optimizer, cfg, steps_per_epoch)
    best_state, best_loss, best_epoch, bad_epochs = None, math.inf, -1, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(total=cfg.epochs, desc=f"train {model.kind}", unit="epoch", disable=not cfg.progress, leave=False)
    epoch = 0
    for epoch in range(cfg.epochs):
        model.train()
        progress = epoch / cfg.epochs
        total, seen = 0.0, 0
        for batch in train.batches(cfg.batch_size, shuffle=True, rng=rng):
            batch = _to(batch, device)
            loss = model.loss(batch, progress)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {float(loss)} at epoch {epoch}: lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            n = len(batch["x"])
            total, seen = total + loss.item() * n, seen + n
        train_loss = total / max(seen, 1)
        model.on_epoch_end((epoch + 1) / cfg.epochs, train_loss)
        val_loss = validation_loss(model, val, cfg.eval_batch_size)
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": optimizer.param_groups[0]["lr"]}
        )
        bar.update(1)
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, val_loss)
        if progress < model.selection_from():
            continue  # e.g. AR-Net before its regulariser is fully on: not a candidate yet
        if val_loss < best_loss:
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:  # no epoch was a candidate: keep the final weights
        best_loss, best_epoch = history[-1]["val_loss"], epoch
    model.eval()
    return FitResult(best_epoch, best_loss, epoch + 1, time.perf_counter() - started, history)
