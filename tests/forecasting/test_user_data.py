"""Users' own files (issue 18): loading policies, any regular step, explicit splits, and a 10-minute series
trained, exported, served and forecast end to end with the right future timestamps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from forecasting.data import DataConfig, prepare_data
from forecasting.datasets import resolve_dataset
from forecasting.loading import DataError, read_table
from forecasting.splits import split_borders
from serving.time_features import (
    feature_names,
    future_from_history,
    future_timestamps,
    infer_freq,
    normalize_freq,
    time_features,
)

START = np.datetime64("2021-03-01T00:00", "us")
TEN_MIN = np.timedelta64(10, "m")


def stamps_10m(n: int) -> np.ndarray:
    return START + np.arange(n) * TEN_MIN.astype("timedelta64[us]")


def write_rows(path: Path, header: str, rows: list[str], newline: str = "\n", prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + newline.join([header, *rows, ""]).encode("utf-8"))
    return path


def fmt(t: np.datetime64) -> str:
    return str(t.astype("datetime64[m]")).replace("T", " ")


def sensor_file(tmp_path: Path, n: int = 400, channels: int = 3) -> Path:
    """The issue's file: CRLF, a BOM and a non-ASCII header, one duplicated row, one 100-minute gap, -9999 cells."""
    rng = np.random.default_rng(0)
    t = stamps_10m(n)
    keep = np.ones(n, bool)
    keep[200:209] = False  # 9 rows missing: a step of 100 minutes
    values = np.sin(np.arange(n)[:, None] / 12.0 + np.arange(channels)) + 0.05 * rng.standard_normal((n, channels))
    rows = [fmt(t[i]) + "," + ",".join(f"{v:.4f}" for v in values[i]) for i in range(n) if keep[i]]
    rows[50] = rows[50].rsplit(",", 1)[0] + ",-9999"
    rows.insert(120, rows[120])  # an exact duplicate
    header = "date," + ",".join(f"T{j} (°C)" for j in range(channels - 1)) + ",OT"
    return write_rows(tmp_path / "sensors.csv", header, rows, newline="\r\n", prefix=b"\xef\xbb\xbf")


# ---- loading policies ------------------------------------------------------------------------------------------


