"""Batch scoring: many series from parquet/CSV scored in-process by the serving rollout, written as parquet.

The series are split into fixed chunks (sorted ids). Each finished chunk is written atomically as a part file
in ``OUTPUT.parts/``, so a job killed half-way and started again skips what is done and the final output has
every series exactly once. Series that cannot be scored go to ``OUTPUT`` with suffix ``.errors.parquet``
(series id and reason), never silently dropped.

``score_series`` is the one way a group of whole series is scored; the Ray job (``serving.ray_batch``) calls it
too, on each worker, so both jobs give the same rows.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from arcast_core.files import atomic_write, atomic_write_text, sha256_file
from serving.artifact import read_published, resolve
from serving.batch_intervals import BatchIntervals, check_intervals
from serving.runners import load_runner
from serving.runners.base import Runner
from serving.runners.forecast import FLOAT32_MAX, NON_FINITE_FORECAST, ForecastRunner
from serving.runners.recommender import ItemCatalogue
from serving.tables import SERIES_ID, SeriesInput, TableError, forecast_frame, scan_table, series_from_frame
from serving.time_features import future_from_history

JOB_FILE = "_job.json"
ERROR_SCHEMA = {SERIES_ID: pl.String, "reason": pl.String}
# Recommendation jobs: a long table of (user_id, item_id[, timestamp]) interactions in, top-k per user out.
USER_ID, ITEM_ID, TIMESTAMP = "user_id", "item_id", "timestamp"
USER_ERROR_SCHEMA = {USER_ID: pl.String, "reason": pl.String}


@dataclass
class BatchSummary:
    series: int
    scored: int
    failed: int
    chunks: int
    chunks_resumed: int
    seconds: float
    output: str
    errors: str


def errors_path(output: Path) -> Path:
    return output.with_name(output.stem + ".errors.parquet")


def _check(series: SeriesInput, model: ForecastRunner) -> str | None:
    """Why this series cannot be scored, or None."""
    steps = len(series.values)
    if steps < model.context_length:
        return f"{steps} steps of history, the model needs at least {model.context_length}"
    tail = series.values[-model.context_length :]
    if not np.isfinite(tail).all():
        return "missing or non-finite values in the last context_length steps"
    if (np.abs(tail) > FLOAT32_MAX).any():  # as the server refuses them
        return "values beyond the float32 range the models compute in"
    if model.calendar is not None and series.timestamps is None:
        return "no timestamps: this model uses calendar features"
    return None


def forecaster(model: Runner) -> ForecastRunner:
    """``model`` as a forecaster; ValueError for a recommender (scored by ``score_users``, in-process only)."""
    if model.task != "forecast":
        raise ValueError("recommendation models are scored in-process (without --ray)")
    return cast(ForecastRunner, model)


def model_channels(model: Runner) -> list[str]:
    return list(forecaster(model).channels)


def load_model(artifact_path: Path, model_name: str, horizon: int, intra_op_threads: int | None = None) -> Runner:
    """The artifact's runner, refused up front when it cannot reach ``horizon`` (for a recommender: k)."""
    artifact = read_published(artifact_path.parents[1], artifact_path)  # as a server reads it: <store>/<name>/<v>
    model = load_runner(artifact, intra_op_threads=intra_op_threads)
    try:
        model.check_reach(horizon)
    except ValueError as err:
        raise ValueError(f"{err} for {model_name}") from None
    return model


