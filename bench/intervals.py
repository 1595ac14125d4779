"""Prediction intervals on every ETTh1 test window: split conformal against adaptive conformal, per model kind.

For each model kind on ETTh1 S (OT) and M: train (the baselines' closed-form fits as they are; small, reduced
AR-Net, Informer and AutoTimes), export with the conformal calibration on the validation split, then roll the
artifact out as served (onnxruntime) from every origin of the test split and score the 80/90/95% intervals:
coverage, mean width, Winkler score and CRPS (from the 2.5/5/10/50/90/95/97.5% quantiles), on the standardised
scale, at horizon 24 (one step of every model) and 48 (rolled out). The adaptive method uses, for each test
origin, the 168 origins before it (the history a caller would send), exactly as the server does
(``serving.intervals.adapt``). Then the extra latency per request, side by side over real gRPC (a server
process, one client): no levels, split-conformal levels, adaptive levels.

    python bench/intervals.py                 # everything: bench/results/intervals.json
    python bench/intervals.py --readme        # print the README table from the results
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "intervals.json"
LEVELS = (0.8, 0.9, 0.95)
CRPS_PROBS = np.array([0.025, 0.05, 0.1, 0.5, 0.9, 0.95, 0.975])
LOOKBACK, STEP, MAX_HORIZON, HORIZONS = 96, 24, 48, (24, 48)
KINDS = ("naive", "seasonal_naive", "linear", "arnet", "informer", "autotimes")
# What differs from each model's published protocol (the baselines are fitted in closed form as they are).
REDUCED = {
    "arnet": "5 epochs, hidden (64,), lookback 96, no tuning",
    "informer": "d_model 32, 1 epoch, lookback 96 / label 48 (the paper: 512, up to 6 epochs, tuned lengths)",
    "autotimes": "random 2-layer Llama backbone (tests' tiny one, not SmolLM2/LLaMA-7B), 1 epoch, lookback 96",
}


def model_setup(kind: str, folder: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
    from arcast_core.training import TrainConfig

    data: dict[str, Any] = {"lookback": LOOKBACK, "horizon": STEP}
    train = TrainConfig(epochs=1, batch_size=64, lr=1e-3, progress=False)
    params: dict[str, Any] = {}
    if kind == "arnet":
        params = {"hidden_sizes": (64,)}
        train = replace(train, epochs=5, lr=3e-3)
    elif kind == "informer":
        data["label_len"] = 48
        params = {"d_model": 32, "n_heads": 4, "d_ff": 64}
        train = replace(train, epochs=1, batch_size=32, lr=1e-3, lr_schedule="halving")
    elif kind == "autotimes":
        from forecasting.llm_backbone import write_random_backbone

        params = {"backbone": str(write_random_backbone(folder / "backbone"))}
        train = replace(train, epochs=1, batch_size=64, lr=1e-3)
    return data, params, train


def served_rollouts(runner: Any, table: Any, first: int, end: int, horizon: int) -> np.ndarray:
    """Forecasts (origins, horizon, C) from every origin in first..end-1 (context: the rows before it)."""
    length = runner.context_length
    origins = np.arange(first, end)
    out = []
    for lo in range(0, len(origins), 512):
        chunk = origins[lo : lo + 512]
        rows = chunk[:, None] + np.arange(-length, 0)[None]
        stamps = table.timestamps[rows] if runner.calendar is not None else None
        out.append(runner.forecast(table.values[rows].astype(np.float32), horizon, stamps))
    return np.concatenate(out).astype(np.float64)


def score(kind: str, features: str, artifact_path: Path, origins_k: int, gamma: float) -> list[dict[str, Any]]:
    from forecasting.data import DataConfig, prepare_data
    from serving.artifact import read_artifact
    from serving.intervals import adapt, coverage, crps_from_quantiles, load_calibration, winkler
    from serving.runners import load_runner

    artifact = read_artifact(artifact_path)
    runner, calibration = load_runner(artifact), load_calibration(artifact)
    assert calibration is not None
    prepared = prepare_data(DataConfig(**artifact.manifest.data.config))  # type: ignore[arg-type]
    table = prepared.table
    test_start, test_end = prepared.borders.test
    first_target = test_start + prepared.config.lookback  # the test split starts lookback rows early
    start = first_target - origins_k  # the adaptive backtest's earliest origin (rows of the validation period)
    preds = served_rollouts(runner, table, start, test_end, MAX_HORIZON)
    origins = np.arange(start, test_end)
    rows = origins[:, None] + np.arange(MAX_HORIZON)[None]
    actual = table.values[np.minimum(rows, len(table) - 1)].astype(np.float64)
    residuals = np.where((rows < test_end)[..., None], actual - preds, np.nan)  # (O, H, C)
    std = np.asarray(prepared.scaler.std, np.float64)
    out = []
    for horizon in HORIZONS:
        windows = np.flatnonzero((origins >= first_target) & (origins + horizon <= test_end))
        point, truth = preds[windows, :horizon] / std, actual[windows, :horizon] / std
        levels = np.array(LEVELS)
        split = np.broadcast_to(levels[:, None, None, None], (len(levels), len(windows), horizon, 1))
        # Adaptive: per test origin t, the residuals of origins t-K..t-1 observed before t.
        adapted = np.empty((len(levels), len(windows), horizon, std.size))
        for lo in range(0, len(windows), 256):
            w = windows[lo : lo + 256]
            idx = w[:, None] - origins_k + np.arange(origins_k)[None]  # (B, K) into origins
            past = residuals[idx, :horizon].copy()  # (B, K, h, C)
            seen = origins[idx][:, :, None] + np.arange(horizon)[None, None] < origins[w][:, None, None]
            past[~seen] = np.nan
            adapted[:, lo : lo + 256] = adapt(calibration, levels, past, gamma)
        for method, level_grid in (("split_conformal", split), ("adaptive", adapted)):
            lo_off, hi_off = calibration.offsets(level_grid, horizon)
            quantiles = [point + calibration.at(np.full((horizon, 1), 0.5), horizon) / std]
            for k in range(len(LEVELS)):
                quantiles += [point + lo_off[k] / std, point + hi_off[k] / std]
            probs = np.array([0.5, *[p for level in LEVELS for p in ((1 - level) / 2, (1 + level) / 2)]])
            order = np.argsort(probs)
            crps = crps_from_quantiles(np.stack(quantiles)[order], probs[order], truth)
            for k, level in enumerate(LEVELS):
                lower, upper = point + lo_off[k] / std, point + hi_off[k] / std
                out.append(
                    {
                        "model": kind,
                        "dataset": "ETTh1",
                        "features": features,
                        "horizon": horizon,
                        "method": method,
                        "level": level,
                        "coverage": coverage(lower, upper, truth),
                        "width": float(np.mean(upper - lower)),
                        "winkler": winkler(lower, upper, truth, level),
                        "crps": crps,
                        "windows": len(windows),
                        "mean_adapted_level": float(level_grid[k].mean()),
                    }
                )
    return out


def run_models(args: argparse.Namespace, results: dict[str, Any], work: Path) -> None:
    from forecasting.data import DataConfig
    from forecasting.export import export_run
    from forecasting.runs import train_run

    done = {(r["model"], r["features"]) for r in results["rows"]}
    for features in args.features:
        for kind in args.models:
            if (kind, features) in done:
                continue
            t0 = time.perf_counter()
            data, params, train = model_setup(kind, work)
            config = DataConfig(dataset="ETTh1", features=features, target="OT", **data)
            run = train_run(kind, config, params, train, evaluate_test=False)
            trained = time.perf_counter() - t0
            artifact = export_run(run, work / "store", f"{kind}-{features}", max_horizon=MAX_HORIZON)
            calibrated = artifact.manifest.facts["calibration"]
            rows = score(kind, features, artifact.path, args.origins, args.gamma)
            for row in rows:
                row.update(
                    reduced=kind in REDUCED,
                    reduced_reasons=REDUCED.get(kind, ""),
                    calibration_windows=calibrated["windows"],
                    val_mse=run.metrics["val"]["scaled"]["mse"],
                    adaptive_origins=args.origins,
                    adaptive_gamma=args.gamma,
                    seconds=round(time.perf_counter() - t0, 1),
                    train_seconds=round(trained, 1),
                )
            results["rows"].extend(rows)
            RESULTS.write_text(json.dumps(results, indent=1))
            short = [(r["method"][:5], r["horizon"], r["level"], round(r["coverage"], 3)) for r in rows]
            print(f"{kind} {features}: {time.perf_counter() - t0:.0f}s {short}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latency(args: argparse.Namespace, results: dict[str, Any], work: Path) -> None:
    """Median latency of one Forecast over real gRPC, 1 client, no levels / split conformal / adaptive, interleaved."""
    from forecasting.data import DataConfig, prepare_data
    from serving.client import ArcastClient

    store = work / "store"
    prepared = prepare_data(DataConfig(dataset="ETTh1", features="S", target="OT", lookback=LOOKBACK, horizon=STEP))
    values = prepared.table.values[:, 0]
    start = prepared.borders.test[0]
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "serving", "serve", "--store", str(store), "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = []
    try:
        with ArcastClient(f"127.0.0.1:{port}") as client:
            for _ in range(200):
                try:
                    if client.health() == "SERVING":
                        break
                except Exception:
                    pass
                time.sleep(0.25)
            for kind in ("linear", "arnet"):
                model = f"{kind}-S"
                variants: dict[str, dict[str, Any]] = {
                    "none": {},
                    "split_conformal": {"levels": LEVELS},
                    "adaptive": {"levels": LEVELS, "method": "adaptive"},
                }
                times: dict[str, list[float]] = {name: [] for name in variants}
                for i in range(args.requests + 20):
                    history = values[start + i : start + i + LOOKBACK + args.origins]
                    names = list(variants)
                    for name in names[i % 3 :] + names[: i % 3]:  # each variant first, second, third in turn
                        extra = variants[name]
                        t0 = time.perf_counter()
                        client.forecast(model, [history], STEP, **extra)
                        if i >= 20:  # warm-up
                            times[name].append(time.perf_counter() - t0)
                base = float(np.median(times["none"]))
                for name, samples in times.items():
                    median = float(np.median(samples))
                    out.append(
                        {
                            "model": model,
                            "variant": name,
                            "requests": len(samples),
                            "median_ms": round(median * 1e3, 3),
                            "mean_ms": round(float(np.mean(samples)) * 1e3, 3),
                            "p90_ms": round(float(np.quantile(samples, 0.9)) * 1e3, 3),
                            "extra_vs_none_pct": round(100 * (median - base) / base, 1),
                            "history_steps": LOOKBACK + args.origins,
                        }
                    )
                    print(out[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else results  # rows another run added meanwhile
    results["latency"] = out
    results["latency_command"] = " ".join(sys.argv)
    RESULTS.write_text(json.dumps(results, indent=1))


def readme_table(results: dict[str, Any]) -> str:
    methods = ("split_conformal", "adaptive")
    head = (
        "| model | split conformal | adaptive | width split / adaptive "
        "| Winkler split / adaptive | CRPS split / adaptive |"
    )
    lines = []
    for features in ("S", "M"):
        for horizon in HORIZONS:
            lines.append(
                f"\n**ETTh1 {features}, horizon {horizon}** (coverage % at 80 / 90 / 95; at 90%: mean width and "
                "Winkler score; CRPS; standardised scale, every test window)\n"
            )
            lines += [head, "|---|---|---|---|---|---|"]
            for kind in KINDS:
                rows = [
                    r for r in results["rows"] if (r["model"], r["features"], r["horizon"]) == (kind, features, horizon)
                ]
                if not rows:
                    continue
                get = {(r["method"], r["level"]): r for r in rows}
                cov = {m: " / ".join(f"{100 * get[m, lv]['coverage']:.1f}" for lv in LEVELS) for m in methods}
                s90, a90 = get["split_conformal", 0.9], get["adaptive", 0.9]
                star = " *" if rows[0]["reduced"] else ""
                lines.append(
                    f"| {kind}{star} | {cov['split_conformal']} | {cov['adaptive']} | "
                    f"{s90['width']:.3f} / {a90['width']:.3f} | {s90['winkler']:.3f} / {a90['winkler']:.3f} | "
                    f"{s90['crps']:.4f} / {a90['crps']:.4f} |"
                )
    if results.get("latency"):
        lines += [
            "\n**Latency per Forecast** (one series, 264 steps of history, horizon 24, real gRPC, 1 client; "
            "median ms)\n",
            "| model | no levels | split conformal (3 levels) | adaptive (3 levels, 168 origins) |",
            "|---|---|---|---|",
        ]
        for model in dict.fromkeys(r["model"] for r in results["latency"]):
            got = {r["variant"]: r for r in results["latency"] if r["model"] == model}
            cells = [f"{got['none']['median_ms']:.2f}"] + [
                f"{got[v]['median_ms']:.2f} ({got[v]['extra_vs_none_pct']:+.0f}%)"
                for v in ("split_conformal", "adaptive")
            ]
            lines.append(f"| {model} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(KINDS))
    parser.add_argument("--features", nargs="+", default=["S", "M"])
    parser.add_argument("--origins", type=int, default=168, help="adaptive: backtest origins (default 168)")
    parser.add_argument("--gamma", type=float, default=0.01, help="adaptive: step size (default 0.01)")
    parser.add_argument("--requests", type=int, default=300, help="latency: requests per variant")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="only the latency run (models already exported)")
    parser.add_argument("--readme", action="store_true", help="print the README table from the results")
    parser.add_argument("--fresh", action="store_true", help="start the results over")
    args = parser.parse_args()
    if args.readme:
        print(readme_table(json.loads(RESULTS.read_text())))
        return 0
    results: dict[str, Any] = {"rows": [], "command": " ".join(sys.argv)}
    if RESULTS.exists() and not args.fresh:
        results = json.loads(RESULTS.read_text())
    work = Path(os.environ.get("ARCAST_BENCH_WORK") or tempfile.mkdtemp(prefix="intervals-"))
    print(f"work folder {work}", flush=True)
    if not args.latency_only:
        run_models(args, results, work)
    if not args.skip_latency:
        latency(args, results, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
