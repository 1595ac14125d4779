"""Batch scoring on a Ray cluster with Ray Data: the rows and files of ``serving.batch``, spread over workers.

1. ``read_parquet`` the long table (a CSV is first converted to parquet by polars, as the in-process job does).
2. Group the series whole: every row gets a bucket, a hash of its series_id, and ``groupby(bucket).map_groups``
   shuffles all rows of a bucket, hence all rows of each of its series, into one call. That call parses them as
   the in-process job parses a chunk (``series_from_frame``: sort by timestamp, cast values) and returns one row
   per series, with list columns for the timestamps and values. From here on any batch of rows is a batch of
   whole series. (A group per series would work too, at one Python call per series: several times slower.)
   This stage is materialised (in the object store) before scoring starts.
3. ``map_batches`` with a callable class on a fixed pool of actors: each actor loads the artifact once (one
   onnxruntime session per worker, one intra-op thread per reserved CPU) and scores its batches with
   ``serving.batch.score_series``, the same function as the in-process job.
4. The driver gathers the blocks and writes ``OUTPUT`` and ``OUTPUT.errors.parquet`` atomically, sorted by series
   and step.

The input needs ``series_id`` and ``timestamp`` columns: a shuffle does not keep file order, so the timestamps
are what orders each series. On a cluster of several machines ``--store`` and ``--input`` must be on storage every
node reads (a shared filesystem or object store path); the output is written where the driver runs. Unlike the
in-process job a run is not resumable: a failed run is started again (Ray already retries failed tasks).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import ray
import ray.data

from arcast_core.files import atomic_write
from serving.artifact import resolve
from serving.batch import ERROR_SCHEMA, errors_path, forecaster, load_model, model_channels, score_series, write_outputs
from serving.runners.forecast import ForecastRunner
from serving.tables import (
    SERIES_ID,
    TIMESTAMP,
    SeriesInput,
    TableError,
    forecast_frame,
    scan_table,
    series_from_frame,
    value_columns,
)

REASON, WORKER, BATCH = "reason", "_worker", "_batch"  # extra columns of the scored blocks, dropped at the end
STAMPS, VALUES = "timestamps", "values"  # list columns of the one-row-per-series table
BUCKET = "_bucket"
ROWS_PER_BUCKET = 100_000  # input rows held at once by one grouping call, on average


@dataclass
class RayBatchSummary:
    series: int
    scored: int
    failed: int
    workers: int
    partitions: int  # blocks of the shuffle that groups the series
    buckets: int  # grouping calls, each with the whole of the series hashed to it
    seconds: float
    output: str
    errors: str
    split: dict[str, dict[str, int]] = field(default_factory=dict)  # per worker: batches and series it scored
    stage_seconds: dict[str, float] = field(default_factory=dict)  # read + shuffle + group; score + gather


def add_bucket(batch: pa.Table, buckets: int) -> pa.Table:
    """Each row's bucket: a hash of its series id (as a string, as the in-process job reads ids)."""
    ids = pl.from_arrow(batch.column(SERIES_ID)).cast(pl.String)
    return batch.append_column(BUCKET, (ids.hash(seed=0) % buckets).to_arrow())


def series_rows(group: pa.Table, channels: list[str]) -> pa.Table:
    """All rows of a bucket (a ``map_groups`` group) -> one row per series with list columns, parsed as in-process."""
    series = series_from_frame(pl.from_arrow(group.drop_columns([BUCKET])), channels)
    return pa.table(
        {
            SERIES_ID: pa.array([s.id for s in series], type=pa.string()),
            STAMPS: pa.array([s.timestamps for s in series], type=pa.list_(pa.timestamp("us"))),
            VALUES: pa.array([s.values.ravel() for s in series], type=pa.list_(pa.float64())),
        }
    )