def score_series(
    series: list[SeriesInput],
    model: ForecastRunner,
    horizon: int,
    rows_per_run: int,
    intervals: BatchIntervals | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Forecast rows for every scorable series, and (series_id, reason) for the others.

    Series are whole (all their history), so each is checked and scored alone; onnxruntime runs up to
    ``rows_per_run`` of them at a time. ``intervals``: ``lo_<level>``/``hi_<level>`` columns as well.
    """
    channels, freq = model_channels(model), model.artifact.manifest.freq
    errors = [(s.id, reason) for s in series if (reason := _check(s, model))]
    bad = {sid for sid, _ in errors}
    good = [s for s in series if s.id not in bad]
    parts = []
    for start in range(0, len(good), rows_per_run):
        block = good[start : start + rows_per_run]
        context = np.stack([s.values[-model.context_length :] for s in block]).astype(np.float32)
        stamps = None
        if model.calendar is not None:  # calendar-feature models (Informer) need the context rows' times
            stamps = np.stack([s.timestamps[-model.context_length :] for s in block])
        columns: list[dict[str, np.ndarray]] = [{} for _ in block]
        if intervals is None:
            out = model.forecast(context, horizon, stamps)
        else:
            out, columns = intervals.score(model, block, context, stamps, horizon)
        finite = np.isfinite(out).reshape(len(block), -1).all(axis=1)
        errors.extend((s.id, NON_FINITE_FORECAST) for s, ok in zip(block, finite, strict=True) if not ok)
        parts.extend(
            forecast_frame(s.id, out[i], channels, future_from_history(s.timestamps, horizon, freq)).with_columns(
                **{name: pl.Series(values) for name, values in columns[i].items()}
            )
            for i, s in enumerate(block)
            if finite[i]
        )
    scored = pl.concat(parts) if parts else pl.DataFrame()
    return scored, pl.DataFrame(errors, schema=ERROR_SCHEMA, orient="row")


def score_users(
    frame: pl.DataFrame, model: ItemCatalogue, k: int, rows_per_run: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Top-``k`` rows (user_id, rank, item_id, score, title) per user, seen items excluded; bad users as errors."""
    frame = frame.with_columns(pl.col(USER_ID).cast(pl.String))
    errors, users, histories = [], [], []
    for (user,), group in frame.group_by(USER_ID, maintain_order=True):
        if TIMESTAMP in group.columns:
            group = group.sort(TIMESTAMP)
        items = group[ITEM_ID].cast(pl.Int64, strict=False).to_list()
        unknown = [item for item in items if item not in model.known_ids]
        if unknown:
            errors.append((user, f"unknown item ids {unknown[:5]}"))
            continue
        users.append(user)
        histories.append(items)
    rows: dict[str, list] = {USER_ID: [], "rank": [], ITEM_ID: [], "score": [], "title": []}
    for start in range(0, len(users), rows_per_run):
        result = model.search(histories[start : start + rows_per_run], k)
        for user, items, scores in zip(users[start : start + rows_per_run], result.items, result.scores, strict=True):
            for rank, (dense, score) in enumerate(zip(items, scores, strict=True), 1):
                if dense:  # 0: fewer allowed items than k
                    rows[USER_ID].append(user)
                    rows["rank"].append(rank)
                    rows[ITEM_ID].append(int(model.item_ids[dense]))
                    rows["score"].append(float(score))
                    rows["title"].append(model.titles[dense] if model.titles else "")
    return pl.DataFrame(rows), pl.DataFrame(errors, schema=USER_ERROR_SCHEMA, orient="row")


def _score_chunk(
    frame: pl.DataFrame,
    model: Runner,
    horizon: int,
    rows_per_run: int,
    date_column: str | None = None,
    intervals: BatchIntervals | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    if model.task == "recommend":
        return score_users(frame, cast(ItemCatalogue, model), horizon, rows_per_run)
    series = series_from_frame(frame, model_channels(model), date_column)
    return score_series(series, forecaster(model), horizon, rows_per_run, intervals)


def write_outputs(output: Path, scored: pl.DataFrame, errors: pl.DataFrame) -> None:
    """The errors file, then the output (last: a reader that finds the output finds its errors beside it)."""
    atomic_write(errors_path(output), errors.write_parquet)
    atomic_write(output, scored.write_parquet)


def run_batch(
    store: Path | str,
    model_name: str,
    input_path: Path | str,
    output: Path | str,
    horizon: int,
    version: str | None = None,
    chunk_series: int = 512,
    rows_per_run: int = 1024,
    progress: bool = True,
    date_column: str | None = None,
    levels: list[float] | None = None,
    method: str = "split_conformal",
) -> BatchSummary:
    """Score ``input_path`` chunk by chunk, resumably; ``date_column`` names the time column (default: timestamp
    or date, as training reads them); ``levels``: prediction intervals by ``method`` (split_conformal or
    adaptive) as ``lo_<level>``/``hi_<level>`` columns."""
    started = time.perf_counter()
    output, input_path = Path(output), Path(input_path)
    parts_dir = output.with_name(output.name + ".parts")
    model = load_model(resolve(store, model_name, version), model_name, horizon)
    job = {
        "input": str(input_path.resolve()),
        "input_sha256": sha256_file(input_path),
        "model": model_name,
        "version": model.artifact.version,
        "horizon": horizon,
        "chunk_series": chunk_series,
        **({"date_column": date_column} if date_column else {}),  # absent when unset: older jobs still resume
        **({"levels": levels, "method": method} if levels else {}),
    }
    intervals = check_intervals(model, model_name, horizon, levels, method) if levels else None
    parts_dir.mkdir(parents=True, exist_ok=True)
    job_file = parts_dir / JOB_FILE
    if job_file.exists():
        previous = json.loads(job_file.read_text())
        if previous != job:
            raise ValueError(
                f"{parts_dir} holds a different unfinished job ({previous}); remove it or pick another --output"
            )
    else:
        atomic_write_text(job_file, json.dumps(job, indent=2))

    scan = scan_table(input_path)
    if input_path.suffix.lower() == ".csv":  # one pass to parquet, so that each chunk's filter is cheap
        staged = parts_dir / "_input.parquet"
        if not staged.exists():
            atomic_write(staged, lambda tmp: scan.sink_parquet(tmp))
        scan = pl.scan_parquet(staged)
    id_column = USER_ID if model.task == "recommend" else SERIES_ID
    columns = scan.collect_schema().names()
    if id_column == USER_ID and not {USER_ID, ITEM_ID} <= set(columns):
        raise TableError(
            f"{input_path}: a recommendation job needs {USER_ID!r} and {ITEM_ID!r} columns (has {columns})"
        )
    has_ids = id_column in columns
    if has_ids:
        ids = scan.select(pl.col(id_column).cast(pl.String)).unique().sort(id_column).collect()[id_column].to_list()
    else:
        ids = ["0"]
    chunks = [ids[i : i + chunk_series] for i in range(0, len(ids), chunk_series)] or [[]]
    resumed = 0
    for k, chunk in enumerate(tqdm(chunks, desc=f"batch {model_name}", unit="chunk", disable=not progress)):
        part, part_errors = parts_dir / f"part-{k:06d}.parquet", parts_dir / f"errors-{k:06d}.parquet"
        if part.exists():
            resumed += 1
            continue
        frame = (scan.filter(pl.col(id_column).cast(pl.String).is_in(chunk)) if has_ids else scan).collect()
        scored, errors = _score_chunk(frame, model, horizon, rows_per_run, date_column, intervals)
        atomic_write(part_errors, errors.write_parquet)
        atomic_write(part, scored.write_parquet)  # last: its presence marks the chunk done

    scored = pl.concat([pl.read_parquet(p) for p in sorted(parts_dir.glob("part-*.parquet"))], how="diagonal_relaxed")
    errors = pl.concat([pl.read_parquet(p) for p in sorted(parts_dir.glob("errors-*.parquet"))], how="vertical")
    write_outputs(output, scored, errors)
    shutil.rmtree(parts_dir)
    n_scored = scored[id_column].n_unique() if len(scored) else 0
    return BatchSummary(
        len(ids),
        n_scored,
        len(errors),
        len(chunks),
        resumed,
        time.perf_counter() - started,
        str(output),
        str(errors_path(output)),
    )


def summary_json(summary: Any) -> str:
    """A job summary (``BatchSummary`` or the Ray job's) as indented JSON."""
    return json.dumps(asdict(summary), indent=2)


__all__ = ["BatchSummary", "TableError", "load_model", "run_batch", "score_series", "summary_json", "write_outputs"]
