"""Training of the generative recommender, end to end: stage 1, semantic IDs, the generator, and its run folder.

1. Item embeddings: MiniLM title embeddings; a plain SASRec's item table (``collab`` / ``concat``); a SASRec
   trained with the alignment loss (``prorec``, :mod:`recsys.alignment`).
2. Semantic IDs of the variant's embedding (:mod:`recsys.semantic_ids`, :mod:`recsys.quantizer`).
3. The generator (:mod:`recsys.generator`) trained on every next-item transition of the training sequences (the
   last ``max_history`` items before it), with stage-2 distillation for ``prorec``; selected on validation
   NDCG@10 of its constrained beam search over a fixed sample of validation users, early stopping on it.

A run folder holds ``run.json`` (configs, metrics, timings, data fingerprint), ``generator.pt``, ``codes.npy``,
``item_ids.npy`` (raw id of every dense id), ``embeddings.npz`` (what stage 1 produced, so that the generator can
be retrained or tuned without redoing it) and ``titles.json`` when titles are known.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arcast_core.checkpoint import MAY_CHANGE
from arcast_core.files import atomic_write, atomic_write_text, binary_writer
from arcast_core.runtime import pick_device
from arcast_core.training import Replica, Selection, StepLoss, TrainConfig, fit
from arcast_core.trie import PrefixTrie
from recsys.alignment import AlignmentConfig, alignment_report, collaborative_embeddings, train_aligned_sasrec
from recsys.generator import (
    DistillationTargets,
    Generator,
    GeneratorConfig,
    recommend,
    token_table,
    user_buckets,
)
from recsys.metrics import metrics_from_ranks, target_ranks_from_ranked_lists
from recsys.models.sasrec import SASRecConfig
from recsys.quantizer import CodeStats, QuantizerConfig, SemanticIds
from recsys.semantic_ids import NEEDS, ItemEmbeddings, build_semantic_ids, check_variant, distillation_embeddings
from recsys.split import EvalExamples, LeaveOneOutSplit, leave_one_out, left_pad
from recsys.training import TrainResult, train_sasrec

SELECTION_METRIC = "ndcg@10"
EVAL_KS = (5, 10, 20)
RUN_FILE = "run.json"
MODEL_FILE = "generator.pt"
CODES_FILE = "codes.npy"
ITEM_IDS_FILE = "item_ids.npy"
EMBEDDINGS_FILE = "embeddings.npz"
TITLES_FILE = "titles.json"

# --- configuration ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage1Config:
    """The SASRec(s) giving collaborative embeddings; ``alignment`` applies to the ``prorec`` one."""

    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    patience: int = 3
    max_seconds: float | None = None
    budget_clock: str = "wall"  # what max_seconds counts, as GeneratorTrainConfig.budget_clock
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)


@dataclass(frozen=True)
class GeneratorTrainConfig:
    """How the generator trains and is selected.

    Two ways to count: by epochs (``eval_steps`` 0: validate after every ``eval_every`` passes over the training
    transitions, ``patience`` validations without improvement stop it, ``epochs`` passes at most), or by steps
    (``eval_steps`` > 0: validate every ``eval_steps`` optimiser steps, stop after ``patience_steps`` steps without
    improvement or ``max_steps`` steps). The schedule (``lr_schedule`` after ``warmup_steps`` of linear warm-up)
    is stepped per optimiser step either way; "inverse_sqrt" is TIGER's. ``max_seconds`` is a wall-clock budget,
    checked after each validation round. ``eval_users``: the fixed sample of validation users selection runs on
    (0: all of them); on Beauty NDCG@10 on 1,000 users moves by about 30% between rounds on noise alone.
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    lr_schedule: str = "constant"  # "constant", "inverse_sqrt", "cosine" (over max_steps or the epochs)
    warmup_steps: int = 0
    patience: int = 3
    eval_every: int = 1
    eval_steps: int = 0  # > 0: count in steps (see the class docstring)
    max_steps: int = 0  # with eval_steps: the most optimiser steps (0: epochs x one pass, rounded to eval_steps)
    patience_steps: int = 0  # with eval_steps: steps without improvement before stopping (0: patience rounds)
    eval_users: int = 2000  # validation users the selection beam search runs on (fixed sample); 0: all
    beam_width: int = 20
    distill_weight: float = 0.0  # stage 2 (prorec): weight of the distillation terms against the code loss
    distill_temperature: float = 0.1
    seed: int = 0
    device: str | None = None
    max_seconds: float | None = None  # budget for the generator; checked after each validation
    budget_clock: str = "wall"  # what max_seconds counts: "wall" or "cpu" (this process's CPU time: the same
    # training whatever else runs on a shared machine)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "eval_every", "beam_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"GeneratorTrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_users", "eval_steps", "max_steps", "patience_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"GeneratorTrainConfig.{name} must not be negative, got {getattr(self, name)}")
        if self.budget_clock not in ("wall", "cpu"):
            raise ValueError(f"budget_clock must be 'wall' or 'cpu', got {self.budget_clock!r}")
        if self.lr_schedule not in ("constant", "inverse_sqrt", "cosine"):
            raise ValueError(f"lr_schedule must be constant, inverse_sqrt or cosine, got {self.lr_schedule!r}")

    def rounds(self, steps_per_epoch: int) -> int:
        """Validation rounds of ``eval_steps`` steps at most (by steps), or the epochs (by epochs)."""
        if not self.eval_steps:
            return self.epochs
        steps = self.max_steps or self.epochs * steps_per_epoch
        return max(1, math.ceil(steps / self.eval_steps))

    def training(self, steps_per_epoch: int = 1, checkpoint: Path | None = None) -> TrainConfig:
        """The shared loop's settings: AdamW, gradients clipped to norm 1. Counting by steps, the loop's "epoch"
        is one validation round of ``eval_steps`` steps. ``checkpoint``: the loop's resumable state, written after
        every round (``arcast_core.checkpoint``)."""
        patience = self.patience
        if self.eval_steps and self.patience_steps:
            patience = max(1, math.ceil(self.patience_steps / self.eval_steps))
        return TrainConfig(
            epochs=self.rounds(steps_per_epoch),
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            lr_schedule=self.lr_schedule,  # type: ignore[arg-type]
            warmup_steps=self.warmup_steps,
            patience=patience,
            eval_every=1 if self.eval_steps else self.eval_every,
            grad_clip=1.0,
            seed=self.seed,
            device=self.device,
            max_seconds=self.max_seconds,
            budget_clock=self.budget_clock,  # type: ignore[arg-type]
            progress=self.progress,
            checkpoint=None if checkpoint is None else str(checkpoint),
        )


