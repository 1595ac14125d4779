"""The one training loop: every model of both domains supplies its batches, its loss and its validation.

``fit`` owns the rest: seeding, the device, the optimiser (AdamW), the LR schedule (with an optional warm-up),
gradient clipping, validation every ``eval_every`` epochs, early stopping after ``patience`` validations without
improvement with the best weights restored, a wall-clock budget, the hook Optuna's pruning raises from, progress
output, and DistributedDataParallel.

Run plainly it trains in this process. Started by ``torchrun`` (RANK, WORLD_SIZE and LOCAL_RANK set, more than one
process) it trains with DDP: gloo on CPU, nccl on GPU. Every rank takes the same shuffled order of the training
examples and keeps every ``world``-th one (the task's ``batches(..., shard=(rank, world))``), with a per-rank batch
of ``batch_size // world``: step k of all ranks together then covers exactly the examples of step k of one process
with ``batch_size``, and DDP's averaged gradient is that step's gradient when the local batches are equally long
(``batch_size`` and the number of training examples divisible by ``world``). Train losses and the task's
validation sums are all-reduced, so every rank takes the same early-stopping decision and restores the same
checkpoint.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from arcast_core.checkpoint import Checkpoint, LoopState
from arcast_core.distributed import (
    DistributedContext,
    all_reduce_sum,
    distributed_context,
    init_distributed,
    rank_device,
)
from arcast_core.runtime import pick_device, seed_everything

LrSchedule = Literal["constant", "cosine", "halving", "onecycle", "inverse_sqrt"]
ValidationHook = Callable[[int, dict[str, float]], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and stopping settings of every model.

    lr_schedule: "halving" keeps the rate for two epochs, then halves it every epoch (Informer's), "cosine"
    anneals to zero, "onecycle" warms up then anneals (AR-Net/NeuralProphet's choice), "constant" keeps it,
    "inverse_sqrt" scales it by ``1 / sqrt(step / warmup_steps)`` after the warm-up (T5/TIGER's; with no warm-up,
    by ``1 / sqrt(1 + step)``): no planned end, so it suits step budgets that stop on time or patience.
    warmup_steps: the rate rises linearly from ``lr / warmup_steps`` to ``lr`` over this many steps, then the
    schedule decays it over the remaining ones (not with "onecycle", which warms up itself).
    weight_decay defaults to 0: decay would pull AR coefficients away from the least-squares solution.
    eval_every: validate every this many epochs (and after the last); patience counts validations.
    max_seconds: a time budget, checked after each epoch (that epoch is validated, then training stops).
    budget_clock: what ``max_seconds`` counts: "wall" (elapsed time) or "cpu" (this process's CPU time, all its
    threads). A CPU budget buys the same epochs whatever else runs on a shared machine; a wall-clock one does not.
    checkpoint: a file the loop's state is written to after every epoch; a run started again with it goes on
    from the next epoch (see ``arcast_core.checkpoint``). None: nothing is written.
    device: "auto" (or None): CUDA when available, else CPU.
    autocast: "bf16" runs the training steps' forward passes under bfloat16 autocast (matrix products in bf16,
    weights and optimiser state in fp32; validation stays fp32, as the exported graphs are): the official AutoTimes
    scripts train with mixed precision, and on a CPU with AVX512-BF16 a SmolLM2 step measured 1.6x faster.
    """

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: LrSchedule = "cosine"
    warmup_steps: int = 0
    patience: int = 5
    eval_every: int = 1
    grad_clip: float | None = None
    seed: int = 0
    device: str | None = "auto"
    eval_batch_size: int = 256
    max_seconds: float | None = None
    budget_clock: Literal["wall", "cpu"] = "wall"
    checkpoint: str | None = None
    progress: bool = True
    autocast: Literal["none", "bf16"] = "none"

    def __post_init__(self) -> None:
        if self.autocast not in ("none", "bf16"):
            raise ValueError(f"TrainConfig.autocast must be 'none' or 'bf16', got {self.autocast!r}")
        for name in ("epochs", "batch_size", "patience", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps and self.lr_schedule == "onecycle":
            raise ValueError('lr_schedule "onecycle" warms up itself: leave warmup_steps at 0')


class StepLoss(NamedTuple):
    """One batch's loss to minimise, its number of examples, and named terms to log (may be empty)."""

    total: torch.Tensor
    size: int
    terms: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Replica:
    """This process's share of the work: alone (``ctx`` None) or one rank of a torchrun job."""

    ctx: DistributedContext | None
    device: torch.device

    @property
    def shard(self) -> tuple[int, int]:
        return (0, 1) if self.ctx is None else (self.ctx.rank, self.ctx.world)

    @property
    def reports(self) -> bool:
        return self.ctx is None or self.ctx.is_main

    def mean(self, total: float, count: float) -> float:
        """total / count over every rank (the same value on all of them)."""
        if self.ctx is not None:
            total, count = all_reduce_sum([total, count], self.device)
        return total / max(count, 1)


class TrainingTask(Protocol):
    """What a model supplies to ``fit``.

    ``model``: the module trained (on the device it was built for). ``size``: the number of training examples.
    ``batches``: one epoch's shuffled training batches of ``batch_size`` examples, this shard's share.
    ``loss``: the training loss of one batch at ``progress`` (0..1 of the planned epochs). ``end_epoch``: called
    after each epoch's steps, before validation. ``validate``: the validation metrics (sums all-reduced through
    ``replica.mean``), or None for a model trained without validation (its final weights are kept).
    """

    model: nn.Module
    size: int

    def batches(self, batch_size: int, shard: tuple[int, int]) -> Iterable[Any]: ...

    def loss(self, batch: Any, progress: float) -> StepLoss: ...

    def end_epoch(self, epoch: int, train_loss: float) -> None: ...

    def validate(self, replica: Replica) -> dict[str, float] | None: ...


@dataclass(frozen=True)
class Selection:
    """The validation metric that picks the best epoch; ``start``: the share of the epochs before which no
    epoch is a candidate (nor counts toward early stopping), e.g. AR-Net's regulariser ramp."""

    metric: str
    maximise: bool = False
    start: float = 0.0

    def better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.maximise else value < best)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # from 0
    train_loss: float
    terms: dict[str, float]  # the task's named loss terms, averaged over the epoch's examples
    lr: float  # the rate the next epoch starts with
    seconds: float
    validation: dict[str, float] | None


