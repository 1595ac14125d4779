"""From a dataset name to scaled train/validation/test windows, following the papers' protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from arcast_core.files import sha256_file
from forecasting.datasets import KNOWN_DATASETS, resolve_dataset
from forecasting.loading import DataError, DuplicatePolicy, GapPolicy, MissingPolicy, TimeSeriesTable, read_table
from forecasting.splits import (
    FoldBorders,
    SplitBorders,
    StandardScaler,
    describe_split,
    fold_borders,
    split_borders,
)
from forecasting.time_features import infer_freq, normalize_freq, time_features

Features = Literal["S", "M"]


@dataclass
class DataConfig:
    """What to load and how to cut it into windows.

    features: "S" forecasts the target alone (univariate), "M" forecasts every channel (multivariate).
    label_len: known values handed to a decoder before the horizon (Informer); 0 for other models.
    """

    dataset: str = "ETTh1"
    features: Features = "S"
    target: str = "OT"
    lookback: int = 96
    horizon: int = 24
    label_len: int = 0
    missing: MissingPolicy = "error"
    date_column: str = "date"
    split: str | None = None  # default: the known dataset's protocol, else "ratio" (forecasting.splits)
    freq: str | None = None  # default: the known dataset's, else inferred from the timestamps
    duplicates: DuplicatePolicy = "error"  # rows sharing a timestamp (forecasting.loading)
    gaps: GapPolicy = "error"  # missing steps in the time grid
    na_values: list[str] = field(default_factory=list)  # cell texts read as missing, e.g. ["-9999"]
    data_dir: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("data_dir")  # where the data lives is machine-specific, not part of the model's identity
        return out


class WindowDataset:
    """All (lookback, horizon) windows of one split, scaled, gathered in vectorised batches."""

    def __init__(self, values: np.ndarray, marks: np.ndarray, lookback: int, horizon: int, label_len: int) -> None:
        if len(values) < lookback + horizon:
            raise ValueError(f"a split of {len(values)} rows is shorter than lookback + horizon = {lookback + horizon}")
        self.values, self.marks = values, marks
        self.lookback, self.horizon, self.label_len = lookback, horizon, label_len
        self._x = sliding_window_view(values, lookback, axis=0)  # (N', C, L) views, no copy
        self._y = sliding_window_view(values[lookback:], horizon, axis=0)
        self._mx = sliding_window_view(marks, lookback, axis=0)
        self._my = sliding_window_view(marks[lookback - label_len :], label_len + horizon, axis=0)

    def __len__(self) -> int:
        return len(self.values) - self.lookback - self.horizon + 1

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """x (B, L, C), y (B, H, C), x_mark (B, L, F), y_mark (B, label_len + H, F)."""

        def take(view: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(view[index].transpose(0, 2, 1)))

        return {"x": take(self._x), "y": take(self._y), "x_mark": take(self._mx), "y_mark": take(self._my)}

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        rng: np.random.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Every window once (this shard's share when ``shard = (rank, world)``); the last batch may be short."""
        order = np.arange(len(self))
        if shuffle:
            (rng or np.random.default_rng()).shuffle(order)
        rank, world = shard
        order = order[rank::world]
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


def resolve_freq(config: DataConfig, timestamps: Callable[[], np.ndarray]) -> str:
    """The data's frequency: given, the known dataset's, or read off the timestamps (asked for only then)."""
    if config.freq:
        freq = config.freq
    elif config.dataset in KNOWN_DATASETS:
        freq = KNOWN_DATASETS[config.dataset].freq
    else:
        freq = infer_freq(timestamps())
    return normalize_freq(freq)


def _read(path: str | Path, config: DataConfig, freq: str | None = None) -> TimeSeriesTable:
    """The data file read with the config's columns and loading policies."""
    columns = [config.target] if config.features == "S" else None
    return read_table(
        path,
        date_column=config.date_column,
        missing=config.missing,
        columns=columns,
        duplicates=config.duplicates,
        gaps=config.gaps,
        na_values=config.na_values,
        freq=freq,
    )


def _read_timestamps(config: DataConfig) -> np.ndarray:
    path, spec = resolve_dataset(config.dataset, config.data_dir, download=False)
    return _read(path, config, config.freq or (spec.freq if spec else None)).timestamps


@dataclass
class DataFacts:
    """What a model's ``bind`` may read off its data, resolved here so that model modules never open data files.

    ``timestamps()`` are the series' own when the data was prepared, else read from the data file on first use
    (rebuilding a saved run: only a model that needs its timeline, AutoTimes, asks).
    """

    config: DataConfig
    n_channels: int
    freq: str
    _timestamps: np.ndarray | None = field(default=None, repr=False)

    def timestamps(self) -> np.ndarray:
        if self._timestamps is None:
            self._timestamps = _read_timestamps(self.config)
        return self._timestamps


