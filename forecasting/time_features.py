"""Calendar features: re-exported from ``serving.time_features``, the one implementation training and serving share."""

from __future__ import annotations

from serving.time_features import (
    feature_names,
    freq_step,
    future_timestamps,
    infer_freq,
    normalize_freq,
    parse_freq,
    time_features,
)

__all__ = [
    "feature_names",
    "freq_step",
    "future_timestamps",
    "infer_freq",
    "normalize_freq",
    "parse_freq",
    "time_features",
]
