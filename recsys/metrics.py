"""Recall@K and NDCG@K with one held-out target per user, from full ranking over all items.

Every model goes through this module so the figures are comparable. Two entry points:

- :func:`target_ranks_from_scores`: a ``(batch, N + 1)`` score matrix whose column ``d`` is dense item ``d``
  (column 0 is padding and is never ranked), e.g. from SASRec or popularity.
- :func:`target_ranks_from_ranked_lists`: ``(batch, L)`` top-L lists of dense ids, e.g. from beam search in a
  generative model; a target absent from the list is a miss.

Both return the 0-based rank of each target (``MISS`` when it cannot count for any K); :func:`metrics_from_ranks`
turns ranks into ``{"recall@5": ..., "ndcg@5": ..., ...}``. With a single target, Recall@K equals hit rate @K and
NDCG@K is ``1 / log2(rank + 2)`` when ``rank < K``.

History masking: the published tables (TIGER, PRORec, their SASRec baselines) do NOT remove already-seen items
from the ranking, so ``exclude_history`` defaults to False. With it set, history items are removed; a target that
is itself in the history then counts as a miss (keeping only that item would leak the answer).

Ties in scores count against the target (an item scoring equal to the target ranks above it), so a constant
scorer gets no credit instead of a perfect score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
MISS = np.iinfo(np.int64).max
PADDING_ID = 0


def _as_long_tensor(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values, device=device).long()


def target_ranks_from_scores(
    scores: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    histories: np.ndarray | torch.Tensor | None = None,
    exclude_history: bool = False,
) -> np.ndarray:
    """0-based rank of each target among all items 1..N under ``scores`` (higher is better)."""
    scores = torch.as_tensor(scores)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (batch, num_items + 1), got shape {tuple(scores.shape)}")
    targets = _as_long_tensor(targets, scores.device)
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must be ({scores.shape[0]},), got {tuple(targets.shape)}")
    if torch.any(targets <= PADDING_ID) or torch.any(targets >= scores.shape[1]):
        raise ValueError(f"targets must be dense item ids in 1..{scores.shape[1] - 1}")
    # float64 stays float64: a scorer whose ties are broken by a term below float32's resolution (recsys.transitions'
    # popularity) would otherwise have them merged back into ties, and ties count pessimistically below.
    scores = (scores if scores.dtype == torch.float64 else scores.float()).clone()
    scores[:, PADDING_ID] = -torch.inf
    rows = torch.arange(len(targets), device=scores.device)
    target_scores = scores[rows, targets]
    if torch.any(~torch.isfinite(target_scores) & ~torch.isneginf(target_scores)):
        raise ValueError("target scores must not be NaN or +inf")
    masked_target = torch.zeros_like(targets, dtype=torch.bool)
    if exclude_history:
        if histories is None:
            raise ValueError("exclude_history=True needs histories")
        hist = _as_long_tensor(histories, scores.device)
        masked_target = (hist == targets[:, None]).any(dim=1)
        scores.scatter_(1, hist, -torch.inf)  # padding (0) is already -inf
    # Pessimistic ties: every other item scoring >= the target is ranked above it.
    above = (scores >= target_scores[:, None]).sum(dim=1) - 1
    ranks = above.cpu().numpy().astype(np.int64)
    # A target scored -inf (masked or degenerate) cannot count, whatever the tie rule says.
    unreachable = (masked_target | torch.isneginf(target_scores)).cpu().numpy()
    ranks[unreachable] = MISS
    return ranks


def target_ranks_from_ranked_lists(
    ranked: np.ndarray | Sequence[Sequence[int]],
    targets: np.ndarray | Sequence[int],
    max_k: int,
    histories: np.ndarray | Sequence[Sequence[int]] | None = None,
    exclude_history: bool = False,
) -> np.ndarray:
    """0-based position of each target in its ranked list; ``MISS`` when absent.

    ``ranked`` rows are dense ids, best first; 0 may pad rows that have fewer candidates. ``max_k`` is the largest K
    that will be reported: lists shorter than it are rejected, because a shorter list would silently lower Recall@K.
    With ``exclude_history`` history items are dropped first, so the list must have room to spare for them.
    Duplicate items in a list are rejected: they would double-count a slot.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if len(ranked) != len(targets):
        raise ValueError(f"got {len(ranked)} ranked lists for {len(targets)} targets")
    if exclude_history and histories is None:
        raise ValueError("exclude_history=True needs histories")
    ranks = np.full(len(targets), MISS, dtype=np.int64)
    for row, (items, target) in enumerate(zip(ranked, targets, strict=True)):
        items = [int(i) for i in items]
        if len(items) < max_k:
            raise ValueError(f"ranked list {row} has {len(items)} entries, fewer than max_k={max_k}")
        real = [i for i in items if i != PADDING_ID]
        if len(set(real)) != len(real):
            raise ValueError(f"ranked list {row} contains duplicate items")
        if exclude_history:
            seen = {int(i) for i in histories[row]}  # type: ignore[index]
            if target in seen:
                continue
            items = [i for i in items if i not in seen]
        if target in items:
            ranks[row] = items.index(target)
    return ranks


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over the examples whose 0-based target ranks are given."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError("no ranks to average")
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        gains = np.zeros(len(ranks), dtype=np.float64)
        gains[hit] = 1.0 / np.log2(ranks[hit] + 2.0)
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(gains.mean())
    return out
