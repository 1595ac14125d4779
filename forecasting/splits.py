"""The published train/validation/test splits and the train-only scaler."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.time_features import format_timestamp

_HOURS_PER_MONTH = 30 * 24


@dataclass(frozen=True)
class SplitBorders:
    """Row ranges [start, end) of each split; val and test start ``lookback`` rows early, as in the papers."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


SPLIT_HELP = "ett-hourly, ett-minute (12/4/4 months), ratio[:0.7,0.1,0.2] or dates:TRAIN_END,VAL_END"


def _ratio_ends(n_rows: int, spec: str) -> tuple[int, int, int]:
    """``ratio`` (70/10/20, test and train rounded down as in the papers) or ``ratio:TRAIN,VAL,TEST``."""
    parts = [float(p) for p in spec.split(",")] if spec else [0.7, 0.1, 0.2]
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise ValueError(f"ratio:{spec} needs three non-negative shares that sum to 1")
    n_train, n_test = int(n_rows * parts[0]), int(n_rows * parts[2])
    return n_train, n_rows - n_test, n_rows


def _date_ends(spec: str, timestamps: np.ndarray | None) -> tuple[int, int, int]:
    """``dates:TRAIN_END,VAL_END``: training rows are before TRAIN_END, validation rows before VAL_END."""
    if timestamps is None:
        raise ValueError("a dates split needs the timestamps")
    try:
        train_end, val_end = (np.datetime64(d.strip(), "us") for d in spec.split(","))
    except ValueError as err:
        raise ValueError(f"dates:{spec} needs two dates, TRAIN_END,VAL_END ({err})") from err
    if not train_end < val_end:
        raise ValueError(f"dates:{spec}: TRAIN_END must come before VAL_END")
    stamps = np.asarray(timestamps, dtype="datetime64[us]")
    ends = (int(np.searchsorted(stamps, train_end)), int(np.searchsorted(stamps, val_end)), len(stamps))
    if not 0 < ends[0] < ends[1] < ends[2]:
        raise ValueError(f"dates:{spec} leaves a split empty (data from {stamps[0]} to {stamps[-1]})")
    return ends


def split_borders(n_rows: int, kind: str, lookback: int, timestamps: np.ndarray | None = None) -> SplitBorders:
    """Cut ``n_rows`` by ``kind`` (see SPLIT_HELP; "ett_hourly", "ett_minute" are the recorded spellings)."""
    name, _, spec = kind.partition(":")
    name = name.replace("-", "_")
    if name in ("ett_hourly", "ett_minute") and not spec:
        per_hour = 1 if name == "ett_hourly" else 4
        month = _HOURS_PER_MONTH * per_hour
        train_end, val_end, test_end = 12 * month, 16 * month, 20 * month
        if n_rows < test_end:
            raise ValueError(f"ETT split needs {test_end} rows, the file has {n_rows}")
    elif name == "ratio":
        train_end, val_end, test_end = _ratio_ends(n_rows, spec)
    elif name == "dates":
        train_end, val_end, test_end = _date_ends(spec, timestamps)
    else:
        raise ValueError(f"unknown split {kind!r} ({SPLIT_HELP})")
    if lookback >= train_end:
        raise ValueError(f"lookback {lookback} is not shorter than the training split ({train_end} rows)")
    return SplitBorders(
        train=(0, train_end),
        val=(max(train_end - lookback, 0), val_end),
        test=(max(val_end - lookback, 0), test_end),
    )


def describe_split(kind: str, borders: SplitBorders, timestamps: np.ndarray) -> str:
    """One line per split: its own rows (without the lookback rows borrowed before it) and their dates."""
    own = {"train": borders.train, "val": (borders.train[1], borders.val[1]), "test": (borders.val[1], borders.test[1])}
    lines = [f"split {kind}:"]
    for name, (start, end) in own.items():
        span = (
            f"{format_timestamp(timestamps[start])} .. {format_timestamp(timestamps[end - 1])}"
            if end > start
            else "empty"
        )
        lines.append(f"  {name:<5} rows {start}-{end - 1} ({end - start} rows) {span}")
    return "\n".join(lines)


@dataclass(frozen=True)
class FoldBorders:
    """One rolling-origin fold: row ranges [start, end) to train on and to validate on (``lookback`` rows early)."""

    train: tuple[int, int]
    val: tuple[int, int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"train": list(self.train), "val": list(self.val)}


MIN_TRAIN_SHARE = 0.5  # the earliest fold trains on at least this share of the training split's rows


def fold_block_length(borders: SplitBorders, folds: int) -> int:
    """Rows in each earlier fold's validation block: the validation split's length, shortened so that K - 1 blocks
    carved off the end of the training split leave the earliest fold ``MIN_TRAIN_SHARE`` of it (a fold trained
    on far less data than the final model would favour settings that suit small data)."""
    train_end = borders.train[1]
    val_rows = borders.val[1] - train_end
    if folds == 1:
        return val_rows
    return min(val_rows, int(train_end * (1 - MIN_TRAIN_SHARE)) // (folds - 1))


def fold_borders(borders: SplitBorders, folds: int, lookback: int, horizon: int) -> list[FoldBorders]:
    """K rolling-origin folds inside the training + validation period, earliest first.

    The last fold is the published split (train on the training split, validate on the validation split). Each
    earlier fold validates on the block of ``fold_block_length`` rows that ends where the next fold's block
    starts, and trains on every row before its block; its validation windows start ``lookback`` rows early, as the
    published split's do, so no training target lies in its validation block. Raises ValueError when the blocks
    would be shorter than the horizon or the earliest fold too short for one training window.
    """
    if folds < 1:
        raise ValueError(f"--folds must be at least 1, got {folds}")
    block = fold_block_length(borders, folds)
    train_end, val_end = borders.train[1], borders.val[1]
    if block < horizon:
        raise ValueError(
            f"{folds} folds leave validation blocks of {block} rows, shorter than the horizon {horizon}: "
            "use fewer folds"
        )
    earliest = train_end - (folds - 1) * block
    if earliest < lookback + horizon:
        raise ValueError(
            f"with {folds} folds the earliest trains on {earliest} rows, fewer than lookback + horizon = "
            f"{lookback + horizon}: use fewer folds or a shorter lookback"
        )
    starts = [train_end - (folds - 1 - k) * block for k in range(folds)]
    ends = [*starts[1:], val_end]
    return [FoldBorders((0, start), (max(start - lookback, 0), end)) for start, end in zip(starts, ends, strict=True)]


@dataclass(frozen=True)
class StandardScaler:
    """Per-channel mean/std fitted on the training rows only (sklearn's definition: population std)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> StandardScaler:
        mean = values.mean(axis=0, dtype=np.float64)
        std = values.std(axis=0, dtype=np.float64)
        std = np.where(std > 0, std, 1.0)  # a constant channel is left unscaled rather than divided by zero
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return (values * self.std + self.mean).astype(np.float32)

    def select(self, index: list[int]) -> StandardScaler:
        return StandardScaler(self.mean[index], self.std[index])

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> StandardScaler:
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32))
