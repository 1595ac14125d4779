"""Item-to-item transitions: the baseline a user fits in seconds before reaching for a sequence model.

Item ``j`` scores ``sum_k decay**k * T[h_k, j]`` over the user's history, most recent first (k = 0), where
``T[a, b]`` counts how often ``b`` directly followed ``a`` in the training sequences; decay 0 is a first-order
Markov chain on the last item. Ties (above all, items no history item ever led to) fall back to popularity. The
decay is chosen on validation NDCG@10 from a short grid, as ``linear`` chooses its ridge penalty. Counts come from
the training part of the split only, so neither validation nor test targets leak into them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recsys.evaluation import evaluate_scorer
from recsys.metrics import DEFAULT_KS
from recsys.split import PADDING_ID, EvalExamples, LeaveOneOutSplit

DECAYS = (0.0, 0.3, 0.6, 1.0)  # 0: the last item alone; 1: every history item counts alike


@dataclass(frozen=True)
class TransitionModel:
    """Transition counts as a CSR matrix over dense ids (row: the earlier item), and popularity for ties."""

    indptr: np.ndarray  # (num_items + 2,)
    indices: np.ndarray  # (nnz,) the following items
    counts: np.ndarray  # (nnz,) float64
    popularity: np.ndarray  # (num_items + 1,) training counts
    decay: float = 0.0

    @classmethod
    def fit(cls, split: LeaveOneOutSplit, decay: float = 0.0) -> TransitionModel:
        size = split.num_items + 1  # dense ids start at 1; 0 is padding
        pairs = [np.stack([seq[:-1], seq[1:]], 1) for seq in split.train_sequences if len(seq) > 1]
        edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
        keys, counts = np.unique(edges[:, 0] * size + edges[:, 1], return_counts=True)  # sorted by (row, column)
        rows, columns = keys // size, keys % size
        indptr = np.zeros(size + 1, np.int64)
        np.add.at(indptr, rows + 1, 1)
        popularity = np.zeros(size, np.float64)
        for seq in split.train_sequences:
            np.add.at(popularity, seq, 1)
        return cls(np.cumsum(indptr), columns, counts.astype(np.float64), popularity, decay)

    def with_decay(self, decay: float) -> TransitionModel:
        return TransitionModel(self.indptr, self.indices, self.counts, self.popularity, decay)

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
        # Popularity scaled below half the smallest weight in use: it orders what the transitions leave tied (above
        # all, the items no history item ever led to) and never outweighs one whole transition count.
        smallest = float(weights[weights > 0].min()) if len(items) else 1.0
        out += self.popularity * (0.5 * smallest / (self.popularity.max() + 1.0))
        out[:, PADDING_ID] = -np.inf
        return out

    def score_batch(self, histories: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.scores(histories.cpu().numpy()), dtype=torch.float64)


def fit_transitions(
    split: LeaveOneOutSplit, decays: Sequence[float] = DECAYS, exclude_history: bool = False
) -> tuple[TransitionModel, dict]:
    """The model with the decay that scores the best validation NDCG@10, and every decay's validation metrics."""
    base = TransitionModel.fit(split)
    tried = {
        d: evaluate_scorer(base.with_decay(d).score_batch, split.validation, exclude_history=exclude_history)
        for d in decays
    }
    best = max(decays, key=lambda d: tried[d]["ndcg@10"])
    return base.with_decay(best), {"decay": best, "validation": {str(d): m for d, m in tried.items()}}


def evaluate_transitions(
    split: LeaveOneOutSplit,
    examples: EvalExamples,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = False,
) -> tuple[dict[str, float], dict]:
    """Fit on the split's training part (decay chosen on validation) and evaluate on ``examples``, full ranking."""
    model, chosen = fit_transitions(split, exclude_history=exclude_history)
    return evaluate_scorer(model.score_batch, examples, ks=ks, exclude_history=exclude_history), chosen
