"""Benchmark the forecast service against its own stack's floor: batching on and off, 2 worker processes, the bare
gRPC server, per-stage costs from the server's histograms, onnxruntime vs torch eager, server memory.

Everything is measured side by side in one run on this machine and reported as ratios, since the machine is
shared and absolute numbers drift. Servers, each in its own process(es), under the same load in alternating slices:
arcast with batching on, off, and on with ``--workers 2``; bench/bare_server.py (same method and messages, a canned
reply of the same size, no work) with the thread-pool server, with 2 processes, and on grpc.aio. The load comes from
h2load (C, light: ``--load h2load``, the default when it is installed) or from Python grpc.aio client processes
(``--load python``).

    .venv/bin/python bench/serve_forecast.py            # writes bench/results/serve_forecast.json
    .venv/bin/python bench/serve_forecast.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from serving_load import (  # bench/serving_load.py
    ARCAST_MODES,
    FLOOR_HEADER,
    FORECAST_METHOD,
    STAGE_HEADER,
    compare_cell,
    floor_row,
    load_row,
    make_loader,
    peak_rss_mib,
    raw_call,
    stage_row,
    start_arcast,
    start_bare,
)

from arcast_core.files import atomic_write_text
from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, prepare_data
from forecasting.export import ServingGraph, export_run
from forecasting.runs import train_run
from serving.artifact import read_artifact, resolve
from serving.client import ArcastClient
from serving.runners.window_shift import WindowShiftModel

LOOKBACK, STEP = 168, 24
MAX_WAIT_MS = 0.0  # greedy (continuous) batching: under load, requests queue while the previous batch runs
# Three served shapes, from RPC-bound to compute-bound: the linear AR-Net at one step (~10 us of compute, so the
# per-RPC overhead dominates), an MLP AR-Net rolled out over a week, and a wide MLP rolled out over 30 days, whose
# batch-1 rollout is memory-bound (each step reads 17 MB of weights): the case where merging requests pays.
SCENARIOS = {
    "linear_h24": {"params": {"loss": "mse"}, "horizon": 24},
    "mlp512_h168": {"params": {"loss": "mse", "hidden_sizes": [512, 512]}, "horizon": 168},
    "mlp2048_h720": {"params": {"loss": "mse", "hidden_sizes": [2048, 2048]}, "horizon": 720},
}


def build_store(store: Path, scenarios: dict[str, dict]) -> dict[str, dict]:
    """Train the scenarios' models briefly on ETTh1 (OT) and export them; also a multivariate model for memory."""
    out = {}
    for name, scenario in scenarios.items():
        data = DataConfig(dataset="ETTh1", features="S", lookback=LOOKBACK, horizon=STEP)
        run = train_run(
            "arnet", data, scenario["params"], TrainConfig(epochs=3, batch_size=64, lr=3e-3, progress=False)
        )
        export_run(run, store, f"etth1-{name}", max_horizon=720)
        out[name] = {"run": run, "test_mse": run.metrics["test"]["scaled"]["mse"]}
    multi = train_run(
        "arnet",
        DataConfig(dataset="ETTh1", features="M", lookback=LOOKBACK, horizon=STEP),
        {"loss": "mse"},
        TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False),
    )
    export_run(multi, store, "etth1-arnet-multivariate", max_horizon=720)
    return out


