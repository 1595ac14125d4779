"""Read a time-series CSV (a date column plus numeric columns) with polars, strictly.

Every problem is reported with the file, the line (1-based, the header is line 1) and the column, so a
user can open the file at the right place, and names the flag that gets past it. Missing values, sentinel values
(``na_values``), duplicate timestamps and gaps in the time grid each follow an explicit policy, recorded with the data.
Files may have Windows line ends, a byte-order mark, or a header in a legacy 8-bit encoding (read as cp1252).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from serving.time_features import format_timestamp, freq_step, future_timestamps, infer_freq, parse_freq

MissingPolicy = Literal["error", "ffill", "interpolate"]
MISSING_POLICIES: tuple[str, ...] = ("error", "ffill", "interpolate")
DuplicatePolicy = Literal["error", "first", "last", "mean"]
DUPLICATE_POLICIES: tuple[str, ...] = ("error", "first", "last", "mean")
GapPolicy = Literal["error", "ffill", "interpolate", "keep"]
GAP_POLICIES: tuple[str, ...] = ("error", "ffill", "interpolate", "keep")
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
    freq: str | None = None  # the grid step the gaps were checked against (None: not checked)
    duplicates_policy: str = "error"
    duplicate_rows: int = 0  # rows dropped or merged by the duplicates policy
    gaps_policy: str = "error"
    gap_rows: int = 0  # rows inserted (and filled) by the gaps policy
    na_values: tuple[str, ...] = ()

    def loading_report(self) -> dict[str, object]:
        """The policies applied and what they changed, for the run and the manifest."""
        return {
            "missing": self.missing_policy,
            "filled_values": self.filled_values,
            "duplicates": self.duplicates_policy,
            "duplicate_rows": self.duplicate_rows,
            "gaps": self.gaps_policy,
            "gap_rows": self.gap_rows,
            "na_values": list(self.na_values),
            "freq": self.freq,
        }

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


def _read_frame(file: str) -> pl.DataFrame:
    """Every cell as a string; the header decoded as UTF-8 (a BOM dropped), else as cp1252, and stripped."""
    try:
        raw = Path(file).read_bytes()
    except OSError as err:
        raise DataError(file, f"cannot read CSV ({err})") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    try:
        frame = pl.read_csv(text.encode(), infer_schema_length=0)  # all strings: we validate every cell ourselves
    except pl.exceptions.PolarsError as err:
        raise DataError(file, f"cannot read CSV ({err})") from err
    return frame.rename({c: c.strip() for c in frame.columns})


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_values(file: str, frame: pl.DataFrame, names: list[str], na_values: tuple[str, ...]) -> np.ndarray:
    """(T, C) float64 with NaN where a cell is missing: empty, a null token, or a sentinel (as text or as number,
    so that -9999 also catches -9999.0)."""
    tokens = [*_NULL_TOKENS, *na_values]
    sentinels = [n for n in map(_number, na_values) if n is not None]
    matrix = np.empty((frame.height, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        text = frame[name].str.strip_chars()
        numbers = text.cast(pl.Float64, strict=False)
        is_missing = text.is_null() | text.is_in(tokens) | numbers.is_in(sentinels).fill_null(False)
        non_numeric = numbers.is_null() & ~is_missing
        if non_numeric.any():
            row = int(non_numeric.arg_true()[0])
            hint = " (a missing-value marker? list it with --na-values)"
            raise DataError(file, f"non-numeric value {text[row]!r}{hint}", _line(row), name)
        non_finite = numbers.is_infinite()
        if non_finite.any():
            row = int(non_finite.arg_true()[0])
            raise DataError(file, f"infinite value {text[row]!r}", _line(row), name)
        column = numbers.to_numpy().astype(np.float64)
        column[is_missing.to_numpy()] = np.nan
        matrix[:, j] = column
    return matrix


def _merge_duplicates(
    file: str, stamps: np.ndarray, values: np.ndarray, lines: np.ndarray, raw: pl.Series, policy: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per timestamp (``stamps`` non-decreasing): the first, the last, or the mean of each run."""
    same = np.flatnonzero(np.diff(stamps.astype(np.int64)) == 0) + 1
    if len(same) == 0:
        return stamps, values, lines
    if policy == "error":
        row = int(same[0])
        raise DataError(
            file,
            f"duplicate timestamp {raw[row]!r} (first at line {_line(row - 1)}; "
            "choose --duplicates first, last or mean)",
            _line(row),
            raw.name,
        )
    _, starts, counts = np.unique(stamps, return_index=True, return_counts=True)
    if policy == "first":
        keep = starts
    elif policy == "last":
        keep = starts + counts - 1
    else:
        present = ~np.isnan(values)
        sums = np.add.reduceat(np.where(present, values, 0.0), starts, axis=0)
        seen = np.add.reduceat(present.astype(np.int64), starts, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(seen > 0, sums / np.maximum(seen, 1), np.nan)
        return stamps[starts], means, lines[starts]
    return stamps[keep], values[keep], lines[keep]


def _grid(file: str, stamps: np.ndarray, freq: str) -> np.ndarray:
    """The regular timestamps from the first to the last at ``freq``."""
    count, unit = parse_freq(freq)
    if unit == "mo":
        span = stamps[-1].astype("datetime64[M]") - stamps[0].astype("datetime64[M]")
        steps = int(span.astype(np.int64)) // count
    else:
        steps = int((stamps[-1] - stamps[0]) // freq_step(freq).astype("timedelta64[us]"))
    if steps > 100 * len(stamps):
        raise DataError(file, f"a {freq} grid would hold {steps} rows for {len(stamps)} rows of data: check --freq")
    return np.concatenate([stamps[:1], future_timestamps(stamps[0], steps, freq)])


def _fill_gaps(
    file: str, stamps: np.ndarray, values: np.ndarray, lines: np.ndarray, raw_column: str, freq: str, policy: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows on the grid of ``freq``: an off-grid row or (under ``error``) a missing one is reported."""
    grid = _grid(file, stamps, freq)
    position = np.searchsorted(grid, stamps)
    off = (position >= len(grid)) | (grid[np.minimum(position, len(grid) - 1)] != stamps)
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise DataError(
            file,
            f"timestamp {format_timestamp(stamps[row])!r} is off the {freq} grid that starts at "
            f"{format_timestamp(stamps[0])!r} "
            "(the sampling step is not regular: give the right --freq, or --gaps keep)",
            int(lines[row]),
            raw_column,
        )
    if len(grid) == len(stamps):
        return stamps, values, lines
    if policy == "error":
        row = int(np.flatnonzero(np.diff(position) > 1)[0])
        missing = int(position[row + 1] - position[row] - 1)
        raise DataError(
            file,
            f"gap of {missing} missing {freq} step(s) after {format_timestamp(stamps[row])!r} "
            "(choose --gaps ffill, interpolate or keep)",
            int(lines[row + 1]),
            raw_column,
        )
    filled = np.full((len(grid), values.shape[1]), np.nan)
    filled[position] = values
    all_lines = np.full(len(grid), -1)
    all_lines[position] = lines
    return grid, filled, all_lines


def _fill(column: np.ndarray, method: str) -> np.ndarray:
    """Forward-fill or linearly interpolate NaN cells; so that no NaN reaches a model, leading ones are filled
    backwards and trailing ones (nothing to interpolate towards) forwards."""
    series = pl.Series(column).fill_nan(None)
    if method == "interpolate":
        series = series.interpolate()
    return series.forward_fill().backward_fill().to_numpy().astype(np.float64)


def _check_policy(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} policy {value!r} is not one of {allowed}")


def read_table(
    path: str | Path,
    date_column: str = "date",
    missing: MissingPolicy = "error",
    columns: list[str] | None = None,
    duplicates: DuplicatePolicy = "error",
    gaps: GapPolicy = "error",
    na_values: tuple[str, ...] | list[str] = (),
    freq: str | None = None,
) -> TimeSeriesTable:
    """Read and validate ``path``; ``columns`` selects numeric columns (default: all but the date).

    ``freq`` is the grid the gaps are checked against (default: inferred from the timestamps); ``gaps="keep"``
    leaves the rows as they are. ``na_values`` are cell texts read as missing (sensor sentinels such as -9999).
    """
    file = str(path)
    _check_policy("missing", missing, MISSING_POLICIES)
    _check_policy("duplicates", duplicates, DUPLICATE_POLICIES)
    _check_policy("gaps", gaps, GAP_POLICIES)
    frame = _read_frame(file)
    if date_column not in frame.columns:
        hint = " (name it with --date-column)"
        raise DataError(file, f"no date column {date_column!r} (columns: {frame.columns}){hint}", line=1)
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
    stamps = _parse_dates(file, dates).to_numpy().astype("datetime64[us]")
    if len(stamps) > 1:
        unsorted = np.flatnonzero(np.diff(stamps.astype(np.int64)) < 0)
        if len(unsorted):
            row = int(unsorted[0]) + 1
            raise DataError(
                file, f"unsorted timestamp {dates[row]!r} (earlier than the row before)", _line(row), date_column
            )
    na = tuple(str(v).strip() for v in na_values)
    values = _parse_values(file, frame, value_columns, na)
    lines = np.arange(frame.height) + 2
    n_rows = len(stamps)
    stamps, values, lines = _merge_duplicates(file, stamps, values, lines, dates, duplicates)
    duplicate_rows = n_rows - len(stamps)

    missing_cells = np.isnan(values)
    if missing == "error" and missing_cells.any():
        row, col = (int(i) for i in np.argwhere(missing_cells)[0])
        raise DataError(
            file,
            "missing value (choose --missing ffill or interpolate)",
            int(lines[row]),
            value_columns[col],
        )
    if freq is None and gaps != "keep" and len(stamps) > 1:
        try:
            freq = infer_freq(stamps)
        except ValueError as err:
            raise DataError(file, f"{err}, or --gaps keep", column=date_column) from err
    n_rows = len(stamps)
    if freq is not None and gaps != "keep" and len(stamps) > 1:
        stamps, values, lines = _fill_gaps(file, stamps, values, lines, date_column, freq, gaps)
    inserted = lines < 0
    for j, name in enumerate(value_columns):
        column = values[:, j]
        if not np.isnan(column).any():
            continue
        if np.isnan(column).all():
            raise DataError(file, "column has no values at all", column=name)
        result = column.copy()
        if missing_cells[:, j].any():
            by_missing = _fill(column, missing)
            result[~inserted] = np.where(missing_cells[:, j], by_missing[~inserted], column[~inserted])
        if inserted.any():
            result[inserted] = _fill(column, gaps)[inserted]
        values[:, j] = result
    return TimeSeriesTable(
        source=file,
        timestamps=stamps,
        values=values.astype(np.float32),
        columns=tuple(value_columns),
        missing_policy=missing,
        filled_values=int(missing_cells.sum()),
        freq=freq,
        duplicates_policy=duplicates,
        duplicate_rows=duplicate_rows,
        gaps_policy=gaps,
        gap_rows=len(stamps) - n_rows,
        na_values=na,
    )
