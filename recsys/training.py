"""Training and full-ranking evaluation for SASRec.

AdamW, shuffled mini-batches of training windows, validation NDCG@10 after every ``eval_every`` epochs, early
stopping after ``patience`` evaluations without improvement, and the best weights restored at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from arcast_core.runtime import pick_device, seed_everything
from recsys.evaluation import evaluate_scorer
from recsys.metrics import DEFAULT_KS
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.split import EvalExamples, LeaveOneOutSplit, left_pad

SELECTION_METRIC = "ndcg@10"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    eval_every: int = 1
    seed: int = 0
    device: str | None = None  # None: CUDA when available, else CPU
    max_seconds: float | None = None  # wall-clock budget; checked after each epoch
    eval_batch_size: int = 1024
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    train_loss: float
    seconds: float
    validation: dict[str, float] | None


@dataclass
class TrainResult:
    model: SASRec
    best_epoch: int
    best_validation: dict[str, float]
    history: list[EpochLog] = field(default_factory=list)
    stopped_by: str = "epochs"


def training_windows(sequences: Sequence[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut training sequences into ``(input, next-item target)`` windows of at most ``max_len`` positions.

    Windows are taken from the end and overlap by one item, so every transition of a long history is trained on
    exactly once (the reference code keeps only the last window and drops older transitions).
    """
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            start = max(0, end - max_len - 1)
            window = seq[start:end]
            inputs.append(window[:-1])
            targets.append(window[1:])
            end = start + 1  # the next window's last target is this window's first input
    if not inputs:
        raise ValueError("no training transitions: every training sequence has fewer than 2 items")
    return torch.from_numpy(left_pad(inputs, max_len)), torch.from_numpy(left_pad(targets, max_len))


@torch.no_grad()
def evaluate_sasrec(
    model: SASRec,
    examples: EvalExamples,
    batch_size: int = 1024,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = False,
) -> dict[str, float]:
    """Recall@K / NDCG@K of ``model`` on validation or test ``examples``, full ranking over all items."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        return evaluate_scorer(model.score_all, examples, device, batch_size, ks, exclude_history)
    finally:
        model.train(was_training)


def train_sasrec(
    split: LeaveOneOutSplit, model_config: SASRecConfig, config: TrainConfig, model: SASRec | None = None
) -> TrainResult:
    """Train SASRec on ``split.train_sequences``, selecting the epoch with the best validation NDCG@10.

    ``model``: train this (e.g. a subclass with an extra loss term, built after seeding) instead of a fresh SASRec.
    """
    if model_config.num_items != split.num_items:
        raise ValueError(f"model has {model_config.num_items} items, split has {split.num_items}")
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)  # shuffling and negative sampling
    device = pick_device(config.device)
    model = (model if model is not None else SASRec(model_config)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    inputs, targets = training_windows(split.train_sequences, model_config.max_len)

    best_score = -1.0
    best_epoch = 0
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    best_validation: dict[str, float] = {}
    history: list[EpochLog] = []
    stale = 0
    stopped_by = "epochs"
    started = time.monotonic()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.monotonic()
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        batches = range(0, len(order), config.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not config.progress, leave=False)
        total, count = 0.0, 0
        for start in bar:
            idx = order[start : start + config.batch_size]
            loss = model.loss(inputs[idx].to(device), targets[idx].to(device), generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.4f}")
        out_of_time = config.max_seconds is not None and time.monotonic() - started >= config.max_seconds
        validation = None
        if epoch % config.eval_every == 0 or epoch == config.epochs or out_of_time:
            validation = evaluate_sasrec(model, split.validation, config.eval_batch_size)
            if validation[SELECTION_METRIC] > best_score:
                best_score, best_epoch, best_validation, stale = validation[SELECTION_METRIC], epoch, validation, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        history.append(EpochLog(epoch, total / count, time.monotonic() - epoch_start, validation))
        if config.progress:
            shown = f", val {SELECTION_METRIC} {validation[SELECTION_METRIC]:.4f}" if validation else ""
            tqdm.write(f"epoch {epoch}: loss {total / count:.4f}{shown}", file=sys.stderr)  # stdout may carry data
        if stale >= config.patience:
            stopped_by = "early_stopping"
            break
        if out_of_time:
            stopped_by = "time_budget"
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, best_validation, history, stopped_by)


def save_sasrec(model: SASRec, path: Path) -> None:
    """Write weights and config together so the checkpoint rebuilds the same model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, path)


def load_sasrec(path: Path, device: str | None = None) -> SASRec:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = SASRec(SASRecConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(pick_device(device)).eval()
