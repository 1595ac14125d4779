"""The one training loop for every forecasting model.

Run plainly it trains in this process. Started by ``torchrun`` (RANK, WORLD_SIZE and LOCAL_RANK set, more than one
process) it trains with DistributedDataParallel: gloo on CPU, nccl on GPU. Every rank takes the same shuffled order
of the training windows and keeps every ``world``-th one (``WindowDataset.batches(shard=(rank, world))``), with a
per-rank batch of ``batch_size // world``: step k of all ranks together then covers exactly the windows of step k
of one process with ``batch_size``, and DDP's averaged gradient is that step's gradient when the local batches
are equally long (``batch_size`` and the number of training windows divisible by ``world``). Train and validation
losses are all-reduced, so every rank takes the same early-stopping decision and restores the same checkpoint.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from arcast_core.runtime import pick_device, seed_everything
from forecasting.data import WindowDataset
from forecasting.models.base import ForecastModel

LrSchedule = Literal["constant", "cosine", "halving", "onecycle"]
EpochCallback = Callable[[int, float], None]
log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimiser and stopping settings.

    lr_schedule: "halving" keeps the rate for two epochs, then halves it every epoch (Informer's), "cosine"
    anneals to zero, "onecycle" warms up then anneals (AR-Net/NeuralProphet's choice), "constant" keeps it.
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


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a torchrun job."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context() -> DistributedContext | None:
    """The torchrun environment, or None for a plain process (or a torchrun job of one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return DistributedContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """True outside torchrun and on rank 0: the process that reports and saves."""
    ctx = distributed_context()
    return ctx is None or ctx.is_main


def init_distributed(ctx: DistributedContext, device: torch.device) -> None:
    """Join the torchrun job's process group (once per process): nccl between GPUs, gloo on CPU."""
    if dist.is_initialized():
        return
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def finish_distributed() -> None:
    """Leave the process group, if this process joined one (torch warns at exit otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _rank_device(requested: str, ctx: DistributedContext) -> torch.device:
    """Under torchrun each process drives the GPU of its local rank; CPU ranks share the machine."""
    device = pick_device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums of ``values`` over every rank, identical on all of them."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


class _LossModule(nn.Module):
    """The model's training loss as a forward pass: DDP synchronises gradients only for what runs through it."""

    def __init__(self, model: ForecastModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], progress: float) -> torch.Tensor:
        return self.model.loss(batch, progress)


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
        # As the official Informer code: the first two epochs at the full rate, then halved every epoch.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 ** max(0, step // max(steps_per_epoch, 1) - 1)
        )
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}")


