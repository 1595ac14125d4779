"""Prediction intervals from an artifact's conformal calibration (no torch: training writes it, serving reads it).

Split conformal (the artifact's ``calibration.npz``): at export every validation window is rolled out by the
served runner to the calibrated horizon, and the signed residuals ``actual - forecast`` are reduced to quantiles
on a fixed probability grid (``PROBS``) per horizon step and channel, with the finite-sample correction: the
upper quantile at probability p is the ceil((n + 1) p)-th smallest of n residuals, the lower one the
floor((n + 1) p)-th. A central interval at level l is ``forecast + q((1 - l) / 2) .. forecast + q((1 + l) / 2)``;
a probability between grid points is interpolated linearly. Every rolled-out step has its own residuals (step 30
of a 24-value model is the rollout's own error there, not step 1's reused).

Adaptive conformal inference (Gibbs and Candes, 2021), stateless: the caller sends a history longer than the
model's context; the server rolls the model out from each of the last ``origins`` origins inside it (one batched
run with the forecast itself), and for each horizon step, channel and requested level runs the update
``alpha <- alpha + gamma * (target_alpha - miss)`` over the misses it sees in time order. It starts warm: at the
level that covers the nominal share of the window's own residuals (``warm_levels``: their needed levels' weighted
conformal quantile, Barber et al. 2023, an origin ``a`` rows back weighing ``DEFAULT_DECAY ** a``), not at the
nominal one: from the nominal level the update moves at most ``gamma * target_alpha`` per origin while it sees no
miss (0.084 over 168 origins at 95% and gamma 0.01), too little for a regime that moved since calibration (ETTh1's
test period is narrower than its validation period); gamma 0, the default, serves the warm level itself. The
forecast's interval is then served at the adapted level ``1 - alpha`` (clamped to
``0 .. MAX_LEVEL``: where alpha falls below ``1 - MAX_LEVEL`` the widest calibrated interval is served).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = "calibration.npz"
SPLIT_CONFORMAL, ADAPTIVE, QUANTILE = "split_conformal", "adaptive", "quantile"
METHODS = (SPLIT_CONFORMAL, ADAPTIVE)  # the conformal methods a calibrated artifact serves
INTERVAL_METHODS = (*METHODS, QUANTILE)  # and the model's own quantiles (``serving.quantile_head``)
# The probability grid the residual quantiles are stored at: every 0.005, plus finer tails.
PROBS = np.unique(
    np.round(np.concatenate([[0.001, 0.0025, 0.0075], np.arange(0.005, 0.9951, 0.005), [0.9925, 0.9975, 0.999]]), 6)
)
MAX_LEVEL = float(np.round(PROBS[-1] - PROBS[0], 6))  # 0.998: the widest central interval the grid holds
MAX_LEVELS = 16  # levels per request
# Adaptive defaults, chosen on the validation split only (bench/intervals.py --adaptive-study: calibrated on its
# first half, scored on its second): 336 origins with the warm start and no further update had 46 of 48 cells within
# 2 points of nominal; 168 origins from the nominal level at gamma 0.01 (the earlier defaults) 40. With Informer's
# 12 cells added, the warm start weighted by decay 0.99 had 60 of 60 (mean gap 0.67 points), 0.98 60 (0.77),
# 0.995 59, unweighted 58; 0.97 and below widen too far (24, 0).
DEFAULT_ORIGINS = 336  # adaptive: backtest origins used (extra actuals beyond the context), at most
MAX_ORIGINS = 1024
DEFAULT_GAMMA = 0.0  # adaptive: the step size of the alpha update (0: the warm level as it is)
DEFAULT_WARM = True  # adaptive: start from the level covering the window's own residuals (``warm_levels``)
DEFAULT_DECAY = 0.99  # adaptive: the weight of an origin a rows before the forecast's in ``warm_levels``, decay ** a
CACHED_OFFSET_BYTES = 64 * 1024  # split-conformal offsets kept per calibration and levels (Calibration.split_offsets)


# --- calibration (export side) --------------------------------------------------------------------------------


def conformal_quantiles(residuals: np.ndarray, probs: np.ndarray = PROBS) -> tuple[np.ndarray, np.ndarray]:
    """Finite-sample-corrected quantiles of signed residuals (N, H, C) (NaN: not observed) -> ((P, H, C), (H,) n).

    For p >= 0.5 the ceil((n + 1) p)-th smallest residual, for p < 0.5 the floor((n + 1) p)-th, clamped to 1..n:
    so each one-sided bound covers at least its nominal share on exchangeable data.
    """
    residuals = np.asarray(residuals, np.float64)
    counts = (~np.isnan(residuals)).sum(axis=0)  # (H, C)
    if (counts == 0).any():
        raise ValueError("every horizon step needs at least one calibration residual")
    ordered = np.sort(residuals, axis=0)  # NaN last
    n = counts[None].astype(np.float64)  # (1, H, C)
    p = np.asarray(probs, np.float64)[:, None, None]
    rank = np.where(p >= 0.5, np.ceil((n + 1) * p), np.floor((n + 1) * p))
    rank = np.clip(rank, 1, n).astype(np.int64) - 1  # (P, H, C)
    table = np.take_along_axis(ordered, rank, axis=0)
    return table.astype(np.float32), counts[:, 0].astype(np.int64)


def write_calibration(folder: Path, residuals: np.ndarray, probs: np.ndarray = PROBS) -> dict[str, Any]:
    """Write ``calibration.npz`` into an artifact folder; returns what the manifest records under ``calibration``."""
    table, counts = conformal_quantiles(residuals, probs)
    np.savez_compressed(folder / CALIBRATION_FILE, probs=np.asarray(probs, np.float64), quantiles=table, windows=counts)
    return {
        "file": CALIBRATION_FILE,
        "methods": list(METHODS),
        "horizon": int(table.shape[1]),
        "windows": int(counts[0]),
        "windows_last_step": int(counts[-1]),
        "probs": len(probs),
        "max_level": MAX_LEVEL,
    }


# --- the table (serving side) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """An artifact's residual quantiles: ``quantiles`` (P, H, C) at ``probs`` (P,), from ``windows`` (H,) windows."""

    probs: np.ndarray
    quantiles: np.ndarray
    windows: np.ndarray
    facts: dict[str, Any]
    _split: dict[tuple[tuple[float, ...], int], np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def horizon(self) -> int:
        return int(self.quantiles.shape[1])

    @functools.cached_property
    def cells(self) -> np.ndarray:
        """The table per cell (H, C, P), float64, made once per loaded calibration: every request reads it (any
        horizon's rows are a contiguous prefix)."""
        return np.ascontiguousarray(np.moveaxis(self.quantiles, 0, -1), np.float64)

    def at(self, p: np.ndarray, horizon: int) -> np.ndarray:
        """Residual quantiles at probabilities ``p`` (..., horizon, C) (linear between grid points) -> same shape."""
        probs = self.probs
        channels = self.quantiles.shape[2]
        p = np.asarray(p, np.float64)
        p = np.clip(np.broadcast_to(p, np.broadcast_shapes(p.shape, (horizon, channels))), probs[0], probs[-1])
        hi = np.clip(np.searchsorted(probs, p), 1, len(probs) - 1)
        lo = hi - 1
        w = np.clip((p - probs[lo]) / (probs[hi] - probs[lo]), 0.0, 1.0)
        flat = self.cells[:horizon].reshape(horizon * channels, -1)
        cell = np.arange(horizon * channels).reshape(horizon, channels)
        cell = np.broadcast_to(cell, p.shape)
        return flat[cell, lo] * (1 - w) + flat[cell, hi] * w

    def needed_levels(self, residuals: np.ndarray) -> np.ndarray:
        """The smallest central level whose interval covers each residual (..., h, C): ``inf`` beyond the widest,
        NaN stays NaN. An interval at level l (clipped to 0..MAX_LEVEL) misses exactly when l < this level."""
        residuals = np.asarray(residuals, np.float64)
        horizon, channels = residuals.shape[-2:]
        probs, n = self.probs, len(self.probs)
        table = self.cells[:horizon]  # (h, C, P)
        flat_table = table.reshape(horizon * channels, n)
        cells = np.arange(horizon * channels).reshape(horizon, channels)
        flat = residuals.reshape(-1, horizon, channels)
        need = np.empty(flat.shape)
        below = np.empty(flat.shape, np.int64)
        for j in range(horizon):
            for c in range(channels):
                below[:, j, c] = np.searchsorted(table[j, c], flat[:, j, c], side="left")  # first index: Q >= r
        # The first index with Q > r is that one unless Q there equals r: a residual tied with a table value (rare
        # for measured ones) is searched again, in its cell only; the rest need half the binary searches.
        upto = below.copy()
        tied = (below < n) & (flat_table[cells[None], np.minimum(below, n - 1)] == flat)
        for j, c in zip(*np.nonzero(tied.any(axis=0)), strict=True):
            upto[:, j, c] = np.searchsorted(table[j, c], flat[:, j, c], side="right")
        rows = max(1, 4_000_000 // (horizon * channels))
        for lo in range(0, len(flat), rows):
            r = flat[lo : lo + rows]

            def interpolate(i: np.ndarray, r: np.ndarray = r) -> np.ndarray:
                k = np.clip(i, 1, n - 1)
                cell = np.broadcast_to(cells, k.shape)
                q0, q1 = flat_table[cell, k - 1], flat_table[cell, k]
                span = np.where(q1 > q0, q1 - q0, 1.0)
                return probs[k - 1] + (r - q0) / span * (probs[k] - probs[k - 1])

            # upper side: the smallest p with Q(p) >= r; lower side: the largest p with Q(p) <= r
            first, last = below[lo : lo + rows], upto[lo : lo + rows]
            up = np.where(first == 0, probs[0], np.where(first >= n, np.inf, interpolate(first)))
            down = np.where(last >= n, probs[-1], np.where(last == 0, -np.inf, interpolate(last)))
            need[lo : lo + rows] = np.maximum(2 * up - 1, 1 - 2 * down)
        need[np.isnan(flat)] = np.nan
        return need.reshape(residuals.shape)

    def split_offsets(self, levels: tuple[float, ...], horizon: int) -> np.ndarray:
        """``offsets`` of fixed levels as (K, 2: lower and upper, horizon * C), time-major like a forecast's
        values: a split-conformal request reads them. Cached up to 256 of ``CACHED_OFFSET_BYTES`` at most (the
        usual request's is under 1 kB; a larger one is computed per request, whatever the callers send)."""
        key = (levels, horizon)
        cached = self._split.get(key)
        if cached is None:
            lo, hi = self.offsets(np.asarray(levels, np.float64)[:, None, None], horizon)
            cached = np.stack([lo, hi], axis=1).reshape(len(lo), 2, -1)
            cached.flags.writeable = False
            if cached.nbytes <= CACHED_OFFSET_BYTES:
                if len(self._split) >= 256:
                    self._split.clear()
                self._split[key] = cached
        return cached

    def offsets(self, levels: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper offsets from the forecast at central ``levels`` (..., horizon, C) (broadcast)."""
        levels = np.clip(np.asarray(levels, np.float64), 0.0, MAX_LEVEL)
        return self.at((1 - levels) / 2, horizon), self.at((1 + levels) / 2, horizon)


@functools.lru_cache(maxsize=64)
def _read(path: Path, name: str, sha256: str) -> Calibration:
    with np.load(path / name, allow_pickle=False) as npz:
        probs, table, windows = np.asarray(npz["probs"]), np.asarray(npz["quantiles"], np.float32), npz["windows"]
    return Calibration(probs, table, np.asarray(windows), {})


def load_calibration(artifact: Any) -> Calibration | None:
    """The artifact's calibration (read once per file and cached), or None for an artifact exported without one."""
    facts = artifact.manifest.facts.get("calibration")
    if not isinstance(facts, dict) or "file" not in facts:
        return None
    entry = artifact.manifest.files.get(facts["file"])
    calibration = _read(artifact.path, facts["file"], entry.sha256 if entry else "")
    if not calibration.facts:
        calibration.facts.update(facts)
    return calibration


def check_levels(levels: Sequence[float], field: str = "levels") -> np.ndarray:
    """The requested central levels as an array; ValueError naming every bad one (outside (0, 1), too many...)."""
    values = list(levels)  # floats already (a proto's repeated double, a parsed option)
    if len(values) <= MAX_LEVELS and all(0.0 < v <= MAX_LEVEL for v in values) and len(set(values)) == len(values):
        return np.asarray(values, np.float64)  # the common case, in one pass (NaN fails the comparison)
    values = [float(v) for v in values]
    if len(values) > MAX_LEVELS:
        raise ValueError(f"{field}: {len(values)} levels, at most {MAX_LEVELS} per request")
    bad = [f"{field}[{i}]={v!r}" for i, v in enumerate(values) if not (math.isfinite(v) and 0.0 < v < 1.0)]
    if bad:
        raise ValueError(f"{', '.join(bad)}: a level must lie strictly between 0 and 1")
    wide = [f"{field}[{i}]={v!r}" for i, v in enumerate(values) if v > MAX_LEVEL + 1e-12]
    if wide:
        raise ValueError(f"{', '.join(wide)}: beyond the widest calibrated level {MAX_LEVEL}")
    seen: dict[float, int] = {}
    for i, v in enumerate(values):
        if v in seen:
            raise ValueError(f"{field}[{i}]={v!r}: repeats {field}[{seen[v]}]")
        seen[v] = i
    return np.asarray(values, np.float64)


# --- adaptive conformal inference -----------------------------------------------------------------------------


def backtest_origins(steps: int, context_length: int, origins: int) -> np.ndarray:
    """The history rows t (the forecast is made after rows < t) of the last ``origins`` origins with a context."""
    first = max(context_length, steps - origins)
    return np.arange(first, steps)


def backtest_residuals(history: np.ndarray, origins: np.ndarray, forecasts: np.ndarray) -> np.ndarray:
    """Signed residuals (O, h, C) of rollouts (O, h, C) made at ``origins`` of ``history`` (S, C); NaN where the
    actual lies beyond the history."""
    steps = len(history)
    horizon = forecasts.shape[1]
    rows = origins[:, None] + np.arange(horizon)[None]  # (O, h)
    seen = rows < steps
    actual = history[np.minimum(rows, steps - 1)]
    return np.where(seen[..., None], actual - forecasts, np.nan)


def adapt(
    calibration: Calibration,
    levels: np.ndarray,
    residuals: np.ndarray,
    gamma: float = DEFAULT_GAMMA,
    warm: bool = DEFAULT_WARM,
    decay: float = DEFAULT_DECAY,
) -> np.ndarray:
    """Adapted levels (K, B, h, C) after the Gibbs-Candes update over ``residuals`` (B, O, h, C), origins in time
    order, NaN where not observed; ``levels`` (K,) the nominal ones, each adapted on its own."""
    return adapt_needed(levels, calibration.needed_levels(residuals), gamma, warm, decay)


def warm_levels(levels: np.ndarray, need: np.ndarray, decay: float = DEFAULT_DECAY) -> np.ndarray:
    """The levels (K, B, h, C) that cover a nominal share of the window's own residuals: the weighted conformal
    quantile (Barber et al., 2023) of the needed levels (B, O, h, C, origins in time order, the last one the row
    before the forecast's) seen at each step and channel. The origin ``a`` rows before the forecast's weighs
    ``decay ** a``, the forecast itself 1: the level is the smallest needed level whose seen weight reaches ``l``
    of the total; at decay 1 the ceil((n + 1) l)-th smallest of n. ``levels`` where none is seen, ``MAX_LEVEL``
    where the weight does not reach or the needed level is the widest."""
    levels = np.asarray(levels, np.float64)
    b, n_origins, horizon, channels = need.shape
    if n_origins == 0:  # no origin backtested: the nominal levels
        return np.broadcast_to(levels[:, None, None, None], (len(levels), b, horizon, channels)).copy()
    columns = np.moveaxis(need, 1, -1).reshape(-1, n_origins)  # (B h C, O): a row per series, step and channel
    order = np.argsort(np.where(np.isnan(columns), np.inf, columns), axis=1)  # unseen last
    ordered = np.take_along_axis(columns, order, axis=1)
    weight = (decay ** np.arange(n_origins, 0, -1, dtype=np.float64))[order]
    weight[np.isnan(ordered)] = 0.0
    reached = np.cumsum(weight, axis=1)
    wanted = levels[:, None] * (reached[:, -1] + 1.0)[None]  # (K, rows): the forecast's own weight is 1
    index = (reached[None] < wanted[:, :, None]).sum(axis=2)  # the first origin whose weight reaches it
    picked = ordered[np.arange(len(ordered))[None], np.minimum(index, n_origins - 1)]
    warm = np.where(index >= n_origins, MAX_LEVEL, np.minimum(picked, MAX_LEVEL))
    warm = np.where(np.isnan(ordered[:, 0])[None], levels[:, None], warm)  # none seen: nominal
    return warm.reshape(len(levels), b, horizon, channels)


def adapt_needed(
    levels: np.ndarray,
    need: np.ndarray,
    gamma: float = DEFAULT_GAMMA,
    warm: bool = DEFAULT_WARM,
    decay: float = DEFAULT_DECAY,
) -> np.ndarray:
    """``adapt`` from each residual's needed level (``Calibration.needed_levels``) (B, O, h, C), NaN: not seen.
    ``warm``: start the update from ``warm_levels`` (with ``decay``) instead of the nominal levels."""
    levels = np.asarray(levels, np.float64)
    b, n_origins, horizon, channels = need.shape
    target = (1 - levels)[:, None, None, None]  # (K, 1, 1, 1)
    if warm:
        alpha = 1 - warm_levels(levels, need, decay)
    else:
        alpha = np.broadcast_to(target, (len(levels), b, horizon, channels)).copy()
    if gamma == 0:  # every step below would add 0 (the default: the warm level as it is): half the adaptive request
        return np.clip(1 - alpha, 0.0, MAX_LEVEL)
    # A miss at level l is clip(l, 0, MAX_LEVEL) < need, i.e. l < threshold: -inf where need <= 0 (never a miss),
    # inf beyond MAX_LEVEL (always); unseen residuals get step 0. Each origin adds step * (target - miss): both
    # outcomes' changes are made before the loop (origins first), which is sequential, so each origin costs four
    # numpy calls.
    threshold = np.where(need <= 0, -np.inf, np.where(need > MAX_LEVEL, np.inf, need))
    threshold = np.ascontiguousarray(np.moveaxis(threshold, 1, 0))  # (O, B, h, C)
    step = np.ascontiguousarray(np.moveaxis(gamma * ~np.isnan(need), 1, 0))[:, None]  # (O, 1, B, h, C)
    covered, missed = target * step, (target - 1.0) * step  # (O, K, B, h, C)
    level, miss = np.empty_like(alpha), np.empty(alpha.shape, bool)
    for o in range(n_origins):
        np.subtract(1.0, alpha, out=level)
        np.less(level, threshold[o], out=miss)
        alpha += np.where(miss, missed[o], covered[o])
    return np.clip(1 - alpha, 0.0, MAX_LEVEL)


def adapted_levels(
    calibration: Calibration,
    levels: np.ndarray,
    histories: Sequence[np.ndarray],
    origins: Sequence[np.ndarray],
    forecasts: Sequence[np.ndarray],
    gamma: float,
) -> np.ndarray:
    """Adapted levels (K, B, h, C) of B series from their histories (S_i, C), backtest origins (O_i,) and those
    origins' rollouts (O_i, h, C); a series with fewer origins starts later (the latest origins align)."""
    most = max((len(o) for o in origins), default=0)
    horizon, channels = forecasts[0].shape[1], forecasts[0].shape[2]
    residuals = np.full((len(histories), most, horizon, channels), np.nan)
    for i, (history, rows, preds) in enumerate(zip(histories, origins, forecasts, strict=True)):
        if len(rows):
            residuals[i, most - len(rows) :] = backtest_residuals(history, rows, preds)
    return adapt(calibration, levels, residuals, gamma)


def level_name(level: float) -> str:
    return f"{level:g}"


def interval_columns(
    levels: Sequence[float], lower: np.ndarray, upper: np.ndarray, channels: Sequence[str]
) -> dict[str, np.ndarray]:
    """Batch output columns of one series: ``lo_<level>``/``hi_<level>`` (``lo_<level>_<channel>`` with several
    channels) from bounds (K, h, C)."""
    columns = {}
    for k, level in enumerate(levels):
        for j, channel in enumerate(channels):
            suffix = "" if len(channels) == 1 else f"_{channel}"
            columns[f"lo_{level_name(level)}{suffix}"] = lower[k, :, j]
            columns[f"hi_{level_name(level)}{suffix}"] = upper[k, :, j]
    return columns


# --- scores ---------------------------------------------------------------------------------------------------


def coverage(lower: np.ndarray, upper: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean((actual >= lower) & (actual <= upper)))


def winkler(lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, level: float) -> float:
    """Mean interval (Winkler) score: width plus 2 / alpha times the distance by which the actual falls outside."""
    alpha = 1 - level
    below = np.maximum(lower - actual, 0.0)
    above = np.maximum(actual - upper, 0.0)
    return float(np.mean(upper - lower + 2 / alpha * (below + above)))


def crps_from_quantiles(quantiles: np.ndarray, probs: np.ndarray, actual: np.ndarray) -> float:
    """CRPS approximated by twice the mean pinball loss over ``probs``: ``quantiles`` (P, ...), ``actual`` (...)."""
    probs = np.asarray(probs, np.float64).reshape(-1, *([1] * actual.ndim))
    diff = actual[None] - quantiles
    return float(2 * np.mean(np.maximum(probs * diff, (probs - 1) * diff)))
