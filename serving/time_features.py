"""Calendar features (Informer's "timeF" encoding), each scaled to [-0.5, 0.5]: the one implementation.

Training (forecasting.data) and serving (the rollout, which needs the features of future timestamps at
request time) both use this module, so a graph is always fed the encoding it was trained on. No torch here.

A frequency is ``<count><unit>`` with unit s (seconds), m (minutes), h, d, w or mo (calendar months): "10m",
"1s", "1mo". Which features a frequency gets depends on its unit only, as GluonTS' and Informer's
``time_features_from_frequency_str`` define them, so "15m" and "10m" share the minute-level set.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl

# Features per unit of the step, finest first, as in the Informer/Autoformer code. Weeks keep the set that
# exported "1w" artifacts were trained with (day, yearday, week), so those models serve unchanged.
_FEATURES_BY_UNIT: dict[str, tuple[str, ...]] = {
    "s": ("second", "minute", "hour", "weekday", "day", "yearday"),
    "m": ("minute", "hour", "weekday", "day", "yearday"),
    "h": ("hour", "weekday", "day", "yearday"),
    "d": ("weekday", "day", "yearday"),
    "w": ("day", "yearday", "week"),
    "mo": ("month",),
}
_UNIT_SECONDS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Spellings accepted from users (pandas offset aliases among them); case matters: "M" is a month, "m" a minute.
_UNIT_ALIASES: dict[str, str] = {
    **{u: u for u in ("s", "m", "h", "d", "w", "mo")},
    **dict.fromkeys(("S", "sec", "second", "seconds"), "s"),
    **dict.fromkeys(("min", "T", "t", "minute", "minutes"), "m"),
    **dict.fromkeys(("H", "hour", "hours"), "h"),
    **dict.fromkeys(("D", "day", "days"), "d"),
    **dict.fromkeys(("W", "week", "weeks"), "w"),
    **dict.fromkeys(("M", "MS", "ME", "month", "months"), "mo"),
}
_FREQ_PATTERN = re.compile(r"^\s*(\d*)\s*([A-Za-z]+)\s*$")


def parse_freq(freq: str) -> tuple[int, str]:
    """(count, unit) of a frequency such as "10m", "15min", "h" or "1mo"."""
    match = _FREQ_PATTERN.match(freq)
    unit = _UNIT_ALIASES.get(match.group(2)) if match else None
    if match is None or unit is None or match.group(1) in ("0", "00"):
        raise ValueError(
            f"unknown frequency {freq!r} (expected a count and a unit: s, m, h, d, w or mo, e.g. '10m', '1mo')"
        )
    return int(match.group(1) or 1), unit


def normalize_freq(freq: str) -> str:
    """The canonical spelling ("15min" -> "15m", "h" -> "1h", "MS" -> "1mo"), as recorded in runs and manifests."""
    count, unit = parse_freq(freq)
    return f"{count}{unit}"


def feature_names(freq: str) -> tuple[str, ...]:
    return _FEATURES_BY_UNIT[parse_freq(freq)[1]]


def time_features(timestamps: np.ndarray, freq: str) -> np.ndarray:
    """(T, F) float32 features for ``timestamps`` (datetime64)."""
    dt = pl.Series("t", timestamps).cast(pl.Datetime("us")).dt
    columns = {
        "second": lambda: dt.second() / 59.0 - 0.5,
        "minute": lambda: dt.minute() / 59.0 - 0.5,
        "hour": lambda: dt.hour() / 23.0 - 0.5,
        "weekday": lambda: (dt.weekday() - 1) / 6.0 - 0.5,  # polars: Monday = 1
        "day": lambda: (dt.day() - 1) / 30.0 - 0.5,
        "yearday": lambda: (dt.ordinal_day() - 1) / 365.0 - 0.5,
        "week": lambda: (dt.week() - 1) / 52.0 - 0.5,
        "month": lambda: (dt.month() - 1) / 11.0 - 0.5,
    }
    names = feature_names(freq)
    return np.stack([columns[name]().to_numpy() for name in names], axis=1).astype(np.float32)


def freq_step(freq: str) -> np.timedelta64:
    """The time between two rows at ``freq``; months have no fixed length (use ``future_timestamps``)."""
    count, unit = parse_freq(freq)
    if unit not in _UNIT_SECONDS:
        raise ValueError(f"frequency {freq!r} has no fixed step length (calendar months)")
    return np.timedelta64(count * _UNIT_SECONDS[unit], "s")


def future_timestamps(last: np.ndarray, count: int, freq: str) -> np.ndarray:
    """``last + k * freq`` for k = 1..count; ``last`` of any shape, the new axis appended at the end."""
    last = np.asarray(last, dtype="datetime64[us]")
    months, unit = parse_freq(freq)
    if unit != "mo":
        offsets = np.arange(1, count + 1) * freq_step(freq).astype("timedelta64[us]")
        return last[..., None] + offsets
    # Calendar months keep the day and time of ``last``; a month's last day stays the last day (Jan 31 -> Feb 28).
    month = last.astype("datetime64[M]")[..., None] + np.arange(1, count + 1) * months
    day = last.astype("datetime64[D]")
    time_of_day = (last - day)[..., None]
    month_end = (last.astype("datetime64[M]") + 1).astype("datetime64[D]") - 1 == day
    into_month = (day - last.astype("datetime64[M]").astype("datetime64[D]"))[..., None]
    next_start = (month + 1).astype("datetime64[D]")
    start = month.astype("datetime64[D]")
    anchored = np.where(month_end[..., None], next_start - 1, np.minimum(start + into_month, next_start - 1))
    return anchored.astype("datetime64[us]") + time_of_day


def format_timestamp(value: np.datetime64) -> str:
    """'2021-03-02 09:10:00' for messages: seconds, no microseconds unless there are some."""
    stamp = np.datetime64(value, "us")
    unit = "s" if stamp == np.datetime64(stamp, "s") else "us"
    return str(np.datetime64(stamp, unit)).replace("T", " ")


def regular_timestamps(start: np.ndarray, count: int, freq: str) -> np.ndarray:
    """``count`` timestamps from ``start`` (any shape; the new axis appended) at ``freq``, months included."""
    start = np.asarray(start, dtype="datetime64[us]")
    return np.concatenate([start[..., None], future_timestamps(start, count - 1, freq)], axis=-1)


def future_from_history(stamps: np.ndarray | None, count: int, freq: str | None) -> np.ndarray | None:
    """The forecast's timestamps: the history's last step repeated, or calendar months for a monthly model.

    None without two timestamps to step from. Fixed steps follow the history (as served before frequencies
    were recorded); months have no fixed step, so the model's frequency decides.
    """
    if stamps is None or len(stamps) < 2:
        return None
    last = np.asarray(stamps[-1], dtype="datetime64[us]")
    if freq and parse_freq(freq)[1] == "mo":
        return future_timestamps(last, count, freq)
    step = np.asarray(stamps[-1] - stamps[-2]).astype("timedelta64[us]")
    return last + step * np.arange(1, count + 1)


def _month_step(timestamps: np.ndarray) -> int | None:
    """The common count of months between rows, when every row falls on the same day of its month (or on the
    month's last day) at the same time: monthly data, whose steps in seconds vary."""
    stamps = np.asarray(timestamps, dtype="datetime64[us]")
    month = stamps.astype("datetime64[M]")
    into_month = stamps - month.astype("datetime64[us]")
    to_next = (month + 1).astype("datetime64[us]") - stamps
    if not ((into_month == into_month[0]).all() or (to_next == to_next[0]).all()):
        return None
    steps = np.diff(month.astype(np.int64))
    if (steps <= 0).any():
        return None
    values, counts = np.unique(steps, return_counts=True)
    return int(values[counts.argmax()]) if counts.max() >= len(steps) / 2 else None


def _freq_of_seconds(step: int) -> str:
    """The largest whole unit: 600 s -> "10m", 7200 s -> "2h", 90 s -> "90s"."""
    for unit in ("w", "d", "h", "m", "s"):
        if step % _UNIT_SECONDS[unit] == 0:
            return f"{step // _UNIT_SECONDS[unit]}{unit}"
    raise AssertionError("unreachable: every whole number of seconds is a count of seconds")


def infer_freq(timestamps: np.ndarray) -> str:
    """The regular step between rows: the most common one, when it is the step of most rows.

    Raises when the step cannot be told apart from gaps (no step covers half the rows, or it is under a
    second): the caller then names the ``freq`` to use.
    """
    if len(timestamps) < 2:
        raise ValueError("at least two timestamps are needed to infer a frequency (give the frequency: --freq)")
    months = _month_step(timestamps)
    if months is not None:
        return f"{months}mo"
    micros = np.diff(np.asarray(timestamps, dtype="datetime64[us]").astype(np.int64))
    values, counts = np.unique(micros, return_counts=True)
    step, share = int(values[counts.argmax()]), counts.max() / len(micros)
    if step <= 0 or step % 1_000_000 or share < 0.5:
        common = np.argsort(-counts)[:3]
        seen = ", ".join(f"{values[i] / 1e6:g} s x{counts[i]}" for i in common)
        raise ValueError(f"cannot infer a regular sampling step (most common steps: {seen}): give one with --freq")
    return _freq_of_seconds(step // 1_000_000)
