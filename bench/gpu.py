"""The device checks of a GPU machine (run by bench/gpu.sh): every model kind's parity on each GPU provider
against the CPU provider, and the rollout with its state on the device (I/O binding) against the host rollout.

For each forecasting model kind (``forecasting.models.MODELS``, its ``tiny`` setting, one epoch on the first 2000
rows of ETTh1) and the generative recommender (``constrained_beam``: a small PRORec generator on a Beauty slice),
the artifact is exported once and loaded on CPUExecutionProvider and on each device provider; the forecasts of
real test windows (or the recommended items and their scores) are compared: largest absolute difference on the
training scale, and whether the items are the same. The rollout on the device: the window-shift rollout of a wide
MLP AR-Net (memory-bound per step) over 720 steps with the window kept on the device between steps (``BoundSteps``)
against copying it through the host each step (``HostSteps``), both on the device provider, median of repeats.

``--dry-run`` runs the same code with CPUExecutionProvider standing in for the device (tiny inputs, a few kinds):
what the tests run on a machine without a GPU.

    python bench/gpu.py                     # on a GPU machine: JSON to $OUT/gpu.json (or bench/results/gpu.json)
    python bench/gpu.py --dry-run --kinds arnet linear --out /tmp/gpu-dry.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository before bench/ (bench/recsys.py)

import numpy as np

CPU = "CPUExecutionProvider"
DEVICE_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
RECOMMENDER = "prorec"
PARITY_TOLERANCE = {"CUDAExecutionProvider": 1e-3, "TensorrtExecutionProvider": 1e-2, CPU: 0.0}


def device_providers(dry_run: bool) -> list[str]:
    """The GPU providers that load here (``serving.sessions.usable_providers`` probes each); CPU on a dry run."""
    from serving.sessions import PROBE_FAILURES, usable_providers

    if dry_run:
        return [CPU]
    found = [p for p in usable_providers() if p in DEVICE_PROVIDERS]
    for provider, why in PROBE_FAILURES.items():
        print(f"{provider} does not load here: {why}", file=sys.stderr)
    if not found:
        raise SystemExit("no GPU provider loads here (CUDA or TensorRT): run with --dry-run on a CPU machine")
    return found


def etth1_slice(folder: Path) -> Path:
    import polars as pl

    from arcast_core.data_dir import find_data_dir

    path = folder / "etth1_slice.csv"
    pl.read_csv(find_data_dir() / "ETT/ETTh1.csv").head(2000).write_csv(path)
    return path


def forecaster_parity(kind: str, data_path: Path, folder: Path, providers: list[str]) -> dict[str, Any]:
    """Train the kind's tiny setting one epoch, export it, forecast real test windows on CPU and on each provider."""
    from arcast_core.training import TrainConfig
    from forecasting.data import DataConfig, prepare_data
    from forecasting.export import export_run
    from forecasting.models import MODELS
    from forecasting.runs import train_run
    from serving.artifact import read_artifact
    from serving.runners import RUNNERS

    tiny = MODELS[kind].tiny
    params = {**tiny.model, **(tiny.assets(folder / "assets") if tiny.assets else {})}
    data = DataConfig(dataset=str(data_path), **tiny.data)
    run = train_run(kind, data, params, TrainConfig(epochs=1, batch_size=32, lr=1e-3, progress=False))
    horizon = 3 * run.model.step  # three blocks: the rollout feeds back its own forecasts
    artifact = read_artifact(export_run(run, folder / "store", f"parity-{kind}", max_horizon=horizon).path)
    prepared = prepare_data(data)
    lookback, start = run.model.context_length, prepared.borders.test[0]
    offsets = np.arange(0, 64, 4)
    raw = np.stack([prepared.table.values[start + i : start + i + lookback] for i in offsets]).astype(np.float32)
    stamps = np.stack([prepared.table.timestamps[start + i : start + i + lookback] for i in offsets])
    runner_cls = RUNNERS[artifact.manifest.rollout.kind]
    outputs, seconds = {}, {}
    for provider in [CPU, *providers]:
        runner = runner_cls.load(artifact, [provider, CPU] if provider != CPU else [CPU])
        runner.forecast(raw, horizon, stamps)  # warm (TensorRT builds its engine here)
        t0 = time.perf_counter()
        outputs[provider] = run.scaler.transform(runner.forecast(raw, horizon, stamps))
        seconds[provider] = time.perf_counter() - t0
        actual = runner.describe().providers[0]
        if actual != provider:
            raise RuntimeError(f"{kind}: asked for {provider}, the session runs on {actual}")
    return {
        "rollout": artifact.manifest.rollout.kind,
        "windows": len(offsets),
        "horizon": horizon,
        "providers": {
            p: {
                "max_abs_diff_vs_cpu": float(np.abs(outputs[p] - outputs[CPU]).max()),
                "ms": 1000 * seconds[p],
                "within_tolerance": bool(np.abs(outputs[p] - outputs[CPU]).max() <= PARITY_TOLERANCE[p] or p == CPU),
            }
            for p in providers
        },
    }