@dataclass(frozen=True)
class GeneratorShape:
    """The generator's size (its code levels come from the semantic IDs)."""

    d_model: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.1
    encoder_unit: str = "token"  # "item": one encoder position per history item (see GeneratorConfig)
    user_buckets: int = 0  # > 0: TIGER's hashed user token (training and torch evaluation; not exportable yet)


@dataclass(frozen=True)
class PipelineConfig:
    variant: str = "prorec"
    max_history: int = 20
    stage1: Stage1Config = field(default_factory=Stage1Config)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    generator: GeneratorShape = field(default_factory=GeneratorShape)
    train: GeneratorTrainConfig = field(default_factory=GeneratorTrainConfig)

    def __post_init__(self) -> None:
        check_variant(self.variant)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> PipelineConfig:
        stage1 = dict(payload.get("stage1", {}))
        stage1["alignment"] = AlignmentConfig(**stage1.get("alignment", {}))
        return cls(
            variant=payload.get("variant", "prorec"),
            max_history=payload.get("max_history", 20),
            stage1=Stage1Config(**stage1),
            quantizer=QuantizerConfig.from_dict(payload.get("quantizer", {})),
            generator=GeneratorShape(**payload.get("generator", {})),
            train=GeneratorTrainConfig(**payload.get("train", {})),
        )


# --- data ------------------------------------------------------------------------------------------------------


def sequences_fingerprint(sequences: dict[int, list[int]]) -> str:
    """sha256 of the interaction data in a canonical form: what the model was trained and evaluated on."""
    digest = hashlib.sha256()
    for user in sorted(sequences):
        digest.update(f"{user}:{' '.join(map(str, sequences[user]))}\n".encode())
    return digest.hexdigest()


def popular_items_slice(sequences: dict[int, list[int]], top_items: int, max_users: int) -> dict[int, list[int]]:
    """Sequences restricted to the ``top_items`` most interacted items; the first ``max_users`` users keeping >= 3.

    A dense subset on which models learn within seconds: for tests and quick runs, never for reported figures.
    """
    counts = Counter(item for seq in sequences.values() for item in seq)
    kept_items = {item for item, _ in counts.most_common(top_items)}
    out: dict[int, list[int]] = {}
    for user, seq in sequences.items():
        kept = [item for item in seq if item in kept_items]
        if len(kept) >= 3:
            out[user] = kept
        if len(out) == max_users:
            break
    return out


def load_sequences(spec: dict[str, Any], data_dir: str | None = None) -> dict[int, list[int]]:
    """The interaction sequences a data spec names: ``{"dataset": name, "slice": None | {top_items, max_users}}``.

    Runs and artifacts record their spec, so evaluation and tuning rebuild exactly the data they were trained on.
    """
    from arcast_core.data_dir import find_data_dir
    from recsys.data import load_dataset

    sequences = load_dataset(spec["dataset"], find_data_dir(data_dir)).sequences
    if spec.get("slice"):
        sequences = popular_items_slice(sequences, spec["slice"]["top_items"], spec["slice"]["max_users"])
    return sequences


