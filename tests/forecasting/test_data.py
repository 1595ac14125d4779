"""Data layer: published splits, train-only scaling, windows, calendar features, and clear errors."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from arcast_core.data_dir import DatasetNotFound, find_data_dir
from arcast_core.files import git_blob_sha1, sha256_file
from forecasting import datasets
from forecasting.data import DataConfig, fold_windows, prepare_data
from forecasting.datasets import KNOWN_DATASETS, DatasetSpec, download_dataset, known_by_checksum, resolve_dataset
from forecasting.loading import DataError, read_table
from forecasting.splits import fold_block_length, fold_borders, split_borders
from forecasting.time_features import infer_freq, time_features


@pytest.fixture(scope="module")
def etth1(data_dir: Path):
    return prepare_data(
        DataConfig(dataset="ETTh1", features="M", lookback=96, horizon=24, label_len=48, data_dir=str(data_dir))
    )


def test_etth_split_is_12_4_4_months(etth1) -> None:
    b = etth1.borders
    assert b.train == (0, 8640)
    assert b.val == (8640 - 96, 8640 + 2880)
    assert b.test == (8640 + 2880 - 96, 8640 + 2 * 2880)
    assert len(etth1.test) == 2880 - 24 + 1  # every test window, none dropped


def test_ettm_split_is_four_times_longer(data_dir: Path) -> None:
    prepared = prepare_data(DataConfig(dataset="ETTm1", lookback=96, horizon=96, data_dir=str(data_dir)))
    assert prepared.borders.train == (0, 4 * 8640)
    assert prepared.borders.test[1] == 4 * 5 * 2880
    assert prepared.freq == "15m"


def test_ratio_split_for_other_data(data_dir: Path) -> None:
    prepared = prepare_data(DataConfig(dataset="exchange_rate", lookback=96, horizon=24, data_dir=str(data_dir)))
    n = len(prepared.table)
    assert prepared.borders.train == (0, int(n * 0.7))
    assert prepared.borders.test == (n - int(n * 0.2) - 96, n)


def test_scaler_is_fitted_on_train_rows_only(etth1) -> None:
    train_rows = etth1.table.values[: etth1.borders.train[1]]
    np.testing.assert_allclose(etth1.scaler.mean, train_rows.mean(axis=0, dtype=np.float64), rtol=1e-5)
    np.testing.assert_allclose(etth1.scaler.std, train_rows.std(axis=0, dtype=np.float64), rtol=1e-5)
    all_rows_mean = etth1.table.values.mean(axis=0)
    assert not np.allclose(etth1.scaler.mean, all_rows_mean, rtol=1e-3)


def test_windows_line_up_with_rows(etth1) -> None:
    batch = etth1.test.batch(np.array([0, 5]))
    start = etth1.borders.test[0]
    scaled = etth1.scaler.transform(etth1.table.values)
    np.testing.assert_allclose(batch["x"][1].numpy(), scaled[start + 5 : start + 5 + 96])
    np.testing.assert_allclose(batch["y"][1].numpy(), scaled[start + 5 + 96 : start + 5 + 120])
    assert batch["y_mark"].shape == (2, 48 + 24, 4)  # label_len + horizon calendar rows, 4 hourly features


def test_univariate_selects_target(data_dir: Path) -> None:
    prepared = prepare_data(DataConfig(dataset="ETTh1", features="S", target="HUFL", data_dir=str(data_dir)))
    assert prepared.channels == ("HUFL",)
    with pytest.raises(DataError, match="'nope'"):
        prepare_data(DataConfig(dataset="ETTh1", features="S", target="nope", data_dir=str(data_dir)))


def test_time_features_are_centred_and_bounded() -> None:
    stamps = np.arange("2016-07-01T00", "2016-07-08T00", dtype="datetime64[h]").astype("datetime64[us]")
    feats = time_features(stamps, "1h")
    assert feats.shape == (168, 4)
    assert feats.min() >= -0.5 and feats.max() <= 0.5
    assert feats[:24, 0].tolist() == pytest.approx(np.arange(24) / 23 - 0.5)
    assert infer_freq(stamps) == "1h"


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "series.csv"
    path.write_text(text)
    return path


GOOD = "date,a,b\n2020-01-01 00:00:00,1,2\n2020-01-01 01:00:00,2,3\n2020-01-01 02:00:00,3,4\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("when,a\n2020-01-01,1\n", r"line 1: no date column 'date'"),
        ("date,a\n2020-01-01,1\n2020-13-45,2\n", r"line 3, column 'date': unparsable date '2020-13-45'"),
        ("date,a\n2020-01-01,1\n2020-01-01,2\n", r"line 3, column 'date': duplicate timestamp"),
        ("date,a\n2020-01-02,1\n2020-01-01,2\n", r"line 3, column 'date': unsorted"),
        ("date,a\n2020-01-01,1\n2020-01-02,abc\n", r"line 3, column 'a': non-numeric value 'abc'"),
        ("date,a\n2020-01-01,1\n2020-01-02,\n2020-01-03,3\n", r"line 3, column 'a': missing value"),
        ("date,a\n2020-01-01,1\n,2\n", r"line 3, column 'date': missing date"),
    ],
)
def test_bad_input_names_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(DataError, match=message) as info:
        read_table(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("policy", "expected"), [("ffill", [1.0, 1.0, 3.0, 4.0]), ("interpolate", [1.0, 2.0, 3.0, 4.0])]
)
def test_missing_value_policies(tmp_path: Path, policy: str, expected: list[float]) -> None:
    path = write_csv(tmp_path, "date,a\n2020-01-01,1\n2020-01-02,NaN\n2020-01-03,3\n2020-01-04,4\n")
    table = read_table(path, missing=policy)  # type: ignore[arg-type]
    assert table.values[:, 0].tolist() == expected
    assert table.filled_values == 1 and table.missing_policy == policy


def test_other_date_formats(tmp_path: Path) -> None:
    table = read_table(write_csv(tmp_path, "date,a\n1990/1/1 0:00,1\n1990/1/2 0:00,2\n"))
    assert str(table.timestamps[1])[:10] == "1990-01-02"


def test_series_shorter_than_lookback_plus_horizon(tmp_path: Path) -> None:
    path = write_csv(tmp_path, GOOD)
    with pytest.raises(DataError, match=r"3 rows, shorter than lookback \+ horizon = 12"):
        prepare_data(DataConfig(dataset=str(path), target="a", lookback=8, horizon=4))


def test_custom_csv_with_ratio_split(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "slice.csv"
    pl.read_csv(data_dir / "ETT/ETTh1.csv").head(1000).write_csv(path)
    prepared = prepare_data(DataConfig(dataset=str(path), lookback=48, horizon=12))
    assert prepared.borders.train == (0, 700) and prepared.freq == "1h"


def test_unknown_dataset_and_unpinned_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFound, match="neither a known dataset"):
        resolve_dataset("no-such-data")
    monkeypatch.setitem(KNOWN_DATASETS, "ETTm2", replace(KNOWN_DATASETS["ETTm2"], sha256=None, git_blob=None))
    with pytest.raises(DatasetNotFound, match="no pinned checksum"):
        resolve_dataset("ETTm2", data_dir=tmp_path)  # refused before any network access


def test_a_download_is_kept_only_when_its_pinned_git_blob_matches(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ETTm2 is pinned by its id in the ETDataset tree; that tree's id of ETTm1 checks the mechanism on a real file."""
    source = data_dir / "ETT/ETTm1.csv"
    etdataset_ettm1 = "62c9f979e2dc5b05d9cc5b38891e60e6baf77417"  # ETT-small/ETTm1.csv at the commit _ETT_URL pins
    assert git_blob_sha1(source) == etdataset_ettm1
    spec = DatasetSpec("mine", "mine.csv", source.as_uri(), None, "15m", "ett_minute", git_blob=etdataset_ettm1)
    download_dataset(spec, tmp_path / "mine.csv")
    assert sha256_file(tmp_path / "mine.csv") == sha256_file(source)
    with pytest.raises(DatasetNotFound, match="does not match its pinned git blob"):
        download_dataset(replace(spec, git_blob="0" * 40), tmp_path / "other.csv")
    assert not (tmp_path / "other.csv").exists()  # nothing half-kept
    assert known_by_checksum(source) == KNOWN_DATASETS["ETTm1"]  # its sha256 pin
    monkeypatch.setattr(datasets, "KNOWN_DATASETS", {"mine": spec})
    assert known_by_checksum(tmp_path / "mine.csv") == spec  # a file given by path is recognised by its git pin
    assert KNOWN_DATASETS["ETTm2"].pinned


