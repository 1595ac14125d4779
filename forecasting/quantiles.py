"""Quantile outputs as a training option: the central levels a model learns, their probabilities, the pinball loss.

A model trained with ``quantile_levels`` (e.g. 0.8, 0.9, 0.95) learns the lower and upper quantile of each central
interval, ``(1 - l) / 2`` and ``(1 + l) / 2``, beside its point forecast, by minimising the pinball (quantile)
loss; the export carries them as a second graph output and the server answers those levels from them
(``serving.quantile_head``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MAX_QUANTILE_LEVELS = 8  # central levels a model may learn (two quantiles each)


def check_quantile_levels(levels: Sequence[float], field: str = "quantile_levels") -> tuple[float, ...]:
    """The levels as floats in increasing order; ValueError naming a bad one (outside (0, 1), repeated, too many)."""
    values = [float(v) for v in levels]
    if len(values) > MAX_QUANTILE_LEVELS:
        raise ValueError(f"{field}: {len(values)} levels, at most {MAX_QUANTILE_LEVELS}")
    for i, v in enumerate(values):
        if not (math.isfinite(v) and 0.0 < v < 1.0):
            raise ValueError(f"{field}[{i}]={v!r}: a level must lie strictly between 0 and 1")
    if len(set(values)) != len(values):
        raise ValueError(f"{field}: {values} repeats a level")
    return tuple(sorted(values))


def quantile_probs(levels: Sequence[float]) -> tuple[float, ...]:
    """The probabilities of the central levels' bounds, increasing: 0.8, 0.9 -> 0.05, 0.1, 0.9, 0.95."""
    checked = check_quantile_levels(levels)
    return tuple(sorted({round((1 - v) / 2, 12) for v in checked} | {round((1 + v) / 2, 12) for v in checked}))


def pinball_loss(quantiles: torch.Tensor, target: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss of ``quantiles`` (B, Q, H, C) at ``probs`` (Q,) against ``target`` (B, H, C):
    ``max(p (y - q), (p - 1) (y - q))``, averaged over every value and quantile."""
    diff = target.unsqueeze(1) - quantiles
    p = probs.to(quantiles).reshape(1, -1, 1, 1)
    return torch.maximum(p * diff, (p - 1) * diff).mean()


def ordered(quantiles: torch.Tensor) -> torch.Tensor:
    """Quantiles (B, Q, H, C) sorted along Q: learnt bounds may cross, served ones never do."""
    return torch.sort(quantiles, dim=1).values