def training_examples(sequences: Sequence[np.ndarray], max_history: int) -> tuple[np.ndarray, np.ndarray]:
    """Every next-item transition: (histories (n, max_history) left-padded dense ids, targets (n,))."""
    histories: list[np.ndarray] = []
    targets: list[int] = []
    for seq in sequences:
        for t in range(1, len(seq)):
            histories.append(seq[max(0, t - max_history) : t])
            targets.append(int(seq[t]))
    if not targets:
        raise ValueError("no training transitions: every training sequence has fewer than 2 items")
    return left_pad(histories, max_history), np.asarray(targets, dtype=np.int64)


def training_users(sequences: Sequence[np.ndarray], user_ids: np.ndarray) -> np.ndarray:
    """The user of each transition :func:`training_examples` yields, in the same order."""
    return np.repeat(np.asarray(user_ids, dtype=np.int64), [max(len(seq) - 1, 0) for seq in sequences])


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar history length (sorted within pools of 50 batches): far less padding to encode."""
    order = torch.randperm(len(lengths), generator=generator).numpy()
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in shuffle]


# --- the generator's training ----------------------------------------------------------------------------------


@dataclass
class GeneratorFit:
    model: Generator
    best_epoch: int
    best_validation: dict[str, float]
    history: list[dict[str, Any]]
    stopped_by: str
    seconds: float
    steps: int = 0  # optimiser steps taken
    best_step: int = 0  # the step of the selected weights


@dataclass(frozen=True)
class CodeIndex:
    """What a model needs to turn dense ids into tokens and codes back into items."""

    ids: SemanticIds
    tokens: np.ndarray  # (n_items + 1, L) token ids, row 0 padding
    trie: PrefixTrie

    @classmethod
    def build(cls, ids: SemanticIds, config: GeneratorConfig) -> CodeIndex:
        return cls(ids, token_table(ids.codes, config), PrefixTrie.from_codes(ids.codes, ids.level_sizes))


def evaluate_generator(
    model: Generator,
    index: CodeIndex,
    examples: EvalExamples,
    beam_width: int = 20,
    ks: Sequence[int] = EVAL_KS,
    exclude_history: bool = False,
    users: np.ndarray | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Recall/NDCG@K of the torch beam search on ``examples`` (or the rows ``users`` of it), full item ranking.

    The published protocol does not mask the history (``exclude_history=False``); K above ``beam_width`` cannot be
    reported (the search returns ``beam_width`` items) and is left out.
    """
    ks = [k for k in ks if k <= beam_width]
    rows = np.arange(len(examples)) if users is None else np.asarray(users)
    histories = examples.histories[rows]
    was_training = model.training
    try:
        result = recommend(
            model,
            histories,
            index.tokens,
            index.trie,
            max(ks),
            beam_width,
            exclude_history,
            batch_size=batch_size,
            user_ids=examples.user_ids[rows],
        )
    finally:
        model.train(was_training)
    ranks = target_ranks_from_ranked_lists(
        result.items, examples.targets[rows], max(ks), histories, exclude_history=exclude_history
    )
    return metrics_from_ranks(ranks, ks)