def ort_vs_torch(run, artifact_path: Path, histories: np.ndarray, horizon: int, repeats: int) -> dict:
    """Per-request time at batch 1: onnxruntime window-shift rollout vs the same rollout in torch eager."""
    served = WindowShiftModel.load(read_artifact(artifact_path))
    graph = ServingGraph(run.model, run.scaler.mean, run.scaler.std).eval()

    def torch_rollout(context: np.ndarray) -> np.ndarray:
        window, blocks = torch.from_numpy(context), []
        with torch.inference_mode():
            while sum(b.shape[1] for b in blocks) < horizon:
                blocks.append(graph(window))
                window = torch.cat([window, blocks[-1]], 1)[:, -LOOKBACK:]
        return torch.cat(blocks, 1)[:, :horizon].numpy()

    contexts = [h[-LOOKBACK:].reshape(1, LOOKBACK, 1).astype(np.float32) for h in histories]
    for c in contexts[:20]:
        served.forecast(c, horizon), torch_rollout(c)
    ort_t, torch_t = [], []
    for r in range(repeats):  # interleaved so both see the same machine load
        c = contexts[r % len(contexts)]
        t0 = time.perf_counter()
        served.forecast(c, horizon)
        t1 = time.perf_counter()
        torch_rollout(c)
        t2 = time.perf_counter()
        ort_t.append(t1 - t0)
        torch_t.append(t2 - t1)
    ort_ms, torch_ms = statistics.median(ort_t) * 1000, statistics.median(torch_t) * 1000
    return {"onnxruntime_ms": ort_ms, "torch_eager_ms": torch_ms, "speedup": torch_ms / ort_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short load phases (smoke run)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load phase, per server")
    parser.add_argument(
        "--load",
        choices=["h2load", "python"],
        default="h2load" if shutil.which("h2load") else "python",
        help="load generator: h2load (C; default when installed) or Python grpc.aio client processes",
    )
    parser.add_argument("--providers", help="the servers' onnxruntime providers (serve --providers; default: theirs)")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--repeats", type=int, default=2000, help="batch-1 rollouts, onnxruntime vs torch eager")
    parser.add_argument("--out", default="bench/results/serve_forecast.json")
    parser.add_argument("--chart", action="store_true", help="run nothing: redraw the chart (--out as .svg) from --out")
    args = parser.parse_args()
    if args.chart:
        draw_chart(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".svg"))
        return 0
    seconds = 1.0 if args.quick else args.seconds
    concurrency = (1, 8, 64)
    scenarios = {name: SCENARIOS[name] for name in args.scenarios}

    prepared = prepare_data(DataConfig(dataset="ETTh1", features="S", lookback=LOOKBACK, horizon=STEP))
    test = prepared.table.values[slice(*prepared.borders.test), 0]
    histories = np.stack([test[i : i + LOOKBACK] for i in range(0, len(test) - LOOKBACK, 7)])

    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "load_average_at_start": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "setup": {
            "lookback": LOOKBACK,
            "step": STEP,
            "load_seconds": seconds,
            "load_generator": args.load,
            "request": "one series per request",
            "server": f"max-batch 256, max-wait {MAX_WAIT_MS} ms, 256 workers",
            "modes": {
                "on": "arcast, one process, batching on",
                "off": "arcast, one process, --no-batching",
                "workers2": "arcast --workers 2 (SO_REUSEPORT), batching on, onnxruntime 1 thread each",
                "floor": "bench/bare_server.py: thread-pool server, canned reply of the same size",
                "floor_workers2": "bench/bare_server.py --workers 2",
                "floor_aio": "bench/bare_server.py --aio (grpc.aio, async handler)",
            },
            "floor_fraction": "rps / rps of the bare server with as many processes (on, off: floor; workers2: "
            "floor_workers2), same load, same run",
            "scenarios": scenarios,
        },
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        trained = build_store(store, scenarios)
        arcast = {
            "on": start_arcast(store, True, 1, MAX_WAIT_MS, args.providers),
            "off": start_arcast(store, False, 1, MAX_WAIT_MS, args.providers),
            "workers2": start_arcast(store, True, 2, MAX_WAIT_MS, args.providers),
        }
        bare: dict = {}
        try:
            requests = {
                name: [
                    ArcastClient.forecast_request(f"etth1-{name}", [h], s["horizon"]).SerializeToString()
                    for h in histories
                ]
                for name, s in scenarios.items()
            }
            replies = {f"etth1-{n}": raw_call(arcast["on"][1], FORECAST_METHOD, r[0]) for n, r in requests.items()}
            bare = {
                "floor": start_bare(FORECAST_METHOD, replies, Path(tmp)),
                "floor_workers2": start_bare(FORECAST_METHOD, replies, Path(tmp), workers=2),
                "floor_aio": start_bare(FORECAST_METHOD, replies, Path(tmp), aio=True),
            }
            targets = {mode: server[1] for mode, server in arcast.items()} | {m: s[1] for m, s in bare.items()}
            metrics = {mode: server[2] for mode, server in arcast.items()}
            results["server_peak_rss_mib_after_load"] = {}
            for name, scenario in scenarios.items():
                model, horizon = f"etth1-{name}", scenario["horizon"]
                for target in targets.values():  # every server answers OK before the load
                    raw_call(target, FORECAST_METHOD, requests[name][0])
                loader = make_loader(args.load, FORECAST_METHOD, requests[name])
                rows = {}
                try:
                    for clients in concurrency:
                        row = compare_cell(loader, targets, metrics, clients, seconds, "forecast", "Forecast")
                        rows[str(clients)] = row
                        print(f"{name} clients={clients}: " + ", ".join(f"{m} {row[m]['rps']:.0f}" for m in targets))
                finally:
                    loader.close()
                speed = ort_vs_torch(
                    trained[name]["run"], resolve(store, model), histories, horizon, 200 if args.quick else args.repeats
                )
                results["scenarios"][name] = {
                    "horizon": horizon,
                    "test_mse_scaled": trained[name]["test_mse"],
                    "load": rows,
                    "batch1_ort_vs_torch": speed,
                }
            for mode in ("on", "off"):
                results["server_peak_rss_mib_after_load"][f"batching_{mode}"] = peak_rss_mib(arcast[mode][0].pid)
        finally:
            for proc, *_ in (*arcast.values(), *bare.values()):
                proc.terminate()
                proc.wait(timeout=60)
    if "linear_h24" in results["scenarios"]:
        linear = results["scenarios"]["linear_h24"]["load"]
        results["workers_speedup"] = linear["64"]["workers_speedup"]
        results["floor_fraction_1_client"] = linear["1"]["on"]["floor_fraction"]
        results["goals"] = {
            "workers_speedup_at_64_clients >= 1.7": results["workers_speedup"] >= 1.7,
            "floor_fraction_at_1_client >= 0.8": results["floor_fraction_1_client"] >= 0.8,
        }
    results["load_average_at_end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(args.out)
    atomic_write_text(out, json.dumps(results, indent=2))
    print_table(results)
    draw_chart(results, out.with_suffix(".svg"))
    print(f"wrote {out} and its chart")
    return 0


def draw_chart(results: dict, path: Path) -> None:
    from charts import serving_chart  # bench/charts.py; matplotlib only for the chart

    panels = {f"{name}, horizon {s['horizon']}": s["load"] for name, s in results["scenarios"].items()}
    serving_chart(panels, "Forecast service, one series a request", path)


def print_table(results: dict) -> None:
    print("\n| scenario | clients | batching on rps | off rps | on/off | p50 on/off ms | p99 on/off ms |")
    print("|---|---|---|---|---|---|---|")
    for name, s in results["scenarios"].items():
        for clients, row in s["load"].items():
            print(load_row([name, clients], row))
    print(f"\n| scenario | clients {FLOOR_HEADER}")
    print("|---" * 11 + "|")
    for name, s in results["scenarios"].items():
        for clients, row in s["load"].items():
            print(floor_row([name, clients], row))
    print(f"\n| scenario | clients | server {STAGE_HEADER}")
    print("|---" * 11 + "|")
    for name, s in results["scenarios"].items():
        for clients, row in s["load"].items():
            for mode in ARCAST_MODES:
                print(stage_row([name, clients, mode], row["stages_ms"][mode], row[mode]["mean_ms"]))
    print("\n| scenario | onnxruntime ms | torch eager ms | speed-up |")
    print("|---|---|---|---|")
    for name, s in results["scenarios"].items():
        sp = s["batch1_ort_vs_torch"]
        print(f"| {name} | {sp['onnxruntime_ms']:.3f} | {sp['torch_eager_ms']:.3f} | {sp['speedup']:.1f}x |")
    print(f"\nserver peak RSS (MiB): {results['server_peak_rss_mib_after_load']}")
    if "workers_speedup" in results:
        print(f"workers_speedup (linear, 64 clients): {results['workers_speedup']:.2f}x; goals: {results['goals']}")


if __name__ == "__main__":
    sys.exit(main())