@dataclass
class FitReport:
    best_epoch: int
    best_validation: dict[str, float]
    epochs_run: int
    seconds: float
    stopped_by: str  # "epochs", "early_stopping" or "time_budget"
    history: list[EpochRecord] = field(default_factory=list)


def shuffled_index_batches(
    n: int, batch_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)
) -> Iterator[torch.Tensor]:
    """Indices of ``n`` examples in one shuffled order (this shard's every ``world``-th), ``batch_size`` at a time."""
    rank, world = shard
    order = torch.randperm(n, generator=generator)[rank::world]
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


class _LossModule(nn.Module):
    """The task's training loss as a forward pass: DDP synchronises gradients only for what runs through it."""

    def __init__(self, task: TrainingTask) -> None:
        super().__init__()
        self.model = task.model
        self.task = task

    def forward(self, batch: Any, progress: float) -> StepLoss:
        return self.task.loss(batch, progress)


def _decay(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, total: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.lr_schedule == "constant":
        return None
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total, 1))
    if cfg.lr_schedule == "inverse_sqrt":
        # Continues from the end of the warm-up (rate lr at its last step): lr * sqrt(w / (w + step)).
        base = max(cfg.warmup_steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: math.sqrt(base / (base + step)))
    if cfg.lr_schedule == "halving":
        # As the official Informer code: the first two epochs at the full rate, then halved every epoch.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 ** max(0, step // max(steps_per_epoch, 1) - 1)
        )
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The schedule, stepped once per optimiser step; a warm-up first when ``cfg.warmup_steps`` is set."""
    total = cfg.epochs * steps_per_epoch
    if not cfg.warmup_steps:
        return _decay(optimizer, cfg, steps_per_epoch, total)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 1 / cfg.warmup_steps, total_iters=cfg.warmup_steps)
    decay = _decay(optimizer, cfg, steps_per_epoch, total - cfg.warmup_steps)
    if decay is None:
        return warmup
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[cfg.warmup_steps])


def _rank_batch_size(batch_size: int, ctx: DistributedContext) -> int:
    if batch_size < ctx.world:
        raise ValueError(f"batch_size {batch_size} is smaller than the {ctx.world} processes: each needs an example")
    if batch_size % ctx.world and ctx.is_main:
        log.warning(
            "batch_size %d does not divide among %d processes: each takes %d examples a step (%d together)",
            batch_size,
            ctx.world,
            batch_size // ctx.world,
            batch_size // ctx.world * ctx.world,
        )
    return batch_size // ctx.world


@dataclass
class _Loop:
    """How this process runs the steps: the module stepped (the model or its DDP wrapper) and its batches."""

    replica: Replica
    module: nn.Module
    loss: Callable[[Any, float], StepLoss]
    batch_size: int
    steps_per_epoch: int

    def batches(self, task: TrainingTask) -> Iterator[Any]:
        batches = iter(task.batches(self.batch_size, self.replica.shard))
        if self.replica.ctx is None:
            return batches
        # A rank with one example more than another would take one step more and wait forever in all-reduce.
        return itertools.islice(batches, self.steps_per_epoch)


def _alone(task: TrainingTask, device: torch.device, cfg: TrainConfig) -> _Loop:
    steps = math.ceil(task.size / cfg.batch_size)
    return _Loop(Replica(None, device), task.model, task.loss, cfg.batch_size, steps)


def _distributed(task: TrainingTask, device: torch.device, cfg: TrainConfig, ctx: DistributedContext) -> _Loop:
    wrapper = DistributedDataParallel(_LossModule(task), device_ids=[device.index] if device.type == "cuda" else None)
    # Same initial weights everywhere (DDP also broadcasts rank 0's), but each rank its own dropout masks.
    torch.manual_seed(cfg.seed + ctx.rank)
    batch_size = _rank_batch_size(cfg.batch_size, ctx)
    per_rank = task.size // ctx.world  # the fewest examples any rank holds
    if per_rank == 0:
        raise ValueError(f"{task.size} training examples cannot be shared among {ctx.world} processes")
    return _Loop(Replica(ctx, device), wrapper, wrapper, batch_size, math.ceil(per_rank / batch_size))


def _step(
    loop: _Loop,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    cfg: TrainConfig,
    batch: Any,
    progress: float,
    epoch: int,
) -> StepLoss:
    device_type = loop.replica.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
        step = loop.loss(batch, progress)
    # Alone, stop at the first bad step. Distributed, a rank stopping alone would leave the others waiting
    # in all-reduce: the all-reduced epoch loss is checked instead, on every rank alike.
    if loop.replica.ctx is None and not torch.isfinite(step.total):
        raise FloatingPointError(
            f"training loss became {float(step.total.detach())} at epoch {epoch}: lower the learning rate"
        )
    optimizer.zero_grad(set_to_none=True)
    step.total.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(loop.module.parameters(), cfg.grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return step


def _train_epoch(
    loop: _Loop,
    task: TrainingTask,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    cfg: TrainConfig,
    epoch: int,
    bar: tqdm,
) -> tuple[float, dict[str, float]]:
    """One pass over the training batches: the mean loss and mean named terms over the examples, all ranks."""
    loop.module.train()
    progress = epoch / cfg.epochs
    total, seen = 0.0, 0
    terms: dict[str, float] = {}
    for batch in loop.batches(task):
        step = _step(loop, optimizer, scheduler, cfg, batch, progress, epoch)
        total, seen = total + step.total.item() * step.size, seen + step.size
        for name, value in step.terms.items():
            terms[name] = terms.get(name, 0.0) + float(value.detach()) * step.size
        bar.update(1)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    train_loss = loop.replica.mean(total, seen)
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"training loss became {train_loss} at epoch {epoch}: lower the learning rate")
    return train_loss, {name: value / max(seen, 1) for name, value in terms.items()}


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU, to restore the best ones later whatever the device."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit(
    build: Callable[[torch.device], TrainingTask],
    cfg: TrainConfig,
    selection: Selection | None = None,
    on_validation: ValidationHook | None = None,
    name: str = "train",
) -> tuple[TrainingTask, FitReport]:
    """Seed, build the task on the chosen device, train it and restore its best weights by ``selection``.

    ``build(device)`` runs right after seeding, so the weights it initialises follow the seed. ``on_validation
    (epoch, metrics)`` runs after every validation: Optuna's pruning raises from it. Under torchrun (more than one
    process) it trains with DDP as the module docstring describes; every rank returns the same result.
    """
    seed_everything(cfg.seed)
    ctx = distributed_context()
    device = pick_device(cfg.device) if ctx is None else rank_device(cfg.device, ctx)
    if ctx is not None:
        init_distributed(device)
    task = build(device)
    loop = _alone(task, device, cfg) if ctx is None else _distributed(task, device, cfg, ctx)
    model = task.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, loop.steps_per_epoch)
    saved = None if cfg.checkpoint is None else Checkpoint(Path(cfg.checkpoint), cfg, model, optimizer, scheduler, task)
    state = LoopState() if saved is None else saved.load(EpochRecord)
    if state.stopped_by == "time_budget" and (cfg.max_seconds is None or state.spent_seconds < cfg.max_seconds):
        state.stopped_by = None  # restarted with a larger budget than the one that stopped it: train on
    best_state, best_value, best_epoch = state.best_state, state.best_value, state.best_epoch
    best_validation, stale, history = state.best_validation, state.stale, state.history
    stopped_by = state.stopped_by or "epochs"
    show = cfg.progress and loop.replica.reports
    clock = time.process_time if cfg.budget_clock == "cpu" else time.monotonic
    started = clock() - state.spent_seconds  # a resumed run's budget counts the time spent before
    epoch = state.next_epoch - 1
    for epoch in range(state.next_epoch, cfg.epochs if state.stopped_by is None else 0):
        epoch_start = time.monotonic()
        with tqdm(
            total=loop.steps_per_epoch, desc=f"{name} epoch {epoch + 1}", disable=not show, leave=False, file=sys.stderr
        ) as bar:
            train_loss, terms = _train_epoch(loop, task, optimizer, scheduler, cfg, epoch, bar)
        task.end_epoch(epoch, train_loss)
        out_of_time = cfg.max_seconds is not None and clock() - started >= cfg.max_seconds
        due = (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1 or out_of_time
        validation = task.validate(loop.replica) if selection is not None and due else None
        if validation is not None and selection is not None:
            if on_validation is not None:
                on_validation(epoch, validation)
            if epoch / cfg.epochs >= selection.start:
                if selection.better(validation[selection.metric], best_value):
                    best_value, best_epoch, best_validation, stale = validation[selection.metric], epoch, validation, 0
                    best_state = cpu_state(model)
                else:
                    stale += 1
        lr = optimizer.param_groups[0]["lr"]
        history.append(EpochRecord(epoch, train_loss, terms, lr, time.monotonic() - epoch_start, validation))
        if show:
            shown = ""
            if validation and selection:  # "val loss 0.0885", "val ndcg@10 0.0145"
                shown = f", val {selection.metric.removeprefix('val_')} {validation[selection.metric]:.4f}"
            tqdm.write(f"{name} epoch {epoch + 1}: loss {train_loss:.4f}{shown}", file=sys.stderr)
        if stale >= cfg.patience:
            stopped_by = "early_stopping"
        elif out_of_time:
            stopped_by = "time_budget"
        if saved is not None and loop.replica.reports:
            done = LoopState(epoch + 1, best_state, best_value, best_epoch, best_validation, stale, history)
            done.spent_seconds, done.stopped_by = clock() - started, None if stopped_by == "epochs" else stopped_by
            saved.save(done)
        if stopped_by != "epochs":
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:  # no validation, or no epoch was a candidate: keep the final weights
        best_epoch, best_validation = epoch, history[-1].validation or {}
    model.eval()
    seconds = sum(r.seconds for r in history)  # every epoch's training and validation, before a resumption too
    return task, FitReport(best_epoch, best_validation, epoch + 1, seconds, stopped_by, history)
