"""Most-popular baseline: every user gets the items ranked by their training interaction count.

Counts come from the training part of the split only, so neither validation nor test targets leak into them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recsys.evaluation import evaluate_scorer
from recsys.metrics import DEFAULT_KS
from recsys.split import PADDING_ID, EvalExamples, LeaveOneOutSplit


class PopularityModel:
    """Scores item ``d`` by its training count; column 0 (padding) scores -inf."""

    def __init__(self, counts: np.ndarray) -> None:
        self.scores = torch.as_tensor(counts, dtype=torch.float32).clone()
        self.scores[PADDING_ID] = -torch.inf

    @classmethod
    def fit(cls, split: LeaveOneOutSplit) -> PopularityModel:
        counts = np.zeros(split.num_items + 1, dtype=np.int64)
        for seq in split.train_sequences:
            np.add.at(counts, seq, 1)
        return cls(counts)

    def score_batch(self, histories: torch.Tensor) -> torch.Tensor:
        return self.scores.to(histories.device).expand(histories.shape[0], -1)

    def top_k(self, k: int) -> np.ndarray:
        """The k most popular dense ids, best first."""
        return torch.topk(self.scores, k).indices.numpy()


def evaluate_popularity(
    split: LeaveOneOutSplit,
    examples: EvalExamples,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = False,
) -> dict[str, float]:
    """Fit on the split's training part and evaluate on ``examples`` with full ranking."""
    model = PopularityModel.fit(split)
    return evaluate_scorer(model.score_batch, examples, ks=ks, exclude_history=exclude_history)
