"""Item-to-item transitions (sequential rules): the baseline a user fits in seconds before reaching for a sequence
model.

Item ``j`` scores ``sum_k decay**k * T[h_k, j]`` over the user's history, most recent first (k = 0), where
``T[a, b] = sum_d 1/d`` over every time ``b`` followed ``a`` at distance ``d <= window`` in a training sequence
(the "sequential rules" of Ludewig and Jannach, 2018); window 1 and decay 0 is a first-order Markov chain on the
last item. Ties (above all, items no history item ever led to) fall back to popularity. The window and the decay are
chosen on validation NDCG@10 from a short grid, as ``linear`` chooses its ridge penalty. Counts come from the
training part of the split only, so neither validation nor test targets leak into them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from arcast_core.files import atomic_write, binary_writer
from recsys.catalogue_run import (
    evaluation_report,
    is_run_of,
    load_catalogue_run,
    save_catalogue_run,
    titles_by_dense_id,
)
from recsys.evaluation import evaluate_scorer
from recsys.metrics import DEFAULT_KS
from recsys.prorec_training import (
    EVAL_KS,
    sequences_fingerprint,
)
from recsys.split import PADDING_ID, EvalExamples, LeaveOneOutSplit, leave_one_out

if TYPE_CHECKING:
    from serving.artifact import Artifact

DECAYS = (0.0, 0.3, 0.6, 1.0)  # 0: the last item alone; 1: every history item counts alike
WINDOWS = (1, 2, 5, 10)  # how far ahead a following item still counts (1: direct successors only)


@dataclass(frozen=True)
class TransitionModel:
    """Transition weights as a CSR matrix over dense ids (row: the earlier item), and popularity for ties."""

    indptr: np.ndarray  # (num_items + 2,)
    indices: np.ndarray  # (nnz,) the following items
    counts: np.ndarray  # (nnz,) float64: sum of 1/d over the times the item followed at distance d <= window
    popularity: np.ndarray  # (num_items + 1,) training counts
    decay: float = 0.0
    window: int = 1

    @classmethod
    def fit(cls, split: LeaveOneOutSplit, decay: float = 0.0, window: int = 1) -> TransitionModel:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        size = split.num_items + 1  # dense ids start at 1; 0 is padding
        keys, weights = [np.zeros(0, np.int64)], [np.zeros(0)]
        for distance in range(1, window + 1):
            for seq in split.train_sequences:
                if len(seq) > distance:
                    keys.append(seq[:-distance] * size + seq[distance:])
                    weights.append(np.full(len(seq) - distance, 1.0 / distance))
        key, weight = np.concatenate(keys), np.concatenate(weights)
        order = np.argsort(key, kind="stable")  # by (row, column)
        key, weight = key[order], weight[order]
        unique, first = np.unique(key, return_index=True)
        counts = np.add.reduceat(weight, first) if len(key) else np.zeros(0)
        rows, columns = unique // size, unique % size
        indptr = np.zeros(size + 1, np.int64)
        np.add.at(indptr, rows + 1, 1)
        popularity = np.zeros(size, np.float64)
        for seq in split.train_sequences:
            np.add.at(popularity, seq, 1)
        return cls(np.cumsum(indptr), columns, counts, popularity, decay, window)

    def with_decay(self, decay: float) -> TransitionModel:
        return TransitionModel(self.indptr, self.indices, self.counts, self.popularity, decay, self.window)

    def scores(self, histories: np.ndarray) -> np.ndarray:
        """(users, num_items + 1) scores of left-padded histories (users, max_history); padding scores -inf."""
        users, width = histories.shape
        weights = self.decay ** np.arange(width - 1, -1, -1, dtype=np.float64)  # the last column is the latest
        weights = np.where(histories == PADDING_ID, 0.0, np.broadcast_to(weights, histories.shape))
        user, position = np.nonzero(weights)
        items = histories[user, position]
        starts, ends = self.indptr[items], self.indptr[items + 1]
        lengths = ends - starts
        # Every (user, history item) pair expands to that item's row of T: gather all rows at once.
        owner = np.repeat(np.arange(len(items)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        entries = starts[owner] + offsets
        out = np.zeros((users, len(self.popularity)), np.float64)
        np.add.at(out, (user[owner], self.indices[entries]), self.counts[entries] * weights[user, position][owner])
        out += self.tie_break(width)
        out[:, PADDING_ID] = -np.inf
        return out

    def tie_break(self, width: int) -> np.ndarray:
        """Popularity scaled below half the smallest weight one transition can carry in a history of ``width``
        items: it orders what the transitions leave tied (above all, the items no history item ever led to), never
        outweighs one transition, and depends on nothing but the item (a user's ranking is the same in any batch)."""
        smallest = (self.decay ** (width - 1) if self.decay else 1.0) / self.window
        return self.popularity * (0.5 * smallest / (self.popularity.max() + 1.0))

    def tie_order(self) -> np.ndarray:
        """Each dense id's place among equal scores, most popular first (then by dense id): what the served graph's
        float32 scores cannot carry of ``tie_break`` (below a scored item's resolution), the runner applies."""
        order = np.lexsort((np.arange(len(self.popularity)), -self.popularity))
        places = np.empty(len(order), np.int64)
        places[order] = np.arange(len(order))
        return places

    def longest_row(self) -> int:
        """The most items any one item was ever followed by (the width the served graph gathers per history item)."""
        return int(np.diff(self.indptr).max(initial=0))

    def score_batch(self, histories: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.scores(histories.cpu().numpy()), dtype=torch.float64)


def fit_transitions(
    split: LeaveOneOutSplit,
    decays: Sequence[float] = DECAYS,
    windows: Sequence[int] = WINDOWS,
    exclude_history: bool = False,
) -> tuple[TransitionModel, dict[str, Any]]:
    """The model with the window and decay that score the best validation NDCG@10, and the validation metrics of
    every pair tried (keyed ``"window=W decay=D"``, the chosen one's key in ``"setting"``)."""
    tried: dict[str, dict[str, float]] = {}
    best: tuple[float, TransitionModel] | None = None
    for window in windows:
        counted = TransitionModel.fit(split, window=window)
        for decay in decays:
            model = counted.with_decay(decay)
            metrics = evaluate_scorer(model.score_batch, split.validation, exclude_history=exclude_history)
            tried[setting_name(model)] = metrics
            if best is None or metrics["ndcg@10"] > best[0]:
                best = (metrics["ndcg@10"], model)
    assert best is not None, "no window or decay to try"
    model = best[1]
    return model, {"window": model.window, "decay": model.decay, "setting": setting_name(model), "validation": tried}


def setting_name(model: TransitionModel) -> str:
    return f"window={model.window} decay={model.decay}"


def evaluate_transitions(
    split: LeaveOneOutSplit,
    examples: EvalExamples,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = False,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit on the split's training part (window and decay chosen on validation) and evaluate on ``examples``, full
    ranking; and what ``fit_transitions`` chose."""
    model, chosen = fit_transitions(split, exclude_history=exclude_history)
    return evaluate_scorer(model.score_batch, examples, ks=ks, exclude_history=exclude_history), chosen


class TransitionScorer(nn.Module):
    """The served graph: history (B, S) left-padded dense ids, S up to ``max_history`` -> scores (B, n_items + 1),
    column 0 -inf; the same scores as ``TransitionModel.scores`` in float32 (the counts kept as CSR; each history item
    gathers its row at the width of the batch's longest one, masked beyond its own length)."""

    indptr: torch.Tensor
    indices: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor
    weights: torch.Tensor
    tie_break: torch.Tensor

    def __init__(self, model: TransitionModel, max_history: int) -> None:
        super().__init__()
        nnz = len(model.indices)
        # One unused entry when there are no transitions at all: a gather from an empty tensor fails to export.
        indices = model.indices if nnz else np.zeros(1, np.int64)
        counts = model.counts if nnz else np.zeros(1)
        self.register_buffer("indptr", torch.as_tensor(model.indptr, dtype=torch.int64))
        self.register_buffer("indices", torch.as_tensor(indices, dtype=torch.int64))
        self.register_buffer("counts", torch.as_tensor(counts, dtype=torch.float32))
        self.register_buffer("offsets", torch.arange(max(model.longest_row(), 1), dtype=torch.int64))
        weights = model.decay ** np.arange(max_history - 1, -1, -1, dtype=np.float64)
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))
        self.register_buffer("tie_break", torch.as_tensor(model.tie_break(max_history), dtype=torch.float32))

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        users, width = history.shape  # width: any up to max_history (the history's most recent items, left-padded)
        start = self.indptr[history]  # (B, S)
        length = self.indptr[history + 1] - start
        # Gather at the longest row among this batch's history items, not the catalogue's: the same scores, and a
        # user of mid-popular items gathers a fraction of the cells (Beauty's longest row is 991, the median 25).
        longest = torch.clamp(length.max(), min=1).item()  # no int(): non-strict export keeps it symbolic
        torch._check(longest >= 1)
        torch._check(longest <= self.offsets.shape[0])
        offsets = self.offsets[:longest]
        position = start[..., None] + offsets  # (B, S, M)
        inside = offsets < length[..., None]
        position = torch.where(inside, position, torch.zeros_like(position))
        gathered = self.counts[position]
        values = torch.where(inside, gathered, torch.zeros_like(gathered))
        values = values * self.weights[self.weights.shape[0] - width :][None, :, None]
        scores = self.tie_break.expand(users, -1).scatter_add(
            1, self.indices[position].reshape(users, -1), values.reshape(users, -1)
        )
        padding = torch.full_like(scores[:, :1], -torch.inf)
        return torch.cat([padding, scores[:, 1:]], dim=1)


# --- a run folder: what `python -m recsys train --variant transitions` writes and `export` publishes -------------

VARIANT = "transitions"
# Float32-sized cells the graph's gather holds per gathered entry (int64 positions and columns count twice): measured
# 40 to 49 bytes per entry at the peak of Beauty runs (817 users, window 1: 198 MB; 600 users, window 10: 587 MB;
# 2026-12-04).
GATHER_TEMPORARIES = 12
COUNTS_FILE = "transitions.npz"


@dataclass
class TransitionsRun:
    model: TransitionModel
    item_ids: np.ndarray  # raw id of each dense id; [0] = -1
    info: dict[str, Any]
    titles: list[str] | None = None  # title of each dense id; [0] = ""

    @property
    def max_history(self) -> int:
        return int(self.info["max_history"])


def train_transitions_run(
    dataset: str, sequences: dict[int, list[int]], titles: dict[int, str] | None = None, max_history: int = 20
) -> TransitionsRun:
    """Counts from every training sequence, the window and decay chosen on validation NDCG@10; metrics on every
    validation and test user, full ranking, the history not masked (the published protocol)."""
    started = time.monotonic()
    split = leave_one_out(sequences, max_history=max_history)
    model, chosen = fit_transitions(split)
    fitted = time.monotonic()
    test = evaluate_scorer(model.score_batch, split.test, ks=EVAL_KS)
    validation = chosen["validation"][chosen["setting"]]
    info = {
        "dataset": dataset,
        "variant": VARIANT,
        "max_history": max_history,
        "window": model.window,
        "decay": model.decay,
        "validation_by_setting": chosen["validation"],
        "data_fingerprint": sequences_fingerprint(sequences),
        "users": len(split.test),
        "n_items": split.num_items,
        "metrics": {"validation": validation, "test": test},
        "timings": {
            "train_seconds": round(fitted - started, 1),
            "evaluation_seconds": round(time.monotonic() - fitted, 1),
        },
        "model_size": {"transitions": len(model.indices), "longest_row": model.longest_row()},
        "protocol": "leave-one-out, full ranking over all items, history not masked",
    }
    raw_ids = split.item_map.raw_ids.copy()
    return TransitionsRun(model, raw_ids, info, titles_by_dense_id(titles, raw_ids))


def is_transitions_run(folder: Path | str) -> bool:
    return is_run_of(folder, VARIANT)


def save_transitions_run(run: TransitionsRun, folder: Path | str) -> Path:
    m = run.model

    def write_counts(handle: Any) -> None:
        np.savez(handle, indptr=m.indptr, indices=m.indices, counts=m.counts, popularity=m.popularity)

    def write_model(folder: Path) -> None:
        atomic_write(folder / COUNTS_FILE, binary_writer(write_counts))

    return save_catalogue_run(folder, write_model, run.item_ids, run.titles, run.info)


def load_transitions_run(folder: Path | str) -> TransitionsRun:
    folder = Path(folder)
    if not is_transitions_run(folder):
        raise FileNotFoundError(
            f"{folder} is not a transitions run folder (`python -m recsys train --variant transitions`)"
        )
    info, item_ids, titles = load_catalogue_run(folder)
    with np.load(folder / COUNTS_FILE) as arrays:
        model = TransitionModel(
            arrays["indptr"],
            arrays["indices"],
            arrays["counts"],
            arrays["popularity"],
            float(info["decay"]),
            int(info["window"]),
        )
    return TransitionsRun(model, item_ids, info, titles)


def evaluate_transitions_run(
    folder: Path | str,
    split: str = "test",
    data_dir: str | None = None,
    limit: int | None = None,
    exclude_seen: bool = False,
) -> dict[str, Any]:
    """Metrics of a transitions run folder (numpy, full ranking) on the data it records; the report of ``evaluate``."""
    run = load_transitions_run(folder)

    def metrics(examples: EvalExamples, exclude: bool) -> dict[str, float]:
        return evaluate_scorer(run.model.score_batch, examples, ks=EVAL_KS, exclude_history=exclude)

    return evaluation_report(
        folder, run.info, run.item_ids, run.max_history, "numpy", metrics, split, data_dir, limit, exclude_seen
    )


def export_transitions_run(
    run: TransitionsRun,
    store: Path | str,
    name: str,
    version: str | None = None,
    histories: np.ndarray | None = None,
    top_k: int = 10,
) -> Artifact:
    """Publish ``run`` as an ``item_scores`` artifact (``TransitionScorer``) at ``store/name/<version>``; refused
    when onnxruntime's top-k differ from the torch graph's beyond ties (``recsys.item_scores_export``)."""
    from recsys.item_scores_export import publish_item_scores  # onnx and the serving side: only when exporting

    return publish_item_scores(
        TransitionScorer(run.model, run.max_history),
        VARIANT,
        f"item-to-item transitions within {run.model.window} steps (1/distance each), decayed over the history "
        f"(decay {run.model.decay}), popularity for ties",
        run.item_ids,
        run.titles,
        run.info,
        run.max_history,
        store,
        name,
        version,
        histories,
        top_k,
        facts={"window": run.model.window, "decay": run.model.decay, "model_size": run.info.get("model_size")},
        # The gather, at its widest: every history item's row at the longest row's width.
        cells_per_user=GATHER_TEMPORARIES * run.max_history * max(run.model.longest_row(), 1),
        tie_order=run.model.tie_order(),
        narrow_history=True,  # a request's own history length, not max_history: fewer cells gathered
    )
