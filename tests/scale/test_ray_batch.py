"""Batch scoring on a local Ray cluster: the same rows and errors as the in-process job, whole series per batch."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from serving.batch import errors_path, run_batch
from serving.tables import TableError

ray = pytest.importorskip("ray", reason="Ray is the optional extra 'ray' (pip install 'arcast[ray]')")
MODEL = "etth1-arnet"
GCS_WAIT = "RAY_gcs_server_port_wait_time_s"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """Two CPUs; 8 KiB blocks, so that this small input is read in several blocks, as a large one would be."""
    from ray.data.context import DataContext

    # Ray waits 30 s for its GCS server's port by default: once too few on a loaded 2-core host (this one's override)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(GCS_WAIT, "120")
        try:
            ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
        except Exception as err:  # a loaded 2-core host: the raylet missed its fixed 30 s to register, or (seen
            # twice under make test's workers, never alone) the GCS server wrote no port file, nor any log, in time
            if "timed out during startup" not in str(err) and "Timed out waiting for file" not in str(err):
                raise
            ray.shutdown()
            ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    context = DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, 8 * 1024
    yield
    context.target_max_block_size = block_size
    ray.shutdown()


def input_blocks(path: Path) -> list[pl.DataFrame]:
    blocks = ray.data.read_parquet(str(path)).iter_batches(batch_size=None, batch_format="pyarrow")
    return [pl.from_arrow(b) for b in blocks]


@pytest.fixture(scope="module")
def scattered_series(etth1_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real OT series of 50-89 hours plus two unscorable ones, their rows shuffled.

    Read in several blocks, each series' rows are spread over many of them, out of time order: the job has to
    regroup and reorder them to score what the in-process job scores.
    """
    frame = pl.read_csv(etth1_slice, try_parse_dates=True)
    ot = [pl.col("date").alias("timestamp"), pl.col("OT").alias("value")]
    parts = [frame.slice(i * 37, 50 + i).select(pl.lit(f"s{i:02d}").alias("series_id"), *ot) for i in range(40)]
    short = frame.slice(0, 10).select(pl.lit("short").alias("series_id"), *ot)
    gap = frame.slice(0, 72).select(
        pl.lit("gap").alias("series_id"),
        pl.col("date").alias("timestamp"),
        pl.when(pl.int_range(pl.len()) == 70).then(None).otherwise(pl.col("OT")).alias("value"),
    )
    path = tmp_path_factory.mktemp("ray") / "series.parquet"
    pl.concat([*parts, short, gap]).sample(fraction=1.0, shuffle=True, seed=7).write_parquet(path)
    return path


def test_ray_job_writes_what_the_in_process_job_writes(
    ray_cluster: None,
    model_store: Path,
    scattered_series: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One Ray job (each costs a pool of actors), run through the CLI as users run it, on a CSV."""
    from serving import ray_batch
    from serving.cli import main
    from serving.ray_batch import check_columns

    blocks = input_blocks(scattered_series)
    spread = pl.concat([b.select(pl.col("series_id").unique()) for b in blocks])["series_id"].value_counts()
    assert len(blocks) > 2 and spread["count"].min() > 1  # the premise: no series arrives whole

    # Ray's driver prints its raylet's messages to stdout from a thread of its own (in CI: a worker that died and
    # whose task was retried); stdout must still hold nothing but the summary. Batches of 6 series, so that the
    # actors get several.
    job = ray_batch.run_ray_batch

    def job_with_a_raylet_message(*args: Any, **kwargs: Any) -> Any:
        thread = threading.Thread(target=print, args=("(raylet) A worker died or was killed while executing a task",))
        thread.start()
        thread.join()
        return job(*args, rows_per_run=6, **kwargs)

    monkeypatch.setattr(ray_batch, "run_ray_batch", job_with_a_raylet_message)

    out = tmp_path / "ray.parquet"
    args = ["batch", "--store", str(model_store), "--model", MODEL, "--horizon", "30", "--output", str(out)]
    csv = tmp_path / "series.csv"  # a CSV is converted to parquet first, parsed as the in-process job parses it
    pl.read_parquet(scattered_series).write_csv(csv)
    # "auto" finds the cluster this test started (the job keeps a connection it did not make).
    assert main([*args, "--input", str(csv), "--ray", "auto", "--ray-workers", "2"]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert "A worker died" in printed.err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # the staged input is gone

    local = tmp_path / "local.parquet"
    run_batch(model_store, MODEL, csv, local, horizon=30, chunk_series=7, progress=False)
    want = pl.read_parquet(local).sort("series_id", "step")
    got = pl.read_parquet(out)
    assert got.schema == want.schema
    assert got.equals(want)  # bit for bit: the same parsing, rollout and rows; the Ray job sorts by series and step
    assert got.group_by("series_id").len()["len"].unique().to_list() == [30]
    assert (
        pl.read_parquet(errors_path(out))
        .sort("series_id")
        .equals(pl.read_parquet(errors_path(local)).sort("series_id"))
    )
    assert [summary[k] for k in ("series", "scored", "failed", "workers")] == [42, 40, 2, 2]
    # Every series was scored once, by one worker, in batches of at most 6 whole series.
    split = summary["split"].values()
    assert sum(w["series"] for w in split) == 42
    assert sum(w["batches"] for w in split) >= 42 // 6
    assert 1 <= len(split) <= 2

    # Without timestamps (or ids) a shuffled series has no order (or no identity): refused before Ray runs.
    assert main([*args, "--input", str(dropped(scattered_series, "timestamp", tmp_path)), "--ray", "auto"]) == 2
    assert "--ray needs columns ['timestamp']" in capsys.readouterr().err
    with pytest.raises(TableError, match=r"--ray needs columns \['series_id'\]"):
        check_columns(dropped(scattered_series, "series_id", tmp_path), ["OT"])


def dropped(path: Path, column: str, tmp_path: Path) -> Path:
    out = tmp_path / f"without_{column}.parquet"
    pl.read_parquet(path).drop(column).write_parquet(out)
    return out


def test_the_in_process_job_does_not_import_ray(model_store: Path, scattered_series: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from serving.cli import main; "
        f"main(['batch', '--store', {str(model_store)!r}, '--model', {MODEL!r}, '--horizon', '12', "
        f"'--input', {str(scattered_series)!r}, '--output', {str(tmp_path / 'out.parquet')!r}]); "
        "print('ray imported' if 'ray' in sys.modules else 'no ray', file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith("no ray")
