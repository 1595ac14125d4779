"""Training and full-ranking evaluation for SASRec.

On the shared loop (``arcast_core.training``): shuffled mini-batches of training windows, validation NDCG@10 after
every ``eval_every`` epochs, early stopping after ``patience`` evaluations without improvement, and the best
weights restored at the end. Epochs are numbered from 1 in the results.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from arcast_core.runtime import pick_device
from arcast_core.training import Replica, Selection, StepLoss, TrainConfig, fit, shuffled_index_batches
from recsys.evaluation import evaluate_scorer
from recsys.metrics import DEFAULT_KS
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.split import EvalExamples, LeaveOneOutSplit, left_pad

SELECTION_METRIC = "ndcg@10"


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


@dataclass
class SASRecTask:
    """SASRec's part in the shared loop: shuffled training windows, its next-item loss, validation NDCG@10."""

    model: SASRec
    inputs: torch.Tensor
    targets: torch.Tensor
    validation: EvalExamples
    cfg: TrainConfig
    device: torch.device

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.cfg.seed)  # shuffling and negative sampling
        self.size = len(self.inputs)

    def batches(self, batch_size: int, shard: tuple[int, int]) -> Iterator[torch.Tensor]:
        return shuffled_index_batches(self.size, batch_size, self.generator, shard)

    def loss(self, idx: torch.Tensor, progress: float) -> StepLoss:
        inputs, targets = self.inputs[idx].to(self.device), self.targets[idx].to(self.device)
        return StepLoss(self.model.loss(inputs, targets, self.generator), len(idx), {})

    def end_epoch(self, epoch: int, train_loss: float) -> None:
        pass

    def validate(self, replica: Replica) -> dict[str, float]:
        return evaluate_sasrec(self.model, self.validation, self.cfg.eval_batch_size)


def train_sasrec(
    split: LeaveOneOutSplit, model_config: SASRecConfig, config: TrainConfig, model: SASRec | None = None
) -> TrainResult:
    """Train SASRec on ``split.train_sequences``, selecting the epoch with the best validation NDCG@10.

    ``model``: train this (e.g. a subclass with an extra loss term, built after seeding) instead of a fresh SASRec.
    """
    if model_config.num_items != split.num_items:
        raise ValueError(f"model has {model_config.num_items} items, split has {split.num_items}")
    inputs, targets = training_windows(split.train_sequences, model_config.max_len)

    def build(device: torch.device) -> SASRecTask:
        trained = (model if model is not None else SASRec(model_config)).to(device)
        return SASRecTask(trained, inputs, targets, split.validation, config, device)

    task, report = fit(build, config, Selection(SELECTION_METRIC, maximise=True), name="sasrec")
    history = [EpochLog(r.epoch + 1, r.train_loss, r.seconds, r.validation) for r in report.history]
    return TrainResult(task.model, report.best_epoch + 1, report.best_validation, history, report.stopped_by)


def save_sasrec(model: SASRec, path: Path) -> None:
    """Write weights and config together so the checkpoint rebuilds the same model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, path)


def load_sasrec(path: Path, device: str | None = None) -> SASRec:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = SASRec(SASRecConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(pick_device(device)).eval()