def test_find_data_dir_prefers_explicit_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    from_env = tmp_path / "env"
    from_env.mkdir()
    monkeypatch.setenv("ARCAST_DATA_DIR", str(from_env))
    assert find_data_dir(str(explicit)) == explicit.resolve()
    assert find_data_dir(None) == from_env.resolve()
    with pytest.raises(FileNotFoundError, match="given explicitly"):
        find_data_dir(str(tmp_path / "nope"))
    monkeypatch.setenv("ARCAST_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="ARCAST_DATA_DIR"):
        find_data_dir(None)


def test_fold_borders_roll_the_origin_up_to_the_published_split() -> None:
    lookback, horizon = 168, 24
    borders = split_borders(17420, "ett_hourly", lookback)
    folds = fold_borders(borders, 3, lookback, horizon)
    assert (folds[-1].train, folds[-1].val) == (borders.train, borders.val)  # the last fold is the published split
    block = fold_block_length(borders, 3)
    assert block == 2160  # two validation-length blocks would leave the earliest fold a third of the training rows
    for fold, later in itertools.pairwise(folds):
        assert fold.val[0] + lookback == fold.train[1]  # validation windows start lookback rows early
        assert fold.val[1] == later.train[1] == later.val[0] + lookback  # blocks end where the next one starts
        assert fold.val[1] - fold.train[1] == block
    for fold in folds:
        assert fold.train[0] == 0
        train_targets = set(range(lookback, fold.train[1]))
        val_targets = set(range(fold.val[0] + lookback, fold.val[1]))
        assert not train_targets & val_targets
    assert folds[0].train[1] >= borders.train[1] // 2
    assert fold_borders(borders, 1, lookback, horizon)[0].val == borders.val


def test_too_many_folds_or_none_are_refused() -> None:
    borders = split_borders(2000, "ratio", 48)
    with pytest.raises(ValueError, match="at least 1"):
        fold_borders(borders, 0, 48, 12)
    with pytest.raises(ValueError, match="shorter than the horizon"):
        fold_borders(borders, 200, 48, 12)
    with pytest.raises(ValueError, match="fewer than lookback"):  # the earliest fold trains on rows 0-1200
        fold_borders(split_borders(2000, "ratio", 1195), 2, 1195, 12)


def test_fold_windows_line_up_with_rows(etth1) -> None:
    folds = fold_windows(etth1, 2)
    assert folds[-1].train is etth1.train and len(folds[-1].val) == len(etth1.val)
    scaled = etth1.scaler.transform(etth1.table.values)  # every fold keeps the training split's scaler
    first = folds[0]
    batch = first.val.batch(np.array([0]))
    start = first.borders.val[0]
    np.testing.assert_allclose(batch["x"][0].numpy(), scaled[start : start + 96])
    np.testing.assert_allclose(batch["y"][0].numpy(), scaled[start + 96 : start + 120])
    assert len(first.train) == first.borders.train[1] - 96 - 24 + 1
