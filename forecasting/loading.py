"""Read a time-series CSV (a date column plus numeric columns) with polars, strictly.

Every problem is reported with the file, the line (1-based, the header is line 1) and the column, so a
user can open the file at the right place. Missing values follow an explicit policy, recorded with the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

MissingPolicy = Literal["error", "ffill", "interpolate"]
MISSING_POLICIES: tuple[str, ...] = ("error", "ffill", "interpolate")
_DATE_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d",
    "%Y-%m-%dT%H:%M:%S",
)
_NULL_TOKENS = ("", "NA", "NaN", "nan", "null", "NULL", "None")


class DataError(ValueError):
    """Bad input data, with the place it was found."""

    def __init__(self, file: str | Path, reason: str, line: int | None = None, column: str | None = None) -> None:
        where = str(file)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {reason}")
        self.file, self.line, self.column, self.reason = str(file), line, column, reason


@dataclass(frozen=True)
class TimeSeriesTable:
    """A validated table: increasing timestamps and a float matrix (time x channels)."""

    source: str
    timestamps: np.ndarray  # datetime64[us], strictly increasing
    values: np.ndarray  # float32 (T, C)
    columns: tuple[str, ...]
    missing_policy: str
    filled_values: int  # how many missing cells the policy filled

    def __len__(self) -> int:
        return len(self.timestamps)

    def column_index(self, name: str) -> int:
        if name not in self.columns:
            raise DataError(self.source, f"target column {name!r} not found (columns: {list(self.columns)})")
        return self.columns.index(name)


def _line(row: int) -> int:
    return row + 2  # header is line 1, first data row is line 2


def _parse_dates(file: str, raw: pl.Series) -> pl.Series:
    best: tuple[int, pl.Series | None, str] = (-1, None, "")
    for fmt in _DATE_FORMATS:
        parsed = raw.str.strptime(pl.Datetime("us"), fmt, strict=False)
        ok = int(parsed.is_not_null().sum())
        if ok == len(raw):
            return parsed
        if ok > best[0]:
            best = (ok, parsed, fmt)
    ok, parsed, fmt = best
    if parsed is None or ok == 0:
        raise DataError(file, f"cannot parse date {raw[0]!r} (tried formats {list(_DATE_FORMATS)})", _line(0), raw.name)
    bad = int(parsed.is_null().arg_true()[0])
    raise DataError(file, f"unparsable date {raw[bad]!r} (the other rows use {fmt!r})", _line(bad), raw.name)


def read_table(
    path: str | Path,
    date_column: str = "date",
    missing: MissingPolicy = "error",
    columns: list[str] | None = None,
) -> TimeSeriesTable:
    """Read and validate ``path``; ``columns`` selects numeric columns (default: all but the date)."""
    file = str(path)
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing policy {missing!r} is not one of {MISSING_POLICIES}")
    try:
        frame = pl.read_csv(path, infer_schema_length=0)  # all strings: we validate every cell ourselves
    except (OSError, pl.exceptions.PolarsError) as err:
        raise DataError(file, f"cannot read CSV ({err})") from err
    if date_column not in frame.columns:
        raise DataError(file, f"no date column {date_column!r} (columns: {frame.columns})", line=1)
    value_columns = [c for c in frame.columns if c != date_column] if columns is None else columns
    for name in value_columns:
        if name not in frame.columns:
            raise DataError(file, f"column {name!r} not found (columns: {frame.columns})", line=1)
    if not value_columns:
        raise DataError(file, "no numeric columns beside the date column", line=1)
    if frame.height == 0:
        raise DataError(file, "no data rows")

    dates = frame[date_column].str.strip_chars()
    null_dates = dates.is_null() | (dates == "")
    if null_dates.any():
        raise DataError(file, "missing date", _line(int(null_dates.arg_true()[0])), date_column)
    stamps = _parse_dates(file, dates)
    diffs = stamps.diff().dt.total_microseconds()
    if frame.height > 1:
        bad = (diffs <= 0).arg_true()
        if len(bad):
            row = int(bad[0])
            kind = "duplicate" if diffs[row] == 0 else "unsorted (earlier than the row before)"
            raise DataError(file, f"{kind} timestamp {dates[row]!r}", _line(row), date_column)

    matrix = np.empty((frame.height, len(value_columns)), dtype=np.float64)
    filled = 0
    for j, name in enumerate(value_columns):
        text = frame[name].str.strip_chars()
        is_missing = text.is_null() | text.is_in(list(_NULL_TOKENS))
        numbers = text.cast(pl.Float64, strict=False)
        non_numeric = numbers.is_null() & ~is_missing
        if non_numeric.any():
            row = int(non_numeric.arg_true()[0])
            raise DataError(file, f"non-numeric value {text[row]!r}", _line(row), name)
        non_finite = numbers.is_infinite()
        if non_finite.any():
            row = int(non_finite.arg_true()[0])
            raise DataError(file, f"infinite value {text[row]!r}", _line(row), name)
        if is_missing.any():
            row = int(is_missing.arg_true()[0])
            if missing == "error":
                raise DataError(
                    file, "missing value (choose a missing-value policy: ffill or interpolate)", _line(row), name
                )
            filled += int(is_missing.sum())
            numbers = numbers.fill_nan(None)
            numbers = numbers.forward_fill() if missing == "ffill" else numbers.interpolate()
            # Leading gaps have nothing before them: fill them backwards so no NaN reaches a model.
            numbers = numbers.backward_fill()
            if numbers.is_null().all():
                raise DataError(file, "column has no values at all", column=name)
        matrix[:, j] = numbers.to_numpy()
    return TimeSeriesTable(
        source=file,
        timestamps=stamps.to_numpy(),
        values=matrix.astype(np.float32),
        columns=tuple(value_columns),
        missing_policy=missing,
        filled_values=filled,
    )
