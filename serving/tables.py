"""Series tables for the client CLI and batch jobs: long format, CSV or parquet, read with polars.

Columns: ``series_id`` (optional: one series when absent), the time (optional: ``timestamp`` or ``date``, as
training reads it, or any column named with ``--date-column``), and the values: a ``value`` column for a
one-channel model, or one column per model channel (named as in the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

SERIES_ID, TIMESTAMP, VALUE = "series_id", "timestamp", "value"
TIME_COLUMNS = (TIMESTAMP, "date")  # looked for in this order when no date column is named


class TableError(ValueError):
    pass


@dataclass
class SeriesInput:
    id: str
    values: np.ndarray  # (steps, channels) float64
    timestamps: np.ndarray | None  # (steps,) datetime64[us]


def scan_table(path: str | Path) -> pl.LazyFrame:
    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: no such file")
    if path.suffix.lower() == ".parquet":
        return pl.scan_parquet(path)
    if path.suffix.lower() == ".csv":
        return pl.scan_csv(path, try_parse_dates=True)
    raise TableError(f"{path}: expected a .csv or .parquet file")


def value_columns(columns: list[str], channels: list[str]) -> list[str]:
    """The input columns holding the model's channels, in channel order."""
    if all(c in columns for c in channels):
        return channels
    if len(channels) == 1 and VALUE in columns:
        return [VALUE]
    want = f"a {VALUE!r} column or " if len(channels) == 1 else ""
    raise TableError(f"input needs {want}columns {channels} (has {columns})")


def time_column(columns: list[str], date_column: str | None = None) -> str | None:
    """The column holding the time: ``date_column`` if named (it must exist), else ``timestamp`` or ``date``."""
    if date_column is not None:
        if date_column not in columns:
            raise TableError(f"no date column {date_column!r} (columns: {columns}); name it with --date-column")
        return date_column
    return next((c for c in TIME_COLUMNS if c in columns), None)


def series_from_frame(frame: pl.DataFrame, channels: list[str], date_column: str | None = None) -> list[SeriesInput]:
    """Group a long table into series, each sorted by timestamp when there is one (input order otherwise)."""
    stamp_column = time_column(frame.columns, date_column)
    if stamp_column is not None and stamp_column != TIMESTAMP:
        frame = frame.drop(TIMESTAMP, strict=False).rename({stamp_column: TIMESTAMP})
    cols = value_columns(frame.columns, channels)
    if SERIES_ID not in frame.columns:
        frame = frame.with_columns(pl.lit("0").alias(SERIES_ID))
    frame = frame.with_columns(pl.col(SERIES_ID).cast(pl.String))
    has_time = TIMESTAMP in frame.columns
    if has_time and frame.schema[TIMESTAMP] not in (pl.Datetime, pl.Date):
        frame = frame.with_columns(pl.col(TIMESTAMP).str.to_datetime(strict=False))
    out = []
    for (sid,), group in frame.group_by(SERIES_ID, maintain_order=True):
        if has_time:
            group = group.sort(TIMESTAMP)
        values = group.select(pl.col(c).cast(pl.Float64, strict=False) for c in cols).to_numpy()
        stamps = group[TIMESTAMP].cast(pl.Datetime("us")).to_numpy() if has_time else None
        out.append(SeriesInput(str(sid), values, stamps))
    return out


def forecast_frame(
    series_id: str, values: np.ndarray, channels: list[str], timestamps: np.ndarray | None
) -> pl.DataFrame:
    """Long output rows: series_id, step (1..H), timestamp (when known), one column per channel."""
    data: dict[str, object] = {SERIES_ID: [series_id] * len(values), "step": np.arange(1, len(values) + 1)}
    if timestamps is not None:
        data[TIMESTAMP] = timestamps
    names = [VALUE] if len(channels) == 1 else channels
    for j, name in enumerate(names):
        data[name] = values[:, j]
    return pl.DataFrame(data)
