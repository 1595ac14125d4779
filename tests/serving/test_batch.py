"""The batch scoring job: same answers as the service, errors reported, resumes after a kill."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from serving.artifact import read_artifact, resolve
from serving.batch import errors_path, run_batch
from serving.runners.window_shift import WindowShiftModel

MODEL = "etth1-arnet"


@pytest.fixture(scope="module")
def series_file(etth1_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 real series (OT windows of 72 h, ids s00..s59) in long format, plus two bad ones."""
    frame = pl.read_csv(etth1_slice, try_parse_dates=True)
    parts = [
        frame.slice(i * 25, 72).select(
            pl.lit(f"s{i:02d}").alias("series_id"), pl.col("date").alias("timestamp"), pl.col("OT").alias("value")
        )
        for i in range(60)
    ]
    short = frame.slice(0, 10).select(
        pl.lit("short").alias("series_id"), pl.col("date").alias("timestamp"), pl.col("OT").alias("value")
    )
    gap = frame.slice(0, 72).select(
        pl.lit("gap").alias("series_id"),
        pl.col("date").alias("timestamp"),
        pl.when(pl.int_range(pl.len()) == 70).then(None).otherwise(pl.col("OT")).alias("value"),
    )
    path = tmp_path_factory.mktemp("batch") / "series.parquet"
    pl.concat([*parts, short, gap]).write_parquet(path)
    return path


def test_batch_matches_the_rollout_and_reports_bad_series(model_store: Path, series_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "forecasts.parquet"
    summary = run_batch(model_store, MODEL, series_file, out, horizon=24, chunk_series=16, progress=False)
    assert (summary.series, summary.scored, summary.failed) == (62, 60, 2)
    result = pl.read_parquet(out)
    assert result.group_by("series_id").len()["len"].to_list() == [24] * 60
    errors = pl.read_parquet(errors_path(out)).sort("series_id")
    assert errors["series_id"].to_list() == ["gap", "short"]
    assert "needs at least 48" in errors.filter(pl.col("series_id") == "short")["reason"][0]
    model = WindowShiftModel.load(read_artifact(resolve(model_store, MODEL)))
    s07 = pl.read_parquet(series_file).filter(pl.col("series_id") == "s07")["value"].to_numpy()
    expected = model.forecast(s07[-48:].reshape(1, 48, 1).astype(np.float32), 24)[0, :, 0]
    got = result.filter(pl.col("series_id") == "s07").sort("step")["value"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    last = pl.read_parquet(series_file).filter(pl.col("series_id") == "s07")["timestamp"].max()
    assert result.filter((pl.col("series_id") == "s07") & (pl.col("step") == 1))["timestamp"][0] > last
    assert not out.with_name(out.name + ".parts").exists()


def test_resume_after_kill_scores_every_series_once(model_store: Path, series_file: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.parquet"
    run_batch(model_store, MODEL, series_file, reference, horizon=12, chunk_series=1, progress=False)
    out = tmp_path / "out.parquet"
    cmd = [
        sys.executable,
        "-m",
        "serving",
        "batch",
        "--store",
        str(model_store),
        "--model",
        MODEL,
        "--horizon",
        "12",
        "--input",
        str(series_file),
        "--output",
        str(out),
        "--chunk-series",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 5:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    done_before = len(list(parts.glob("part-*.parquet")))
    assert 5 <= done_before < 62, "the job should have been killed half-way"
    assert not out.exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["chunks_resumed"] >= done_before
    got = pl.read_parquet(out).sort("series_id", "step")
    want = pl.read_parquet(reference).sort("series_id", "step")
    assert got.equals(want)
    assert got.group_by("series_id").len()["len"].unique().to_list() == [12]


def test_a_different_job_in_the_same_output_is_refused(model_store: Path, series_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    (parts / "_job.json").write_text('{"horizon": 99}')
    with pytest.raises(ValueError, match="different unfinished job"):
        run_batch(model_store, MODEL, series_file, out, horizon=12, progress=False)