def test_duplicates_stop_by_default_naming_file_line_and_flag(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.csv", "date,a", ["2020-01-01 00:00,1", "2020-01-01 01:00,2", "2020-01-01 01:00,4"])
    with pytest.raises(DataError) as err:
        read_table(path)
    assert f"{path}, line 4, column 'date'" in str(err.value) and "--duplicates" in str(err.value)


@pytest.mark.parametrize(("policy", "value"), [("first", 2.0), ("last", 4.0), ("mean", 3.0)])
def test_duplicate_policies(tmp_path: Path, policy: str, value: float) -> None:
    rows = ["2020-01-01 00:00,1", "2020-01-01 01:00,2", "2020-01-01 01:00,4", "2020-01-01 02:00,5"]
    table = read_table(write_rows(tmp_path / "d.csv", "date,a", rows), duplicates=policy)  # type: ignore[arg-type]
    assert len(table) == 3 and table.values[1, 0] == value and table.duplicate_rows == 1
    assert table.loading_report()["duplicates"] == policy


def test_gaps_stop_by_default_naming_the_gap_and_flag(tmp_path: Path) -> None:
    rows = ["2020-01-01 00:00,1", "2020-01-01 00:10,2", "2020-01-01 00:40,5", "2020-01-01 00:50,6"]
    path = write_rows(tmp_path / "g.csv", "date,a", rows)
    with pytest.raises(DataError) as err:
        read_table(path)
    message = str(err.value)
    assert f"{path}, line 4, column 'date'" in message and "gap of 2 missing 10m step(s)" in message
    assert "--gaps" in message


@pytest.mark.parametrize(("policy", "filled"), [("ffill", [2.0, 2.0]), ("interpolate", [3.0, 4.0])])
def test_gap_policies_fill_the_grid(tmp_path: Path, policy: str, filled: list[float]) -> None:
    rows = ["2020-01-01 00:00,1", "2020-01-01 00:10,2", "2020-01-01 00:40,5", "2020-01-01 00:50,6"]
    table = read_table(write_rows(tmp_path / "g.csv", "date,a", rows), gaps=policy)  # type: ignore[arg-type]
    assert len(table) == 6 and table.gap_rows == 2 and table.freq == "10m"
    assert table.values[2:4, 0].tolist() == filled
    assert (np.diff(table.timestamps) == TEN_MIN).all()


def test_gaps_keep_leaves_rows_alone(tmp_path: Path) -> None:
    rows = ["2020-01-01 00:00,1", "2020-01-01 00:10,2", "2020-01-01 00:40,5", "2020-01-01 00:50,6"]
    table = read_table(write_rows(tmp_path / "g.csv", "date,a", rows), gaps="keep")
    assert len(table) == 4 and table.gap_rows == 0


def test_sentinels_are_missing_values(tmp_path: Path) -> None:
    rows = ["2020-01-01 00:00,1", "2020-01-01 00:10,-9999", "2020-01-01 00:20,3", "2020-01-01 00:30,-9999.0"]
    path = write_rows(tmp_path / "s.csv", "date,a", rows)
    assert read_table(path).values[1, 0] == -9999  # a number unless declared
    with pytest.raises(DataError) as err:
        read_table(path, na_values=["-9999"])
    assert f"{path}, line 3, column 'a': missing value" in str(err.value) and "--missing" in str(err.value)
    table = read_table(path, na_values=["-9999"], missing="interpolate")
    assert table.values[:, 0].tolist() == [1.0, 2.0, 3.0, 3.0] and table.filled_values == 2


def test_non_numeric_marker_points_at_na_values(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "s.csv", "date,a", ["2020-01-01 00:00,1", "2020-01-01 00:10,n/a"])
    with pytest.raises(DataError, match="--na-values"):
        read_table(path)


def test_crlf_bom_and_legacy_header(tmp_path: Path) -> None:
    crlf = write_rows(tmp_path / "c.csv", "date,T (°C)", ["2020-01-01 00:00,1", "2020-01-01 00:10,2"], "\r\n")
    crlf.write_bytes(b"\xef\xbb\xbf" + crlf.read_bytes())
    table = read_table(crlf)
    assert table.columns == ("T (°C)",) and table.values[:, 0].tolist() == [1.0, 2.0]
    legacy = tmp_path / "l.csv"
    legacy.write_bytes("date,T (°C)\r\n2020-01-01 00:00,1\r\n2020-01-01 00:10,2\r\n".encode("cp1252"))
    assert read_table(legacy).columns == ("T (°C)",)


# ---- sampling steps and calendar features ---------------------------------------------------------------------


def test_steps_are_inferred_for_any_regular_grid() -> None:
    assert infer_freq(stamps_10m(50)) == "10m"
    assert infer_freq(START + np.arange(50) * np.timedelta64(5, "m")) == "5m"
    assert infer_freq(START + np.arange(50) * np.timedelta64(1, "s")) == "1s"
    assert infer_freq(START + np.arange(50) * np.timedelta64(2, "h")) == "2h"
    months = np.arange(np.datetime64("2019-01"), np.datetime64("2021-01")).astype("datetime64[us]")
    assert infer_freq(months) == "1mo"
    month_ends = (np.arange(np.datetime64("2019-02"), np.datetime64("2021-01")).astype("datetime64[D]") - 1).astype(
        "datetime64[us]"
    )
    assert infer_freq(month_ends) == "1mo"
    with pytest.raises(ValueError, match="--freq"):
        infer_freq(np.array(["2020-01-01", "2020-01-02", "2020-01-04", "2020-01-07"], "datetime64[us]"))


def test_frequency_spellings() -> None:
    assert [normalize_freq(f) for f in ("15min", "h", "10T", "MS", "1mo", "D", "w")] == [
        "15m",
        "1h",
        "10m",
        "1mo",
        "1mo",
        "1d",
        "1w",
    ]


def test_features_per_unit_as_gluonts_defines_them() -> None:
    assert feature_names("10m") == feature_names("15m") == ("minute", "hour", "weekday", "day", "yearday")
    assert feature_names("1s") == ("second", "minute", "hour", "weekday", "day", "yearday")
    assert feature_names("1h") == ("hour", "weekday", "day", "yearday")
    assert feature_names("1d") == ("weekday", "day", "yearday")
    assert feature_names("1mo") == ("month",)
    t = np.array(["2021-03-01T13:20:30"], "datetime64[us]")  # a Monday, day 60 of the year
    np.testing.assert_allclose(
        time_features(t, "1s")[0], [30 / 59 - 0.5, 20 / 59 - 0.5, 13 / 23 - 0.5, -0.5, -0.5, 59 / 365 - 0.5], rtol=1e-6
    )
    np.testing.assert_allclose(time_features(t, "1mo")[0], [2 / 11 - 0.5], rtol=1e-6)
    # Exported 15-minute and hourly models keep exactly their features.
    np.testing.assert_array_equal(time_features(t, "15m"), time_features(t, "10m"))
    np.testing.assert_array_equal(time_features(t, "1h"), time_features(t, "15m")[:, 1:])


def test_future_timestamps_step_calendar_months() -> None:
    last = np.datetime64("2021-01-31T06:00", "us")
    assert [str(d)[:10] for d in future_timestamps(last, 3, "1mo")] == ["2021-02-28", "2021-03-31", "2021-04-30"]
    mid = np.datetime64("2021-01-15", "us")
    assert [str(d)[:10] for d in future_timestamps(mid, 2, "3mo")] == ["2021-04-15", "2021-07-15"]
    history = np.array(["2020-11-30", "2020-12-31"], "datetime64[us]")
    future = future_from_history(history, 2, "1mo")
    assert future is not None and [str(d)[:10] for d in future] == ["2021-01-31", "2021-02-28"]


def test_monthly_file_loads_with_its_grid(tmp_path: Path) -> None:
    months = [f"{y}-{m:02d}-01" for y in (2019, 2020) for m in range(1, 13)]
    del months[5]  # one month missing
    path = write_rows(tmp_path / "m.csv", "date,a", [f"{d},{i}" for i, d in enumerate(months)])
    with pytest.raises(DataError, match="gap of 1 missing 1mo step"):
        read_table(path)
    table = read_table(path, gaps="interpolate", freq="1mo")
    assert len(table) == 24 and table.values[5, 0] == 4.5


# ---- splits -----------------------------------------------------------------------------------------------------


def test_explicit_splits() -> None:
    assert split_borders(1000, "ratio:0.6,0.2,0.2", 10).train == (0, 600)
    assert split_borders(1000, "ratio", 10) == split_borders(1000, "ratio:0.7,0.1,0.2", 10)
    assert split_borders(20000, "ett-hourly", 96) == split_borders(20000, "ett_hourly", 96)
    stamps = stamps_10m(1000)
    borders = split_borders(1000, f"dates:{stamps[600]},{stamps[800]}", 10, stamps)
    assert borders.train == (0, 600) and borders.val == (590, 800) and borders.test == (790, 1000)
    with pytest.raises(ValueError, match="unknown split"):
        split_borders(1000, "halves", 10)


def test_known_dataset_by_path_gets_its_protocol(data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "my_etth1.csv"
    shutil.copy(data_dir / "ETT" / "ETTh1.csv", copy)
    path, spec = resolve_dataset(str(copy))
    assert path == copy and spec is not None and spec.name == "ETTh1"
    prepared = prepare_data(DataConfig(dataset=str(copy)))
    assert prepared.split == "ett_hourly" and prepared.borders.train == (0, 8640)
    assert "train rows 0-8639 (8640 rows) 2016-07-01 00:00:00 .. 2017-06-25 23:00:00" in prepared.split_summary()


# ---- end to end: train, export, serve and forecast a 10-minute sensor file ----------------------------------------


def cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


def test_sensor_file_defaults_stop_with_a_way_forward(tmp_path: Path) -> None:
    path = sensor_file(tmp_path)
    result = cli("forecasting", "train", "--dataset", str(path), "--model", "naive", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and str(path) in result.stderr and "--duplicates" in result.stderr


def test_ten_minute_series_trained_exported_served_with_future_timestamps(tmp_path: Path) -> None:
    from serving.client import ArcastClient
    from tests.serving.conftest import start_server

    path, run, store = sensor_file(tmp_path), tmp_path / "run", tmp_path / "store"
    flags = ["--duplicates", "first", "--gaps", "interpolate", "--na-values=-9999", "--missing", "ffill"]
    trained = cli(
        "forecasting", "train", "--dataset", str(path), "--model", "linear", "--features", "M",
        "--lookback", "48", "--horizon", "12", "--epochs", "1", "--split", "ratio:0.6,0.2,0.2", *flags,
        "--out", str(run),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "split ratio:0.6,0.2,0.2:" in trained.stdout and "train rows 0-239 (240 rows)" in trained.stdout
    info = json.loads((run / "run.json").read_text())
    assert info["freq"] == "10m" and info["data"]["duplicates"] == "first" and info["data"]["na_values"] == ["-9999"]
    assert info["loading"]["duplicate_rows"] == 1 and info["loading"]["gap_rows"] == 9
    exported = cli("forecasting", "export", "--run", str(run), "--store", str(store), "--name", "sensors")
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads((store / "sensors" / "1" / "manifest.json").read_text())
    assert manifest["freq"] == "10m" and manifest["loading"]["gaps"] == "interpolate"

    # The user's history as it comes: a `date` column, the sensor channels' own names.
    table = read_table(path, duplicates="first", gaps="interpolate", na_values=["-9999"], missing="ffill")
    history = pl.DataFrame({"date": [fmt(t) for t in table.timestamps[-60:]]}).with_columns(
        pl.Series(name, table.values[-60:, j]) for j, name in enumerate(table.columns)
    )
    history.write_csv(tmp_path / "history.csv")
    server = start_server(store)
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            (model,) = client.list_models("sensors")
            assert model.freq == "10m"
        out = tmp_path / "forecast.csv"
        target = f"127.0.0.1:{server.port}"
        args = ["forecast", "--target", target, "--model", "sensors", "--horizon", "5", "--input"]
        served = cli("serving", *args, str(tmp_path / "history.csv"), "--output", str(out))
    finally:
        server.stop(grace_s=1)
    assert served.returncode == 0, served.stderr
    forecast = pl.read_csv(out, try_parse_dates=True)
    expected = table.timestamps[-1] + np.arange(1, 6) * TEN_MIN.astype("timedelta64[us]")
    assert forecast["timestamp"].cast(pl.Datetime("us")).to_numpy().tolist() == expected.tolist()
    assert forecast.columns[-3:] == list(table.columns)


def test_monthly_calendar_model_exports_and_serves_calendar_months(tmp_path: Path, one_thread) -> None:
    """A model that takes calendar features (Informer) on month-end data: month-of-year features, served with
    forecast timestamps that step calendar months."""
    from arcast_core.training import TrainConfig
    from forecasting.export import export_run, torch_forecast
    from forecasting.models import MODELS
    from forecasting.models.seasonal_naive import season_length
    from forecasting.runs import train_run
    from serving.client import ArcastClient
    from serving.time_features import regular_timestamps
    from tests.serving.conftest import start_server

    assert season_length("1mo") == 12 and season_length("3mo") == 4
    ends = regular_timestamps(np.datetime64("1995-01-31", "us"), 300, "1mo")
    values = np.sin(np.arange(300) * 2 * np.pi / 12) + np.arange(300) / 300
    path = tmp_path / "monthly.csv"
    pl.DataFrame({"date": [str(t)[:10] for t in ends], "OT": values, "b": values[::-1]}).write_csv(path)
    tiny = MODELS["informer"].tiny
    data = DataConfig(dataset=str(path), **tiny.data)
    run = train_run("informer", data, tiny.model, TrainConfig(epochs=1, batch_size=32, progress=False))
    assert run.freq == "1mo"
    export_run(run, tmp_path / "store", "monthly", max_horizon=15)
    raw = np.stack([values[-48:], values[::-1][-48:]], axis=1)[None].astype(np.float32)
    stamps = ends[-48:][None]
    server = start_server(tmp_path / "store")
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            result = client.forecast("monthly", list(raw), 13, timestamps=list(stamps))
    finally:
        server.stop(grace_s=1)
    (forecast,) = result.forecasts
    assert [str(t)[:10] for t in forecast.timestamps[:3]] == ["2020-01-31", "2020-02-29", "2020-03-31"]
    expected = torch_forecast(run, raw, 13, stamps)
    np.testing.assert_allclose(run.scaler.transform(forecast.values[None]), run.scaler.transform(expected), atol=1e-4)
