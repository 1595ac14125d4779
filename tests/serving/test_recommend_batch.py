"""The batch job with a recommender: users in, top-k out, same answers as the model, bad users reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from serving.batch import errors_path, run_batch
from serving.runners.constrained_beam import ConstrainedBeamModel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recommendation_batch_job(beauty_slice_artifact, beauty_slice_run, tmp_path: Path) -> None:
    model = ConstrainedBeamModel.load(beauty_slice_artifact)
    split, _ = beauty_slice_run
    histories = [[int(model.item_ids[d]) for d in row if d] for row in split.test.histories[:30]]
    rows = [(f"u{u:02d}", item, t) for u, h in enumerate(histories) for t, item in enumerate(h)]
    rows.append(("bad", 999_999_999, 0))
    frame = pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.Int64, "timestamp": pl.Int64}, orient="row")
    path = tmp_path / "interactions.parquet"
    frame.sample(fraction=1.0, shuffle=True, seed=0).write_parquet(path)  # order comes from the timestamps
    out = tmp_path / "top.parquet"
    summary = run_batch(
        beauty_slice_artifact.path.parents[1], "beauty-slice", path, out, horizon=5, chunk_series=7, progress=False
    )
    assert (summary.series, summary.scored, summary.failed) == (31, 30, 1)
    result = pl.read_parquet(out)
    expected = model.recommend(histories, k=5)
    for u, want in enumerate(expected):
        got = result.filter(pl.col("user_id") == f"u{u:02d}").sort("rank")["item_id"].to_list()
        assert got == [item for item, _ in want]
    errors = pl.read_parquet(errors_path(out))
    assert errors["user_id"].to_list() == ["bad"] and "unknown item ids" in errors["reason"][0]


def test_cli_k_and_ray_refusal(beauty_slice_artifact, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "serving",
        "batch",
        "--store",
        str(beauty_slice_artifact.path.parents[1]),
        "--model",
        "beauty-slice",
        "--k",
        "5",
        "--input",
        str(tmp_path / "x.parquet"),
        "--output",
        str(tmp_path / "o.parquet"),
        "--ray",
        "local",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--ray scores forecasting models only" in result.stderr