def rows_to_series(batch: pa.Table, n_channels: int) -> list[SeriesInput]:
    ids = batch.column(SERIES_ID).to_pylist()
    stamps = batch.column(STAMPS).to_numpy(zero_copy_only=False)
    values = batch.column(VALUES).to_numpy(zero_copy_only=False)
    return [
        SeriesInput(sid, np.asarray(v, dtype=np.float64).reshape(-1, n_channels), np.asarray(t, "datetime64[us]"))
        for sid, t, v in zip(ids, stamps, values, strict=True)
    ]


def _template(model: ForecastRunner) -> pl.DataFrame:
    """An empty frame with every column a scored block can have, so that all blocks share one schema."""
    channels = model_channels(model)
    empty = forecast_frame("", np.zeros((0, len(channels)), np.float32), channels, np.array([], "datetime64[us]"))
    return empty.with_columns(pl.lit(None, pl.String).alias(REASON))


class SeriesScorer:
    """A Ray Data worker: one onnxruntime session for the actor's life, one scored block per batch."""

    def __init__(self, artifact_path: str, model_name: str, horizon: int, threads: int) -> None:
        self.model = forecaster(load_model(Path(artifact_path), model_name, horizon, intra_op_threads=threads))
        self.horizon = horizon
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.batches = 0
        self.template = _template(self.model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        series = rows_to_series(batch, self.model.n_channels)
        scored, errors = score_series(series, self.model, self.horizon, rows_per_run=max(len(series), 1))
        self.batches += 1
        block = pl.concat([self.template, scored, errors], how="diagonal_relaxed")
        return block.with_columns(pl.lit(self.worker).alias(WORKER), pl.lit(self.batches).alias(BATCH)).to_arrow()


@contextmanager
def ray_cluster(address: str) -> Iterator[None]:
    """Connect to ``address`` ("auto": the running cluster, "local": start one here); keep a connection made
    before (a test's ``ray.init``) as it is."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=None if address == "local" else address, log_to_driver=False, include_dashboard=False)
    except ConnectionError as err:
        raise ValueError(f"--ray {address}: no Ray cluster found ({err}); --ray local starts one here") from err
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def parquet_input(input_path: Path, work_dir: Path) -> Iterator[Path]:
    """The input as parquet: a CSV is converted by polars (the in-process job's parsing) into ``work_dir``,
    which the caller removes."""
    if input_path.suffix.lower() != ".csv":
        scan_table(input_path)  # the same checks and messages as the in-process job
        yield input_path
        return
    staged = work_dir / "input.parquet"
    atomic_write(staged, lambda tmp: scan_table(input_path).sink_parquet(tmp))
    yield staged


def check_columns(path: Path, channels: list[str]) -> None:
    names = pl.scan_parquet(path).collect_schema().names()
    missing = [c for c in (SERIES_ID, TIMESTAMP) if c not in names]
    if missing:
        raise TableError(
            f"{path}: --ray needs columns {missing}: a distributed shuffle does not keep file order, so each "
            "series is grouped by series_id and ordered by timestamp (the in-process job accepts files without)"
        )
    value_columns(names, channels)


def input_rows(path: Path) -> int:
    return int(pl.scan_parquet(path).select(pl.len()).collect().item())  # from the parquet footer


def _gather(scored: ray.data.Dataset) -> pl.DataFrame:
    blocks = [pl.from_arrow(b) for b in scored.iter_batches(batch_size=None, batch_format="pyarrow")]
    return pl.concat(blocks, how="vertical_relaxed") if blocks else pl.DataFrame()


def _split(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, dict[str, int]]]:
    """Scored rows, error rows, and how the work was split among the workers."""
    if frame.is_empty():
        return pl.DataFrame(), pl.DataFrame(schema=ERROR_SCHEMA), {}
    split = (
        frame.group_by(WORKER)
        .agg(pl.col(BATCH).n_unique().alias("batches"), pl.col(SERIES_ID).n_unique().alias("series"))
        .sort(WORKER)
    )
    errors = frame.filter(pl.col(REASON).is_not_null()).select(SERIES_ID, REASON).sort(SERIES_ID)
    scored = frame.filter(pl.col(REASON).is_null()).drop(REASON, WORKER, BATCH).sort(SERIES_ID, "step")
    if TIMESTAMP in scored.columns and scored[TIMESTAMP].null_count() == len(scored):
        scored = scored.drop(TIMESTAMP)  # as in-process: no series had two timestamps to step from
    workers = {row[WORKER]: {"batches": row["batches"], "series": row["series"]} for row in split.to_dicts()}
    return (scored if len(scored) else pl.DataFrame()), errors, workers


def _score_on_ray(
    parquet: Path,
    artifact_path: Path,
    model_name: str,
    horizon: int,
    channels: list[str],
    workers: int,
    rows_per_run: int,
    partitions: int,
    buckets: int,
) -> tuple[pl.DataFrame, dict[str, float]]:
    started = time.perf_counter()
    # Materialised before scoring: the actor pool reserves its CPUs for the whole run, and on a small cluster
    # the read and shuffle tasks would then wait forever for one. The shuffle ends in a barrier anyway.
    rows = (
        ray.data.read_parquet(str(parquet))
        .map_batches(add_bucket, batch_format="pyarrow", fn_kwargs={"buckets": buckets})
        .groupby(BUCKET, num_partitions=partitions)
        .map_groups(series_rows, batch_format="pyarrow", fn_kwargs={"channels": channels})
        .materialize()
    )
    grouped = time.perf_counter()
    scored = rows.map_batches(
        SeriesScorer,
        batch_size=rows_per_run,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
        fn_constructor_kwargs={
            "artifact_path": str(artifact_path),
            "model_name": model_name,
            "horizon": horizon,
            "threads": 1,
        },
    )
    frame = _gather(scored)
    return frame, {"group": grouped - started, "score": time.perf_counter() - grouped}


def run_ray_batch(
    store: Path | str,
    model_name: str,
    input_path: Path | str,
    output: Path | str,
    horizon: int,
    version: str | None = None,
    address: str = "auto",
    workers: int | None = None,
    rows_per_run: int = 1024,
    partitions: int | None = None,
) -> RayBatchSummary:
    """Score every series of ``input_path`` on a Ray cluster; the same output files as ``run_batch``.

    ``address``: "auto" (the running cluster), "local" (start one here) or a cluster address; an existing
    ``ray.init`` connection is used as it is. ``workers``: scoring actors (default: one per CPU of the cluster),
    each reserving one CPU; ``partitions``: blocks of whole series after the shuffle (default: two per worker);
    ``rows_per_run``: series per actor call, scored in one onnxruntime rollout.
    """
    started = time.perf_counter()
    output, input_path = Path(output), Path(input_path)
    artifact_path = resolve(store, model_name, version)  # pinned here: every actor loads this very version
    channels = model_channels(load_model(artifact_path, model_name, horizon))  # refuses a bad horizon up front
    with (
        tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp,
        parquet_input(input_path, Path(tmp)) as parquet,
    ):
        check_columns(parquet, channels)
        with ray_cluster(address):
            workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            partitions = partitions or 2 * workers
            buckets = max(partitions, -(-input_rows(parquet) // ROWS_PER_BUCKET))
            frame, stage_seconds = _score_on_ray(
                parquet, artifact_path, model_name, horizon, channels, workers, rows_per_run, partitions, buckets
            )
    result, errors, split = _split(frame)
    write_outputs(output, result, errors)
    n_scored = result[SERIES_ID].n_unique() if len(result) else 0
    return RayBatchSummary(
        series=n_scored + len(errors),
        scored=n_scored,
        failed=len(errors),
        workers=workers,
        partitions=partitions,
        buckets=buckets,
        seconds=time.perf_counter() - started,
        output=str(output),
        errors=str(errors_path(output)),
        split=split,
        stage_seconds=stage_seconds,
    )


__all__ = ["RayBatchSummary", "SeriesScorer", "run_ray_batch"]
