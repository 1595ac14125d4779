"""Full-ranking evaluation of any scorer on validation or test examples, in batches.

Scores for all users at once would be ``users x items`` floats (22k x 12k on Beauty, about 1 GB), so the scorer
is called per batch and only the target ranks are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from recsys.metrics import DEFAULT_KS, metrics_from_ranks, target_ranks_from_scores
from recsys.split import EvalExamples

# Maps a (batch, max_history) left-padded history tensor to (batch, num_items + 1) scores.
BatchScorer = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate_scorer(
    score_batch: BatchScorer,
    examples: EvalExamples,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = False,
) -> dict[str, float]:
    """Recall@K / NDCG@K of ``score_batch`` over ``examples`` (see :mod:`recsys.metrics` for the conventions)."""
    ranks: list[np.ndarray] = []
    for start in range(0, len(examples), batch_size):
        histories = torch.as_tensor(examples.histories[start : start + batch_size], device=device)
        targets = examples.targets[start : start + batch_size]
        scores = score_batch(histories)
        ranks.append(target_ranks_from_scores(scores, targets, histories, exclude_history=exclude_history))
    return metrics_from_ranks(np.concatenate(ranks), ks)