@dataclass
class GeneratorTask:
    """The generator's part in the shared loop: length-bucketed batches of transitions, the code loss (plus the
    distillation terms), and validation NDCG@10 of the beam search on a fixed sample of validation users."""

    model: Generator
    index: CodeIndex
    histories: np.ndarray
    targets: np.ndarray
    distill: DistillationTargets | None
    validation: EvalExamples
    config: GeneratorTrainConfig
    device: torch.device
    users: np.ndarray | None = None  # each transition's user bucket (a generator with a user token)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.config.seed)  # the batches' order
        self.lengths = (self.histories != 0).sum(axis=1)
        # Counting by steps, the shared loop's "epoch" is one validation round of eval_steps batches, drawn from an
        # endless stream of shuffled passes over the transitions.
        steps = self.config.eval_steps
        self.size = steps * self.config.batch_size if steps else len(self.targets)
        # The pass being drawn from (by steps), the generator's state before it was shuffled, and how many of its
        # batches are used: what a resumed run needs to go on mid-pass exactly where it stopped.
        self._pass: list[np.ndarray] = []
        self._pass_seed_state: torch.Tensor | None = None
        self._used = 0
        self._batch_size = self.config.batch_size
        self.tokens = torch.from_numpy(self.index.tokens).to(self.device)
        ids = self.index.ids
        padded = np.vstack([np.zeros((1, ids.codes.shape[1]), np.int64), ids.codes])
        self.codes = torch.from_numpy(padded).to(self.device)
        sample = np.random.default_rng(self.config.seed)
        wanted = self.config.eval_users or len(self.validation)
        users = sample.choice(len(self.validation), min(wanted, len(self.validation)), False)
        self.eval_users = np.sort(users)

    def _new_pass(self) -> None:
        self._pass_seed_state = self.generator.get_state()
        self._pass = length_bucketed_batches(self.lengths, self._batch_size, self.generator)
        self._used = 0

    def batches(self, batch_size: int, shard: tuple[int, int]) -> list[np.ndarray]:
        rank, world = shard
        self._batch_size = batch_size
        if self.config.eval_steps:  # the next eval_steps batches of an endless stream of shuffled passes
            chosen: list[np.ndarray] = []
            while len(chosen) < self.config.eval_steps:
                if self._used == len(self._pass):
                    self._new_pass()
                take = min(self.config.eval_steps - len(chosen), len(self._pass) - self._used)
                chosen.extend(self._pass[self._used : self._used + take])
                self._used += take
        else:
            chosen = length_bucketed_batches(self.lengths, batch_size, self.generator)
        return [batch[rank::world] for batch in chosen]

    def resume_state(self) -> dict[str, Any] | None:
        """Where the stream of passes stands (by steps; the checkpoint's part, see ``arcast_core.checkpoint``)."""
        if self._pass_seed_state is None:
            return None
        return {"pass_seed_state": self._pass_seed_state, "used": self._used, "batch_size": self._batch_size}

    def resume_from(self, state: dict[str, Any]) -> None:
        """Draw the pass the stopped run was in again (same generator state, same batches) and skip what it used."""
        self._batch_size = state["batch_size"]
        self.generator.set_state(state["pass_seed_state"])
        self._new_pass()
        self._used = state["used"]

    def loss(self, batch: np.ndarray, progress: float) -> StepLoss:
        model, codes = self.model, self.codes
        hist = torch.from_numpy(self.histories[batch]).to(self.device)
        first = int((hist != 0).any(dim=0).nonzero()[0])  # bucketed: drop the all-padding columns
        hist = hist[:, first:]
        target = torch.from_numpy(self.targets[batch]).to(self.device)
        users = None if self.users is None else torch.from_numpy(self.users[batch]).to(self.device)
        memory, keep = model.encode(self.tokens[hist].flatten(1), users)
        hidden = model.decode(model.cross_keys_values(memory), keep, codes[target])
        parts = {"codes": model.code_loss(hidden, codes[target])}
        if self.distill is not None:
            parts.update(model.distillation_loss(memory, hidden, hist, target, self.distill))
        distill_terms = [v for k, v in parts.items() if k != "codes"]
        loss = parts["codes"] + self.config.distill_weight * (
            torch.stack(distill_terms).sum() if distill_terms else torch.zeros((), device=self.device)
        )
        return StepLoss(loss, len(batch), parts)

    def end_epoch(self, epoch: int, train_loss: float) -> None:
        pass

    def validate(self, replica: Replica) -> dict[str, float]:
        return evaluate_generator(
            self.model, self.index, self.validation, self.config.beam_width, users=self.eval_users
        )


def train_generator(
    split: LeaveOneOutSplit,
    ids: SemanticIds,
    shape: GeneratorShape,
    config: GeneratorTrainConfig,
    distill: DistillationTargets | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Path | None = None,
) -> GeneratorFit:
    """Train on every training transition, selecting the epoch with the best validation NDCG@10.

    ``on_epoch(epoch, validation)`` runs after each evaluation (Optuna's pruning hook: it may raise).
    ``checkpoint``: a file the run's state is written to after every validation round; started again with it (and
    the same ids, shape and settings: the caller's to keep, see ``train_pipeline``), the run goes on from there.
    """
    use_semantic = distill is not None and distill.semantic is not None and config.distill_weight > 0
    use_collab = distill is not None and distill.collaborative is not None and config.distill_weight > 0
    model_config = GeneratorConfig(
        level_sizes=ids.level_sizes,
        max_history=split.max_history,
        d_model=shape.d_model,
        heads=shape.heads,
        encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers,
        d_ff=shape.d_ff,
        dropout=shape.dropout,
        encoder_unit=shape.encoder_unit,  # type: ignore[arg-type]
        user_buckets=shape.user_buckets,
        semantic_dim=int(distill.semantic.shape[1]) if use_semantic else 0,  # type: ignore[union-attr]
        collaborative_dim=int(distill.collaborative.shape[1]) if use_collab else 0,  # type: ignore[union-attr]
    )
    histories, targets = training_examples(split.train_sequences, split.max_history)
    users = None
    if shape.user_buckets:
        users = user_buckets(training_users(split.train_sequences, split.user_ids), shape.user_buckets)

    def build(device: torch.device) -> GeneratorTask:
        model = Generator(model_config).to(device)
        targets_d = None
        if use_semantic or use_collab:
            assert distill is not None
            targets_d = DistillationTargets(
                semantic=distill.semantic.to(device) if use_semantic else None,  # type: ignore[union-attr]
                collaborative=distill.collaborative.to(device) if use_collab else None,  # type: ignore[union-attr]
                temperature=config.distill_temperature,
            )
        index = CodeIndex.build(ids, model_config)
        return GeneratorTask(model, index, histories, targets, targets_d, split.validation, config, device, users)

    hook = None if on_epoch is None else lambda epoch, validation: on_epoch(epoch + 1, validation)
    selection = Selection(SELECTION_METRIC, maximise=True)
    steps_per_epoch = math.ceil(len(targets) / config.batch_size)
    task, report = fit(build, config.training(steps_per_epoch, checkpoint), selection, hook, name="generator")
    round_steps = config.eval_steps or steps_per_epoch
    history: list[dict[str, Any]] = []
    for r in report.history:
        log: dict[str, Any] = {
            "loss": r.train_loss,
            **r.terms,
            "epoch": r.epoch + 1,
            "steps": (r.epoch + 1) * round_steps,
            "lr": r.lr,
            "seconds": round(r.seconds, 2),
        }
        if r.validation is not None:
            log["validation"] = r.validation
        history.append(log)
    return GeneratorFit(
        task.model,
        report.best_epoch + 1,
        report.best_validation,
        history,
        report.stopped_by,
        report.seconds,
        steps=report.epochs_run * round_steps,
        best_step=(report.best_epoch + 1) * round_steps,
    )