def recommender_parity(folder: Path, providers: list[str]) -> dict[str, Any]:
    """A small PRORec generator (one epoch on the dense Beauty slice, as tests/recsys), on CPU and each provider."""
    from arcast_core.data_dir import find_data_dir
    from recsys.data import load_dataset
    from recsys.export import export_run
    from recsys.smoke_run import train_smoke_run
    from serving.artifact import read_artifact
    from serving.runners.constrained_beam import ConstrainedBeamModel

    split, run = train_smoke_run(load_dataset("beauty", find_data_dir()).sequences)
    histories = split.test.histories[:64]
    artifact = export_run(run, folder / "store", "parity-prorec", histories=split.validation.histories[:48])
    results = {}
    for provider in [CPU, *providers]:
        served = ConstrainedBeamModel.load(read_artifact(artifact.path), [provider, CPU] if provider != CPU else [CPU])
        served.search_dense(histories, 10, 20)  # warm
        t0 = time.perf_counter()
        results[provider] = (served.search_dense(histories, 10, 20), time.perf_counter() - t0)
    base = results[CPU][0]
    out: dict[str, Any] = {"rollout": "constrained_beam", "users": len(histories), "providers": {}}
    for provider in providers:
        found, seconds = results[provider]
        finite = np.isfinite(base.scores)
        gap = float(np.abs(found.scores - base.scores)[finite].max())
        out["providers"][provider] = {
            "same_items": f"{int((found.items == base.items).all(axis=1).sum())}/{len(histories)}",
            "max_abs_score_diff_vs_cpu": gap,
            "ms": 1000 * seconds,
            "within_tolerance": bool(gap <= PARITY_TOLERANCE[provider] or provider == CPU),
        }
    return out


def bound_rollout(folder: Path, provider: str, dry_run: bool) -> dict[str, Any]:
    """The window-shift rollout with the window on the device (I/O binding) against through the host, same
    provider; a wide MLP AR-Net (2048x2048) over 720 steps (dry run: 64x64 over 96), batch 1 and 256."""
    import torch

    from forecasting.export import export_run
    from serving.artifact import read_artifact
    from serving.runners.window_shift import WindowShiftModel

    lookback, step = 168, 24
    hidden, horizon = ([64, 64], 96) if dry_run else ([2048, 2048], 720)
    torch.manual_seed(0)
    from arcast_core.training import TrainConfig
    from forecasting.data import DataConfig
    from forecasting.runs import train_run

    data = DataConfig(dataset=str(etth1_slice(folder)), features="S", lookback=lookback, horizon=step)
    run = train_run("arnet", data, {"loss": "mse", "hidden_sizes": hidden}, TrainConfig(epochs=1, progress=False))
    artifact = read_artifact(export_run(run, folder / "rollout-store", "rollout", max_horizon=horizon).path)
    providers = [provider, CPU] if provider != CPU else [CPU]
    models = {
        "device": WindowShiftModel.load(artifact, providers, io_binding=True),
        "host": WindowShiftModel.load(artifact, providers, io_binding=False),
    }
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"provider": provider, "hidden_sizes": hidden, "horizon": horizon, "batches": {}}
    for batch in (1, 256):
        context = rng.normal(size=(batch, lookback, 1)).astype(np.float32)
        answers = {mode: m.forecast(context, horizon) for mode, m in models.items()}  # warm, and the same answer
        times: dict[str, list[float]] = {mode: [] for mode in models}
        for r in range(3 if dry_run else 20):
            for mode in models if r % 2 == 0 else reversed(models):
                t0 = time.perf_counter()
                models[mode].forecast(context, horizon)
                times[mode].append(time.perf_counter() - t0)
        ms = {mode: 1000 * statistics.median(t) for mode, t in times.items()}
        out["batches"][str(batch)] = {
            "median_ms": ms,
            "speedup_device_state": ms["host"] / ms["device"],
            "max_abs_diff": float(np.abs(answers["device"] - answers["host"]).max()),
        }
    out["device"] = models["device"].device
    return out


def write(path: Path, results: dict[str, Any]) -> None:
    from arcast_core.files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    from forecasting.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPUExecutionProvider stands in for the device")
    parser.add_argument(
        "--kinds", nargs="+", default=[*sorted(MODELS), RECOMMENDER], help="model kinds (default: every kind)"
    )
    parser.add_argument("--skip-rollout", action="store_true", help="no device-rollout timing")
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("bench/results")
    parser.add_argument("--out", type=Path, default=out_dir / "gpu.json")
    args = parser.parse_args(argv)
    unknown = set(args.kinds) - {*MODELS, RECOMMENDER}
    if unknown:
        parser.error(f"--kinds: unknown {sorted(unknown)} (known: {', '.join([*sorted(MODELS), RECOMMENDER])})")
    providers = device_providers(args.dry_run)
    import onnxruntime as ort

    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dry_run": args.dry_run,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "onnxruntime": ort.__version__},
        "providers": providers,
        "tolerance_training_scale": PARITY_TOLERANCE,
        "parity": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data_path = etth1_slice(folder)
        for kind in args.kinds:
            t0 = time.perf_counter()
            kind_dir = folder / kind
            kind_dir.mkdir()
            if kind == RECOMMENDER:
                results["parity"][kind] = recommender_parity(kind_dir, providers)
            else:
                results["parity"][kind] = forecaster_parity(kind, data_path, kind_dir, providers)
            results["parity"][kind]["seconds"] = time.perf_counter() - t0
            print(f"{kind}: {json.dumps(results['parity'][kind]['providers'])}", flush=True)
            write(args.out, results)  # each kind as it finishes: a step cut off by its time limit keeps them
        if not args.skip_rollout:
            results["rollout_on_device"] = [bound_rollout(folder, p, args.dry_run) for p in providers]
            print(f"rollout: {json.dumps(results['rollout_on_device'])}", flush=True)
    results["all_within_tolerance"] = all(
        v["within_tolerance"] for kind in results["parity"].values() for v in kind["providers"].values()
    )
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write(args.out, results)
    print(f"wrote {args.out}")
    return 0 if results["all_within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
