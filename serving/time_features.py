"""Calendar features (Informer's "timeF" encoding), each scaled to [-0.5, 0.5]: the one implementation.

Training (forecasting.data) and serving (the rollout, which needs the features of future timestamps at
request time) both use this module, so a graph is always fed the encoding it was trained on. No torch here.
"""

from __future__ import annotations

import numpy as np
import polars as pl

# Features per data frequency, finest first, as in the Informer/Autoformer code.
_FEATURES_BY_FREQ: dict[str, tuple[str, ...]] = {
    "15m": ("minute", "hour", "weekday", "day", "yearday"),
    "1h": ("hour", "weekday", "day", "yearday"),
    "1d": ("weekday", "day", "yearday"),
    "1w": ("day", "yearday", "week"),
}
_STEP_SECONDS: dict[str, int] = {"15m": 900, "1h": 3600, "1d": 86400, "1w": 604800}


def feature_names(freq: str) -> tuple[str, ...]:
    if freq not in _FEATURES_BY_FREQ:
        raise ValueError(f"no calendar features for frequency {freq!r} (known: {list(_FEATURES_BY_FREQ)})")
    return _FEATURES_BY_FREQ[freq]


def time_features(timestamps: np.ndarray, freq: str) -> np.ndarray:
    """(T, F) float32 features for ``timestamps`` (datetime64)."""
    dt = pl.Series("t", timestamps).cast(pl.Datetime("us")).dt
    columns = {
        "minute": dt.minute() / 59.0 - 0.5,
        "hour": dt.hour() / 23.0 - 0.5,
        "weekday": (dt.weekday() - 1) / 6.0 - 0.5,  # polars: Monday = 1
        "day": (dt.day() - 1) / 30.0 - 0.5,
        "yearday": (dt.ordinal_day() - 1) / 365.0 - 0.5,
        "week": (dt.week() - 1) / 52.0 - 0.5,
    }
    names = feature_names(freq)
    return np.stack([columns[name].to_numpy() for name in names], axis=1).astype(np.float32)


def freq_step(freq: str) -> np.timedelta64:
    """The time between two rows at ``freq``."""
    if freq not in _STEP_SECONDS:
        raise ValueError(f"unknown frequency {freq!r} (known: {list(_STEP_SECONDS)})")
    return np.timedelta64(_STEP_SECONDS[freq], "s")


def future_timestamps(last: np.ndarray, count: int, freq: str) -> np.ndarray:
    """``last + k * freq`` for k = 1..count; ``last`` of any shape, the new axis appended at the end."""
    last = np.asarray(last, dtype="datetime64[us]")
    offsets = np.arange(1, count + 1) * freq_step(freq).astype("timedelta64[us]")
    return last[..., None] + offsets


def infer_freq(timestamps: np.ndarray) -> str:
    """The most common step between rows, as one of the frequencies above."""
    if len(timestamps) < 2:
        raise ValueError("at least two timestamps are needed to infer a frequency")
    steps = np.diff(timestamps.astype("datetime64[s]").astype(np.int64))
    values, counts = np.unique(steps, return_counts=True)
    step = int(values[counts.argmax()])
    by_seconds = {seconds: freq for freq, seconds in _STEP_SECONDS.items()}
    if step not in by_seconds:
        raise ValueError(f"unsupported sampling step of {step} s (supported: 15 min, 1 h, 1 day, 1 week)")
    return by_seconds[step]