@dataclass
class _Replica:
    """How this process trains: alone (``ctx`` None), or as one rank of a torchrun job.

    ``loss`` is the model's training loss, called through DDP when distributed; ``batch_size`` and
    ``steps_per_epoch`` are this process's.
    """

    ctx: DistributedContext | None
    device: torch.device
    module: nn.Module  # what .train() and the optimiser step act on: the model, or its DDP wrapper
    loss: Callable[[dict[str, torch.Tensor], float], torch.Tensor]
    batch_size: int
    steps_per_epoch: int

    @property
    def shard(self) -> tuple[int, int]:
        return (0, 1) if self.ctx is None else (self.ctx.rank, self.ctx.world)

    @property
    def reports(self) -> bool:
        return self.ctx is None or self.ctx.is_main

    def train_batches(self, train: WindowDataset, rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
        batches = train.batches(self.batch_size, shuffle=True, rng=rng, shard=self.shard)
        if self.ctx is None:
            return batches
        # A rank with one window more than another would take one step more and wait forever in all-reduce.
        return itertools.islice(batches, self.steps_per_epoch)

    def mean(self, total: float, count: float) -> float:
        """total / count over every rank (the same value on all of them)."""
        if self.ctx is not None:
            total, count = _all_reduce_sum([total, count], self.device)
        return total / max(count, 1)


def _alone(model: ForecastModel, train: WindowDataset, cfg: TrainConfig) -> _Replica:
    device = pick_device(cfg.device)
    model.to(device)
    steps = math.ceil(len(train) / cfg.batch_size)
    return _Replica(None, device, model, model.loss, cfg.batch_size, steps)


def _rank_batch_size(batch_size: int, ctx: DistributedContext) -> int:
    if batch_size < ctx.world:
        raise ValueError(f"batch_size {batch_size} is smaller than the {ctx.world} processes: each needs a window")
    if batch_size % ctx.world and ctx.is_main:
        log.warning(
            "batch_size %d does not divide among %d processes: each takes %d windows a step (%d together)",
            batch_size,
            ctx.world,
            batch_size // ctx.world,
            batch_size // ctx.world * ctx.world,
        )
    return batch_size // ctx.world


def _distributed(model: ForecastModel, train: WindowDataset, cfg: TrainConfig, ctx: DistributedContext) -> _Replica:
    device = _rank_device(cfg.device, ctx)
    init_distributed(ctx, device)
    model.to(device)
    wrapper = DistributedDataParallel(_LossModule(model), device_ids=[device.index] if device.type == "cuda" else None)
    # Same initial weights everywhere (DDP also broadcasts rank 0's), but each rank its own dropout masks.
    torch.manual_seed(cfg.seed + ctx.rank)
    batch_size = _rank_batch_size(cfg.batch_size, ctx)
    per_rank = len(train) // ctx.world  # the fewest windows any rank holds
    if per_rank == 0:
        raise ValueError(f"{len(train)} training windows cannot be shared among {ctx.world} processes")
    return _Replica(ctx, device, wrapper, wrapper, batch_size, math.ceil(per_rank / batch_size))


def _step(
    replica: _Replica,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    cfg: TrainConfig,
    batch: dict[str, torch.Tensor],
    progress: float,
    epoch: int,
) -> float:
    """One optimiser step on one batch; returns the batch's loss."""
    loss = replica.loss(batch, progress)
    # Alone, stop at the first bad step. Distributed, a rank stopping alone would leave the others waiting
    # in all-reduce: the all-reduced epoch loss is checked instead, on every rank alike.
    if replica.ctx is None and not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {float(loss)} at epoch {epoch}: lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(replica.module.parameters(), cfg.grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.item()


def _val_loss(model: ForecastModel, val: WindowDataset, cfg: TrainConfig, replica: _Replica) -> float:
    if replica.ctx is None:
        return validation_loss(model, val, cfg.eval_batch_size)
    return replica.mean(*_squared_error(model, val, cfg.eval_batch_size, replica.shard))


def fit(
    model: ForecastModel,
    train: WindowDataset,
    val: WindowDataset,
    cfg: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Train ``model`` in place, restore its best checkpoint by validation MSE and return the history.

    ``on_epoch(epoch, val_loss)`` runs after every epoch; Optuna's pruning raises from it. Under torchrun (more
    than one process) it trains with DDP as the module docstring describes; every rank returns the same result.
    """
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    ctx = distributed_context()
    replica = _alone(model, train, cfg) if ctx is None else _distributed(model, train, cfg, ctx)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(optimizer, cfg, replica.steps_per_epoch)
    best_state, best_loss, best_epoch, bad_epochs = None, math.inf, -1, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(
        total=cfg.epochs,
        desc=f"train {model.kind}",
        unit="epoch",
        disable=not (cfg.progress and replica.reports),
        leave=False,
    )
    epoch = 0
    for epoch in range(cfg.epochs):
        replica.module.train()
        progress = epoch / cfg.epochs
        total, seen = 0.0, 0
        for batch in replica.train_batches(train, rng):
            batch = _to(batch, replica.device)
            n = len(batch["x"])
            total, seen = total + _step(replica, optimizer, scheduler, cfg, batch, progress, epoch) * n, seen + n
        train_loss = replica.mean(total, seen)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} at epoch {epoch}: lower the learning rate")
        model.on_epoch_end((epoch + 1) / cfg.epochs, train_loss)
        val_loss = _val_loss(model, val, cfg, replica)
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
