"""Resumable training: the shared loop's whole state after an epoch, in one file written atomically.

A run that names a checkpoint file (``TrainConfig.checkpoint``) writes it after every epoch: the weights, the
optimiser's and the schedule's state, the early-stopping record (best weights, best value, epochs without
improvement), the epoch history, the budget already spent, the random states (torch's and the task's shuffling
order) and, for a task that has them, its own position (``resume_state`` / ``resume_from``: e.g. how far into a
pass over the data a round shorter than a pass stopped). Started again with the same file and the same settings, it
goes on from the next epoch, as if it had never stopped; the budget counts the time spent before the stop, and a run
that its budget stopped goes on when restarted with a larger one. Settings that change the result (rate, schedule,
epochs, batch size, seed...) must match: a mismatch is refused, naming the fields.
"""

from __future__ import annotations

import dataclasses
import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arcast_core.files import atomic_write

FORMAT = 1
# Settings that may differ between a run and its resumption: where it runs and how it reports, not what it learns.
MAY_CHANGE = ("checkpoint", "progress", "device", "max_seconds", "budget_clock", "eval_batch_size")


@dataclass
class LoopState:
    """The loop's own bookkeeping after ``next_epoch`` finished epochs."""

    next_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_value: float | None = None
    best_epoch: int = -1
    best_validation: dict[str, float] = field(default_factory=dict)
    stale: int = 0
    history: list[Any] = field(default_factory=list)  # EpochRecord
    spent_seconds: float = 0.0  # of the budget's clock
    # "early_stopping" or "time_budget": the run is over, a restart only restores it (but one given a larger budget)
    stopped_by: str | None = None


def _settings(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in MAY_CHANGE}


def _defaults(cfg: Any) -> dict[str, Any]:
    """The settings' defaults: what a checkpoint written before a setting existed trained with."""
    fields = dataclasses.fields(cfg)
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING and f.name not in MAY_CHANGE}


# Where tasks keep their own random generator (the batches' order, negative samples): numpy or torch.
TASK_RNG_NAMES = ("rng", "generator")


def _rng_states(task: Any) -> dict[str, Any]:
    states: dict[str, Any] = {}
    for name in TASK_RNG_NAMES:
        rng = getattr(task, name, None)
        if isinstance(rng, np.random.Generator):
            states[name] = rng.bit_generator.state
        elif isinstance(rng, torch.Generator):
            states[name] = rng.get_state()
    return states


def _set_rng_states(task: Any, states: dict[str, Any]) -> None:
    for name, state in states.items():
        rng = getattr(task, name)
        if isinstance(rng, np.random.Generator):
            rng.bit_generator.state = state
        else:
            rng.set_state(state)


@dataclass
class Checkpoint:
    """One run's checkpoint file and the objects whose state it holds: built once, then ``load`` and ``save``."""

    path: Path
    cfg: Any  # the TrainConfig: its settings must match on resumption (but MAY_CHANGE)
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    task: Any  # its random generator (``TASK_RNG_NAMES``) is saved and restored, and its ``resume_state()`` if any

    def save(self, state: LoopState) -> None:
        payload = {
            "format": FORMAT,
            "settings": _settings(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "loop": dataclasses.asdict(state) | {"history": [dataclasses.asdict(r) for r in state.history]},
            "random": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "task": _rng_states(self.task),
            },
            "task": self.task.resume_state() if hasattr(self.task, "resume_state") else None,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write(self.path, lambda tmp: tmp.write_bytes(buffer.getvalue()))

    def load(self, record: type) -> LoopState:
        """The state to go on from: a fresh one when the file does not exist yet. ``record``: EpochRecord."""
        path = self.path
        if not path.exists():
            return LoopState()
        payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by ``save``
        if payload.get("format") != FORMAT:
            raise ValueError(f"{path}: checkpoint format {payload.get('format')!r}, this code reads {FORMAT}")
        saved, now = _defaults(self.cfg) | payload["settings"], _settings(self.cfg)
        changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in changed)
            raise ValueError(
                f"{path}: the checkpoint was written with other settings ({detail}); delete it to start over"
            )
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None and payload["scheduler"] is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        randoms = payload["random"]
        torch.set_rng_state(randoms["torch"])
        np.random.set_state(randoms["numpy"])
        random.setstate(randoms["python"])
        _set_rng_states(self.task, randoms["task"])
        if payload.get("task") is not None:  # after the random states: the task may rewind its generator
            self.task.resume_from(payload["task"])
        loop = payload["loop"]
        loop["history"] = [record(**r) for r in loop["history"]]
        return LoopState(**loop)


def selected_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights a run's checkpoint at ``path`` selected on validation (its best state; the last epoch's where
    no epoch was validated yet): what a later run starts from when it warm-starts from this one."""
    payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by ``save``
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {payload.get('format')!r}, this code reads {FORMAT}")
    return payload["loop"]["best_state"] or payload["model"]
