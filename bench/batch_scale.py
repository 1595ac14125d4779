"""Benchmark batch scoring: the in-process job against the Ray Data job with 2 workers, side by side.

Both jobs score the same real series (windows of the ETT files' OT column) with the same exported AR-Net and
must write the same rows (checked). Runs are interleaved (in-process, Ray, in-process, Ray, ...) so both see the
same machine load; the table shows medians. The Ray cluster is started once, before timing (its start-up is
reported apart); each Ray run includes starting its scoring actors, the shuffle that groups each series whole,
and gathering the result on the driver. Both jobs use the same cores: onnxruntime takes every usable core
in-process, and each Ray actor reserves one CPU and runs one intra-op thread.

    .venv/bin/python bench/batch_scale.py            # writes bench/results/batch_scale.json
    .venv/bin/python bench/batch_scale.py --quick    # a smoke run -> bench/results/batch_scale-quick.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import polars as pl

from arcast_core.data_dir import find_data_dir
from arcast_core.files import atomic_write_text
from arcast_core.training import TrainConfig
from forecasting.data import DataConfig
from forecasting.export import export_run
from forecasting.runs import train_run
from serving.batch import run_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "batch_scale.json"
DEFAULT_QUICK_OUT = REPO_ROOT / "bench" / "results" / "batch_scale-quick.json"
MODEL, LOOKBACK, STEP, HORIZON, HISTORY = "ett-arnet", 96, 24, 48, 120


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def machine_facts() -> dict[str, Any]:
    import ray

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "versions": {
            "python": platform.python_version(),
            "ray": ray.__version__,
            "onnxruntime": onnxruntime.__version__,
            "polars": pl.__version__,
            "numpy": np.__version__,
        },
    }


def make_store(data_dir: Path, work: Path) -> Path:
    """An MLP AR-Net (96 h -> 24 h, one hidden layer of 64) trained briefly on ETTh1 OT and exported."""
    run = train_run(
        "arnet",
        DataConfig(dataset="ETTh1", lookback=LOOKBACK, horizon=STEP, data_dir=str(data_dir)),
        {"hidden_sizes": [64]},
        TrainConfig(epochs=3, batch_size=64, lr=3e-3, progress=False),
    )
    store = work / "store"
    export_run(run, store, MODEL, max_horizon=HORIZON)
    return store


def make_series(data_dir: Path, n_series: int, path: Path, seed: int = 0) -> int:
    """``n_series`` windows of HISTORY hourly OT values from the ETT files, rows in random order; the row count."""
    rng = np.random.default_rng(seed)
    sources = [pl.read_csv(data_dir / "ETT" / f"{name}.csv", try_parse_dates=True) for name in ("ETTh1", "ETTh2")]
    which = rng.integers(0, len(sources), n_series)
    frames = []
    for k, source in enumerate(sources):
        ids = np.flatnonzero(which == k)
        starts = rng.integers(0, len(source) - HISTORY, len(ids))
        rows = (starts[:, None] + np.arange(HISTORY)).ravel()
        frames.append(
            pl.DataFrame(
                {
                    "series_id": np.repeat([f"s{i:06d}" for i in ids], HISTORY),
                    "timestamp": source["date"].to_numpy()[rows],
                    "value": source["OT"].to_numpy()[rows],
                }
            )
        )
    table = pl.concat(frames).sample(fraction=1.0, shuffle=True, seed=seed)
    table.write_parquet(path)
    return len(table)


def time_local(store: Path, series: Path, out: Path) -> dict[str, Any]:
    summary = run_batch(store, MODEL, series, out, horizon=HORIZON, progress=False)
    return {"seconds": summary.seconds, "series": summary.series, "chunks": summary.chunks}


def time_ray(store: Path, series: Path, out: Path, workers: int) -> dict[str, Any]:
    from serving.ray_batch import run_ray_batch

    summary = run_ray_batch(store, MODEL, series, out, horizon=HORIZON, workers=workers)
    return {
        "seconds": summary.seconds,
        "series": summary.series,
        "workers": summary.workers,
        "partitions": summary.partitions,
        "buckets": summary.buckets,
        "split": summary.split,
        "stage_seconds": summary.stage_seconds,
    }


def same_rows(a: Path, b: Path) -> bool:
    return pl.read_parquet(a).sort("series_id", "step").equals(pl.read_parquet(b).sort("series_id", "step"))


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    median = statistics.median(seconds)
    return {"seconds": seconds, "median_seconds": median, "series_per_second": runs[0]["series"] / median}


def markdown(result: dict[str, Any]) -> str:
    local, distributed = result["in_process"], result["ray"]
    last = distributed["runs"][-1]
    split = ", ".join(f"{w['batches']} batches / {w['series']} series" for w in last["split"].values())
    stages = last["stage_seconds"]
    lines = [
        f"Batch scoring, {result['settings']['series']} series x {HISTORY} h, horizon {HORIZON}, "
        f"median of {result['settings']['repeats']} interleaved runs on {result['machine']['cpus_usable']} CPUs",
        "",
        "| job | seconds | series/s | work split |",
        "|---|---:|---:|---|",
        f"| in-process (`run_batch`, chunks of 512) | {local['median_seconds']:.2f} | "
        f"{local['series_per_second']:.0f} | {local['runs'][0]['chunks']} chunks, one process |",
        f"| Ray Data, {last['workers']} actors | {distributed['median_seconds']:.2f} | "
        f"{distributed['series_per_second']:.0f} | {last['buckets']} buckets in {last['partitions']} partitions; "
        f"per actor: {split} |",
        "",
        f"Ray: group (read + shuffle + one row per series) {stages['group']:.2f} s, score + gather "
        f"{stages['score']:.2f} s in the last run; cluster start-up {result['ray_init_seconds']:.1f} s, not timed. "
        f"Same rows: {result['same_rows']}. In-process / Ray time: "
        f"{distributed['median_seconds'] / local['median_seconds']:.2f}x.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2000 series, one repeat")
    parser.add_argument("--series", type=int, help="series to score (default 20000)")
    parser.add_argument("--repeats", type=int, help="interleaved runs of each job (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="Ray scoring actors (default 2)")
    parser.add_argument("--data-dir", type=Path, help="benchmark data folder (default: as the CLI finds it)")
    parser.add_argument("--out", type=Path, help="result JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import ray

    args = parse_args(argv)
    n_series = args.series or (2000 if args.quick else 20000)
    repeats = args.repeats or (1 if args.quick else 3)
    out = args.out or (DEFAULT_QUICK_OUT if args.quick else DEFAULT_OUT)
    data_dir = args.data_dir or find_data_dir()
    result: dict[str, Any] = {
        "benchmark": "batch_scale",
        "command": shlex.join([Path(sys.executable).name, *sys.argv] if argv is None else [__file__, *argv]),
        "started_at": now(),
        "machine": machine_facts(),
        "settings": {
            "series": n_series,
            "history_hours": HISTORY,
            "horizon": HORIZON,
            "repeats": repeats,
            "ray_workers": args.workers,
            "model": f"AR-Net MLP, lookback {LOOKBACK}, step {STEP}, hidden [64]",
        },
    }
    with tempfile.TemporaryDirectory(prefix="batch-scale-") as tmp:
        work = Path(tmp)
        store = make_store(data_dir, work)
        series = work / "series.parquet"
        result["settings"]["rows"] = make_series(data_dir, n_series, series)
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)
        result["ray_init_seconds"] = time.perf_counter() - started
        local_runs, ray_runs = [], []
        try:
            for r in range(repeats):
                print(f"repeat {r + 1}/{repeats}: in-process, then Ray", flush=True)
                local_runs.append(time_local(store, series, work / f"local-{r}.parquet"))
                ray_runs.append(time_ray(store, series, work / f"ray-{r}.parquet", args.workers))
        finally:
            ray.shutdown()
        result["same_rows"] = same_rows(work / "local-0.parquet", work / "ray-0.parquet")
    result["in_process"] = {"runs": local_runs, **summarise(local_runs)}
    result["ray"] = {"runs": ray_runs, **summarise(ray_runs)}
    result["finished_at"] = now()
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["markdown"] = markdown(result)
    atomic_write_text(Path(out), json.dumps(result, indent=2))
    print(f"\n{result['markdown']}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