def data_facts(config: DataConfig, n_channels: int) -> DataFacts:
    """The facts of data that was not prepared here (a saved run, a bench): the file is read only if needed."""
    facts = DataFacts(config, n_channels, "")

    def timestamps() -> np.ndarray:
        try:
            return facts.timestamps()
        except FileNotFoundError as err:
            raise ValueError(f"cannot tell the frequency of {config.dataset!r} ({err}): set the data's freq") from err

    facts.freq = resolve_freq(config, timestamps)
    return facts


@dataclass
class PreparedData:
    config: DataConfig
    table: TimeSeriesTable
    channels: tuple[str, ...]  # the model's input/output channels
    scaler: StandardScaler  # for those channels, fitted on the training rows
    borders: SplitBorders
    split: str  # the split kind the borders come from
    freq: str
    fingerprint: str  # sha256 of the source file
    train: WindowDataset
    val: WindowDataset
    test: WindowDataset

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def facts(self) -> DataFacts:
        return DataFacts(self.config, self.n_channels, self.freq, self.table.timestamps)

    def loading_report(self) -> dict[str, object]:
        """How the file was read and cut: recorded in the run and the artifact's manifest."""
        return {**self.table.loading_report(), "split": self.split, "borders": self.borders.as_dict()}

    def split_summary(self) -> str:
        """The split used, its rows and dates, for every command to print."""
        return describe_split(self.split, self.borders, self.table.timestamps)


def prepare_data(config: DataConfig) -> PreparedData:
    path, spec = resolve_dataset(config.dataset, config.data_dir)
    if config.features not in ("S", "M"):
        raise ValueError(f"features must be 'S' (target only) or 'M' (all channels), not {config.features!r}")
    table = _read(path, config, config.freq or (spec.freq if spec else None))
    if config.features == "S":
        table.column_index(config.target)
    need = config.lookback + config.horizon
    if len(table) < need:
        raise DataError(path, f"series has {len(table)} rows, shorter than lookback + horizon = {need}")
    if config.label_len > config.lookback:
        raise ValueError(f"label_len {config.label_len} exceeds lookback {config.lookback}")
    freq = normalize_freq(table.freq) if table.freq else resolve_freq(config, lambda: table.timestamps)
    split = config.split or (spec.split if spec else "ratio")
    try:
        borders = split_borders(len(table), split, config.lookback, table.timestamps)
    except ValueError as err:
        raise DataError(path, f"split {split!r}: {err}") from err
    scaler = StandardScaler.fit(table.values[slice(*borders.train)])
    scaled = scaler.transform(table.values)
    marks = time_features(table.timestamps, freq)

    def window(rows: tuple[int, int], name: str) -> WindowDataset:
        try:
            return WindowDataset(
                scaled[slice(*rows)], marks[slice(*rows)], config.lookback, config.horizon, config.label_len
            )
        except ValueError as err:
            raise DataError(path, f"{name} split: {err}") from err

    return PreparedData(
        config=config,
        table=table,
        channels=table.columns,
        scaler=scaler,
        borders=borders,
        split=split,
        freq=freq,
        fingerprint=sha256_file(Path(path)),
        train=window(borders.train, "train"),
        val=window(borders.val, "validation"),
        test=window(borders.test, "test"),
    )


@dataclass
class Fold:
    """One rolling-origin fold's rows and windows (``fold_windows``)."""

    borders: FoldBorders
    train: WindowDataset
    val: WindowDataset


def fold_windows(prepared: PreparedData, folds: int) -> list[Fold]:
    """The K rolling-origin folds of ``splits.fold_borders`` as windows, earliest first; 1 fold is the published split.

    Every fold is scaled with the scaler fitted on the whole training split: folds that validate inside the
    training split see its scaling, a mild look-ahead on the scale only (refitting per fold would change what the
    model sees between folds and the final run).
    """
    config = prepared.config
    spans = fold_borders(prepared.borders, folds, config.lookback, config.horizon)
    published = Fold(spans[-1], prepared.train, prepared.val)  # the last fold: the windows already prepared
    if folds == 1:
        return [published]
    scaled = prepared.scaler.transform(prepared.table.values)
    marks = time_features(prepared.table.timestamps, prepared.freq)

    def window(rows: tuple[int, int]) -> WindowDataset:
        return WindowDataset(
            scaled[slice(*rows)], marks[slice(*rows)], config.lookback, config.horizon, config.label_len
        )

    return [*(Fold(span, window(span.train), window(span.val)) for span in spans[:-1]), published]
