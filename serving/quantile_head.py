"""Intervals from a model's own quantiles: an artifact trained with ``quantile_levels`` (``forecasting.quantiles``)
has a second graph output, the quantiles (B, Q, step, C) of those levels' bounds; its manifest's ``quantiles``
entry names the output, the probabilities and the levels.

Only the trained levels are served, and only within one model step: a rolled-out block is conditioned on the
point forecasts fed back, so its quantiles would leave out the error of those (conformal calibration, which
measures the rollout's own errors, covers longer horizons).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.intervals import level_name

LEVEL_TOLERANCE = 1e-9  # a requested level matches a trained one this closely (doubles from any client)


@dataclass(frozen=True, eq=False)  # hashed by identity: one instance per manifest entry (load_quantile_head)
class QuantileHead:
    """An artifact's learnt quantiles: graph ``output``, ``probs`` (Q,) increasing, the central ``levels`` they
    bound, over the first ``horizon`` steps (the model's step)."""

    output: str
    probs: np.ndarray
    levels: tuple[float, ...]
    horizon: int

    def pick(self, levels: np.ndarray, field: str = "levels") -> tuple[np.ndarray, np.ndarray]:
        """Indices (K,) into ``probs`` of each requested level's lower and upper bound; ValueError naming every
        level the model was not trained for. Cached: every request of a model asks the same few levels."""
        return _pick(self, tuple(levels.tolist()), field)

    def _pick(self, levels: tuple[float, ...], field: str) -> tuple[np.ndarray, np.ndarray]:
        lower, upper, bad = [], [], []
        for i, level in enumerate(levels):
            lo = np.flatnonzero(np.abs(self.probs - (1 - level) / 2) <= LEVEL_TOLERANCE)
            hi = np.flatnonzero(np.abs(self.probs - (1 + level) / 2) <= LEVEL_TOLERANCE)
            if not len(lo) or not len(hi):
                bad.append(f"{field}[{i}]={float(level)!r}")
                continue
            lower.append(int(lo[0]))
            upper.append(int(hi[0]))
        if bad:
            trained = ", ".join(level_name(v) for v in self.levels)
            raise ValueError(f"{', '.join(bad)}: the model's quantiles were trained for the levels {trained} only")
        return np.asarray(lower, np.int64), np.asarray(upper, np.int64)


@functools.lru_cache(maxsize=1024)
def _pick(head: QuantileHead, levels: tuple[float, ...], field: str) -> tuple[np.ndarray, np.ndarray]:
    return head._pick(levels, field)  # a refused level raises, and is not cached


def load_quantile_head(artifact: Any) -> QuantileHead | None:
    """The artifact's learnt quantiles, or None for a model trained without them (built once per manifest entry)."""
    facts = artifact.manifest.facts.get("quantiles")
    if not isinstance(facts, dict) or "output" not in facts:
        return None
    return _head(str(facts["output"]), tuple(facts["probs"]), tuple(facts["levels"]), int(facts["horizon"]))


@functools.lru_cache(maxsize=64)
def _head(output: str, probs: tuple[float, ...], levels: tuple[float, ...], horizon: int) -> QuantileHead:
    return QuantileHead(output, np.asarray(probs, np.float64), tuple(float(v) for v in levels), horizon)


def run_quantiles(runner: Any, head: QuantileHead, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The point forecast (B, step, C) and the quantiles (B, Q, step, C) of contexts (B, L', C), both outputs of
    one run of the runner's session per rows-per-run chunk.

    A context-only graph (the models that learn quantiles: AR-Net, linear); its last ``context_length`` rows.
    """
    window = np.ascontiguousarray(context[:, -runner.context_length :], dtype=np.float32)
    chunk = runner.rows_per_run
    outputs = ["forecast", head.output]
    parts = [runner.session.run(outputs, {"context": window[i : i + chunk]}) for i in range(0, len(window), chunk)]
    if len(parts) == 1:
        return parts[0][0], parts[0][1]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def quantile_bands(quantiles: np.ndarray, picks: tuple[np.ndarray, np.ndarray], horizon: int) -> np.ndarray:
    """The picked levels' bounds (B, K, 2: lower and upper, horizon, C) from quantiles (B, Q, step, C), as the
    server writes them into a reply (one gather)."""
    return quantiles[:, np.stack(picks, axis=1), :horizon]


def quantile_bounds(
    quantiles: np.ndarray, picks: tuple[np.ndarray, np.ndarray], horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds (K, B, horizon, C) of the picked levels from quantiles (B, Q, step, C)."""
    bands = np.moveaxis(quantile_bands(quantiles, picks, horizon), 2, 0).swapaxes(1, 2).astype(np.float64)
    return bands[0], bands[1]


def check_quantile_horizon(head: QuantileHead, horizon: int, name: str) -> None:
    """ValueError naming ``horizon`` when it goes beyond what the quantiles cover."""
    if horizon > head.horizon:
        raise ValueError(
            f"horizon: {horizon} exceeds the {head.horizon} steps model {name!r} learnt quantiles for (one model "
            "step, not rolled out): ask a shorter horizon, or split_conformal/adaptive for longer ones"
        )