# --- stage 1 ---------------------------------------------------------------------------------------------------


def stage1_train_config(config: Stage1Config, seed: int, progress: bool, checkpoint: Path | None = None) -> TrainConfig:
    """The shared loop's settings for a stage-1 SASRec (constant rate; the budget on ``config.budget_clock``);
    ``checkpoint``: its resumable state after every epoch."""
    return TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        lr_schedule="constant",
        patience=config.patience,
        seed=seed,
        eval_batch_size=1024,
        max_seconds=config.max_seconds,
        budget_clock=config.budget_clock,  # type: ignore[arg-type]
        progress=progress,
        checkpoint=None if checkpoint is None else str(checkpoint),
    )


def fit_stage1_sasrec(
    split: LeaveOneOutSplit,
    config: Stage1Config,
    semantic: np.ndarray | None,
    seed: int,
    progress: bool,
    checkpoint: Path | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """A plain SASRec (``semantic`` None) or the aligned one, trained as stage 1 trains it; the fit and a report."""
    model_config = SASRecConfig(
        num_items=split.num_items,
        max_len=split.max_history,
        hidden=config.hidden,
        num_layers=config.layers,
        num_heads=config.heads,
        dropout=config.dropout,
        loss="ce",
    )
    train_config = stage1_train_config(config, seed, progress, checkpoint)
    started = time.monotonic()
    if semantic is None:
        result = train_sasrec(split, model_config, train_config)
    else:
        result = train_aligned_sasrec(split, semantic, model_config, train_config, config.alignment)
    report = {
        "aligned": semantic is not None,
        "validation": result.best_validation,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_by": result.stopped_by,
        "train_seconds": round(time.monotonic() - started, 1),
        "train_loss_per_epoch": [round(log.train_loss, 4) for log in result.history],
        "parameters": sum(p.numel() for p in result.model.parameters()),
    }
    return result, report


def build_item_embeddings(
    split: LeaveOneOutSplit,
    variant: str,
    config: Stage1Config,
    semantic: np.ndarray | None,
    seed: int = 0,
    progress: bool = False,
    checkpoints: Path | None = None,
) -> tuple[ItemEmbeddings, dict[str, Any]]:
    """The embeddings ``variant`` needs (training the SASRec(s) it needs); ``semantic``: title embeddings.
    ``checkpoints``: each SASRec's resumable state goes to this path with ``-collaborative.pt`` / ``-aligned.pt``."""

    def sasrec_embeddings(aligned_to: np.ndarray | None, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        checkpoint = None if checkpoints is None else checkpoints.with_name(f"{checkpoints.name}-{name}.pt")
        result, report = fit_stage1_sasrec(split, config, aligned_to, seed, progress, checkpoint)
        return collaborative_embeddings(result.model), report

    needs = NEEDS[check_variant(variant)]
    if "semantic" in needs and semantic is None:
        raise ValueError(f"variant {variant!r} needs item titles, which this dataset does not have")
    reports: dict[str, Any] = {}
    collaborative = aligned = None
    if "collaborative" in needs:
        collaborative, reports["collaborative"] = sasrec_embeddings(None, "collaborative")
    if "aligned" in needs:
        aligned, reports["aligned"] = sasrec_embeddings(semantic, "aligned")
        reports["aligned"]["alignment"] = config.alignment.as_dict()
        reports["aligned"]["agreement_with_titles"] = alignment_report(aligned, semantic)  # type: ignore[arg-type]
    return ItemEmbeddings(semantic=semantic, collaborative=collaborative, aligned=aligned), reports


# --- the whole pipeline and its run folder ---------------------------------------------------------------------


@dataclass
class PRORecRun:
    model: Generator
    ids: SemanticIds
    item_ids: np.ndarray  # raw id of each dense id; [0] = -1
    embeddings: ItemEmbeddings
    info: dict[str, Any]
    titles: list[str] | None = None  # title of each dense id; [0] = ""

    @property
    def variant(self) -> str:
        return str(self.info["variant"])

    def code_index(self) -> CodeIndex:
        return CodeIndex.build(self.ids, self.model.config)


def distillation_targets(variant: str, embeddings: ItemEmbeddings, temperature: float) -> DistillationTargets | None:
    semantic, collaborative = distillation_embeddings(variant, embeddings)
    if semantic is None and collaborative is None:
        return None

    def table(x: np.ndarray | None) -> torch.Tensor | None:
        if x is None:
            return None
        return torch.from_numpy(np.vstack([np.zeros((1, x.shape[1]), np.float32), x]))

    return DistillationTargets(table(semantic), table(collaborative), temperature)


def model_size(model: Generator) -> dict[str, int]:
    params = model.serving_parameters()
    return {"parameters": params, "bytes_fp32": 4 * params}


def train_pipeline(
    dataset: str,
    sequences: dict[int, list[int]],
    config: PipelineConfig,
    titles: dict[int, str] | None = None,
    semantic: np.ndarray | None = None,
    embeddings: ItemEmbeddings | None = None,
    ids: SemanticIds | None = None,
    evaluate_full: bool | str = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    resume_dir: Path | None = None,
) -> PRORecRun:
    """Stage 1 (unless ``embeddings`` are given), semantic IDs (unless ``ids``), then the generator.

    ``semantic``: title embeddings in dense-id order (computed from ``titles`` when absent and needed).
    ``evaluate_full``: also report metrics on every validation and test user (the published protocol); "test":
    on every test user only. ``resume_dir``: stage 1's embeddings (and its SASRecs' checkpoints), the semantic IDs
    and the generator's checkpoint are kept there, each under a key of everything it depends on, so a run started
    again with the same data and settings reuses what was finished and goes on from the last epoch or validation
    round of what was not (a changed setting starts that part afresh beside the other).
    """
    split = leave_one_out(sequences, max_history=config.max_history)
    fingerprint = sequences_fingerprint(sequences)  # the data's key, for the run and its kept files
    timings: dict[str, float] = {}
    stage1_reports: dict[str, Any] = {}
    if embeddings is None:
        if semantic is None and titles is not None and "semantic" in NEEDS[config.variant]:
            from recsys.text_embeddings import embed_item_titles

            semantic = embed_item_titles(titles, split.item_map.raw_ids[1:]).vectors
        embeddings, stage1_reports = kept_item_embeddings(split, config, semantic, fingerprint, resume_dir)
        timings["stage1_seconds"] = stage1_reports.pop("seconds")
    quantiser_report: dict[str, Any] = {}
    if ids is None:
        ids, quantiser_report = kept_semantic_ids(config.variant, embeddings, config.quantizer, resume_dir)
        timings["quantizer_seconds"] = quantiser_report["seconds"]
    if len(ids.codes) != split.num_items:
        raise ValueError(f"{len(ids.codes)} item codes for {split.num_items} items")
    distill = distillation_targets(config.variant, embeddings, config.train.distill_temperature)
    checkpoint = None
    if resume_dir is not None:
        checkpoint = generator_checkpoint(resume_dir, config, ids, embeddings, fingerprint)
    fit = train_generator(split, ids, config.generator, config.train, distill, on_epoch, checkpoint)
    timings["generator_seconds"] = round(fit.seconds, 1)
    metrics: dict[str, Any] = {"validation_sample": fit.best_validation}
    if evaluate_full:
        t0 = time.monotonic()
        index = CodeIndex.build(ids, fit.model.config)
        beam = config.train.beam_width
        if evaluate_full != "test":
            metrics["validation"] = evaluate_generator(fit.model, index, split.validation, beam)
        metrics["test"] = evaluate_generator(fit.model, index, split.test, beam)
        timings["evaluation_seconds"] = round(time.monotonic() - t0, 1)
    info = {
        "dataset": dataset,
        "variant": config.variant,
        "config": config.as_dict(),
        "model_config": fit.model.config.as_dict(),
        "data_fingerprint": fingerprint,
        "users": len(split.test),
        "n_items": split.num_items,
        "codes": quantiser_report or {"reused": True, **ids.stats.as_dict()},
        "stage1": stage1_reports,
        "fit": {
            "best_epoch": fit.best_epoch,
            "epochs_run": len(fit.history),
            "steps": fit.steps,
            "best_step": fit.best_step,
            "eval_users": min(config.train.eval_users or len(split.validation), len(split.validation)),
            "stopped_by": fit.stopped_by,
            "history": fit.history,
        },
        "metrics": metrics,
        "timings": timings,
        "model_size": model_size(fit.model),
        "protocol": "leave-one-out, full ranking over all items by constrained beam search, history not masked",
    }
    title_list = None
    if titles is not None:
        title_list = ["", *(titles.get(int(raw), "") for raw in split.item_map.raw_ids[1:])]
    return PRORecRun(fit.model, ids, split.item_map.raw_ids.copy(), embeddings, info, title_list)


def content_key(*parts: str | bytes) -> str:
    """A short digest of ``parts``: what names a file kept for resumption by everything its content depends on."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _embeddings_bytes(embeddings: ItemEmbeddings) -> bytes:
    arrays = {k: v for k, v in asdict(embeddings).items() if v is not None}
    return b"".join(k.encode() + np.ascontiguousarray(v, dtype=np.float32).tobytes() for k, v in sorted(arrays.items()))


def _semantic_ids(codes: np.ndarray, level_sizes: Sequence[int], stats: dict[str, Any]) -> SemanticIds:
    stats = {**stats, "level_sizes": tuple(stats["level_sizes"])}
    return SemanticIds(codes=codes, level_sizes=tuple(level_sizes), stats=CodeStats(**stats))


def kept_semantic_ids(
    variant: str, embeddings: ItemEmbeddings, config: QuantizerConfig, folder: Path | None
) -> tuple[SemanticIds, dict[str, Any]]:
    """``build_semantic_ids``, kept in ``folder`` (when given) under a key of the variant, the quantiser's
    settings and the embeddings: built once, read back by every later run with the same inputs. The report
    carries the build's ``seconds``."""
    path = None
    if folder is not None:
        settings = json.dumps(config.as_dict(), sort_keys=True, default=_json_default)
        path = Path(folder) / f"semantic-ids-{content_key(variant, settings, _embeddings_bytes(embeddings))}.npz"
        if path.is_file():
            with np.load(path) as data:
                kept = json.loads(str(data["report"]))
                ids = _semantic_ids(data["codes"], kept["level_sizes"], kept["stats"])
            return ids, {**kept["report"], "read_from": path.name}
    started = time.monotonic()
    ids, report = build_semantic_ids(variant, embeddings, config)
    report = {**report, "seconds": round(time.monotonic() - started, 1)}
    if path is not None:
        kept = {"level_sizes": list(ids.level_sizes), "stats": ids.stats.as_dict(), "report": report}
        text = json.dumps(kept, default=_json_default)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, binary_writer(lambda handle: np.savez(handle, codes=ids.codes, report=np.array(text))))
    return ids, report


def kept_item_embeddings(
    split: LeaveOneOutSplit,
    config: PipelineConfig,
    semantic: np.ndarray | None,
    data_fingerprint: str,
    folder: Path | None,
) -> tuple[ItemEmbeddings, dict[str, Any]]:
    """``build_item_embeddings`` for ``config``, kept in ``folder`` (when given) under a key of the variant, stage
    1's settings, the seed, the data and ``semantic``; its SASRecs checkpoint beside. The reports carry ``seconds``."""
    path = None
    if folder is not None:
        settings = json.dumps(asdict(config.stage1), sort_keys=True, default=_json_default)
        parts = (config.variant, settings, str(config.train.seed), str(config.max_history))
        text = b"" if semantic is None else np.ascontiguousarray(semantic, dtype=np.float32).tobytes()
        path = Path(folder) / f"stage1-{content_key(*parts, data_fingerprint, text)}.npz"
        if path.is_file():
            with np.load(path) as data:
                reports = json.loads(str(data["reports"]))
                arrays = {k: data[k] for k in data.files if k != "reports"}
            return ItemEmbeddings(semantic=semantic, **arrays), {**reports, "read_from": path.name}
        path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    embeddings, reports = build_item_embeddings(
        split,
        config.variant,
        config.stage1,
        semantic,
        config.train.seed,
        config.train.progress,
        None if path is None else path.with_suffix(""),
    )
    reports = {**reports, "seconds": round(time.monotonic() - started, 1)}
    if path is not None:
        arrays = {k: v for k, v in asdict(embeddings).items() if v is not None and k != "semantic"}
        text = json.dumps(reports, default=_json_default)
        atomic_write(path, binary_writer(lambda handle: np.savez(handle, reports=np.array(text), **arrays)))
    return embeddings, reports


def generator_checkpoint(
    folder: Path, config: PipelineConfig, ids: SemanticIds, embeddings: ItemEmbeddings, data_fingerprint: str
) -> Path:
    """The generator's checkpoint file in ``folder``, named by everything the run depends on: the settings (but
    those a resumption may change: the budget, the device, progress bars), the codes, the embeddings that the
    distillation reads and the data."""
    settings = config.as_dict()
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in MAY_CHANGE}
    key = content_key(
        json.dumps(settings, sort_keys=True, default=_json_default),
        np.ascontiguousarray(ids.codes, dtype=np.int64).tobytes(),
        _embeddings_bytes(embeddings),
        data_fingerprint,
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / f"generator-{key}.pt"


def save_run(run: PRORecRun, folder: Path | str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"config": run.model.config.as_dict(), "state_dict": run.model.state_dict()}
    atomic_write(folder / MODEL_FILE, lambda tmp: torch.save(payload, tmp))
    atomic_write(folder / CODES_FILE, binary_writer(lambda handle: np.save(handle, run.ids.codes)))
    atomic_write(folder / ITEM_IDS_FILE, binary_writer(lambda handle: np.save(handle, run.item_ids)))
    arrays = {k: v for k, v in asdict(run.embeddings).items() if v is not None}
    atomic_write(folder / EMBEDDINGS_FILE, binary_writer(lambda handle: np.savez(handle, **arrays)))
    if run.titles is not None:
        atomic_write_text(folder / TITLES_FILE, json.dumps(run.titles))
    info = {**run.info, "level_sizes": list(run.ids.level_sizes), "code_stats": run.ids.stats.as_dict()}
    atomic_write_text(folder / RUN_FILE, json.dumps(info, indent=2, default=_json_default))
    return folder


def load_run(folder: Path | str, device: str | None = "cpu") -> PRORecRun:
    folder = Path(folder)
    if not (folder / RUN_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a run folder (no {RUN_FILE}): `python -m recsys train` writes one")
    info = json.loads((folder / RUN_FILE).read_text())
    payload = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    model = Generator(GeneratorConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model = model.to(pick_device(device)).eval()
    ids = _semantic_ids(np.load(folder / CODES_FILE), info["level_sizes"], info["code_stats"])
    with np.load(folder / EMBEDDINGS_FILE) as data:
        embeddings = ItemEmbeddings(**{k: data[k] for k in data.files})
    titles = json.loads((folder / TITLES_FILE).read_text()) if (folder / TITLES_FILE).is_file() else None
    return PRORecRun(model, ids, np.load(folder / ITEM_IDS_FILE), embeddings, info, titles)


def retrain_generator(
    run: PRORecRun, sequences: dict[int, list[int]], config: PipelineConfig, resume_dir: Path | None = None
) -> PRORecRun:
    """A new generator on ``run``'s semantic IDs and embeddings (e.g. with tuned settings); stage 1 is reused.
    ``resume_dir``: the generator's checkpoint, as in ``train_pipeline``."""
    if sequences_fingerprint(sequences) != run.info["data_fingerprint"]:
        raise ValueError("the data differs from the data the run was trained on")
    config = replace(config, variant=run.variant)
    new = train_pipeline(
        run.info["dataset"],
        sequences,
        config,
        embeddings=run.embeddings,
        ids=run.ids,
        evaluate_full=True,
        resume_dir=resume_dir,
    )
    new.titles = run.titles
    new.info["stage1"] = run.info.get("stage1", {})
    new.info["codes"] = run.info.get("codes", {})
    return new


def evaluate_run(
    folder: Path | str,
    split: str = "test",
    data_dir: str | None = None,
    limit: int | None = None,
    exclude_seen: bool = False,
    beam_width: int = 20,
) -> dict[str, Any]:
    """Metrics of a run folder's generator (torch beam search) on the data it records."""
    run = load_run(folder)
    examples, facts = run_examples(run.info, run.item_ids, run.model.config.max_history, split, data_dir)
    users = None if limit is None else np.arange(min(limit, len(examples)))
    metrics = evaluate_generator(run.model, run.code_index(), examples, beam_width, EVAL_KS, exclude_seen, users)
    return {
        "model": str(folder),
        "engine": "torch",
        **facts,
        "split": split,
        "users": len(examples) if users is None else len(users),
        "beam_width": beam_width,
        "exclude_seen": exclude_seen,
        "metrics": metrics,
    }


def run_examples(
    info: dict[str, Any], item_ids: np.ndarray, max_history: int, split: str, data_dir: str | None
) -> tuple[EvalExamples, dict[str, Any]]:
    """The validation (``split`` "val") or test examples of the data a run's ``info`` records, and the report's
    ``dataset`` and ``data_matches_training``; ValueError when the data's items are not the run's."""
    spec = info.get("data", {"dataset": info["dataset"], "slice": None})
    sequences = load_sequences(spec, data_dir)
    data_split = leave_one_out(sequences, max_history=max_history)
    if not np.array_equal(data_split.item_map.raw_ids, item_ids):
        raise ValueError("the data's items differ from the run's: it was trained on other data")
    examples = data_split.validation if split == "val" else data_split.test
    matches = sequences_fingerprint(sequences) == info["data_fingerprint"]
    return examples, {"dataset": spec["dataset"], "data_matches_training": matches}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
