"""Series files name their time as training does: a `date` or `timestamp` column, or one named by --date-column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from serving.batch import run_batch
from serving.tables import TableError, series_from_frame

MODEL = "etth1-arnet"


def frame(time_name: str) -> pl.DataFrame:
    stamps = np.datetime64("2021-03-01T00:00", "us") + np.arange(5) * np.timedelta64(10, "m")
    return pl.DataFrame({time_name: [str(t) for t in stamps[::-1]], "value": np.arange(5.0)[::-1]})


@pytest.mark.parametrize("name", ["date", "timestamp"])
def test_date_or_timestamp_is_found(name: str) -> None:
    (series,) = series_from_frame(frame(name), ["OT"])
    assert series.timestamps is not None and (np.diff(series.timestamps) == np.timedelta64(10, "m")).all()
    assert series.values[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # sorted by time


def test_a_named_date_column() -> None:
    (series,) = series_from_frame(frame("Zeit"), ["OT"], date_column="Zeit")
    assert series.timestamps is not None and len(series.timestamps) == 5
    with pytest.raises(TableError, match="--date-column"):
        series_from_frame(frame("Zeit"), ["OT"], date_column="when")


def test_batch_reads_a_named_date_column(model_store: Path, etth1_slice: Path, tmp_path: Path) -> None:
    history = pl.read_csv(etth1_slice).slice(0, 72).select(pl.col("date").alias("Zeit"), pl.col("OT").alias("value"))
    history.write_csv(tmp_path / "history.csv")
    out = tmp_path / "out.parquet"
    run_batch(model_store, MODEL, tmp_path / "history.csv", out, horizon=3, progress=False, date_column="Zeit")
    stamps = pl.read_parquet(out)["timestamp"].to_list()
    assert [str(t) for t in stamps] == ["2016-07-04 00:00:00", "2016-07-04 01:00:00", "2016-07-04 02:00:00"]
