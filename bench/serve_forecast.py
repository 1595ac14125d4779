"""Benchmark the forecast service: batching on vs off under load, onnxruntime vs torch eager, server memory.

Everything is measured side by side in one run on this machine and reported as ratios, since the machine is
shared and absolute numbers drift. The servers run in their own processes; the load comes from grpc.aio clients.

    .venv/bin/python bench/serve_forecast.py            # writes bench/results/serve_forecast.json
    .venv/bin/python bench/serve_forecast.py --quick    # a smoke run
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

import numpy as np
import torch
from serving_load import Phase, closed_loop, load_row, on_off, peak_rss_mib, start_server  # bench/serving_load.py

from arcast_core.files import atomic_write_text
from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, prepare_data
from forecasting.export import ServingGraph, export_run
from forecasting.runs import train_run
from serving.artifact import read_artifact, resolve
from serving.client import ArcastClient
from serving.proto.arcast.v1 import forecast_pb2_grpc
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


def build_store(store: Path) -> dict[str, dict]:
    """Train the scenarios' models briefly on ETTh1 (OT) and export them; also a multivariate model for memory."""
    out = {}
    for name, scenario in SCENARIOS.items():
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


async def load(
    target: str, model: str, histories: np.ndarray, horizon: int, clients: int, seconds: float, phase: Phase
) -> None:
    """``clients`` concurrent callers, each sending one-series requests back to back for ``seconds``."""
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_pb2_grpc.ForecastServiceStub(channel)
        requests = [ArcastClient.forecast_request(model, [h], horizon) for h in histories]
        await closed_loop(lambda i: stub.Forecast(requests[i % len(requests)], timeout=30), clients, seconds, phase)


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
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load phase")
    parser.add_argument("--out", default="bench/results/serve_forecast.json")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    concurrency = (1, 8, 64)

    prepared = prepare_data(DataConfig(dataset="ETTh1", features="S", lookback=LOOKBACK, horizon=STEP))
    test = prepared.table.values[slice(*prepared.borders.test), 0]
    histories = np.stack([test[i : i + LOOKBACK] for i in range(0, len(test) - LOOKBACK, 7)])

    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
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
            "request": "one series per request",
            "server": f"max-batch 256, max-wait {MAX_WAIT_MS} ms, 256 workers",
            "scenarios": SCENARIOS,
        },
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        trained = build_store(store)
        servers = {mode: start_server(store, mode == "on", MAX_WAIT_MS) for mode in ("on", "off")}
        try:
            results["server_peak_rss_mib_after_load"] = {}
            for name, scenario in SCENARIOS.items():
                model, horizon = f"etth1-{name}", scenario["horizon"]
                rows = {}
                for clients in concurrency:
                    targets = {mode: target for mode, (_, target) in servers.items()}
                    row = on_off(
                        lambda t, secs, phase: load(t, model, histories, horizon, clients, secs, phase),  # noqa: B023
                        targets,
                        seconds,
                    )
                    rows[str(clients)] = row
                    print(f"{name} clients={clients}: on {row['on']['rps']:.0f} rps, off {row['off']['rps']:.0f} rps")
                speed = ort_vs_torch(
                    trained[name]["run"], resolve(store, model), histories, horizon, 200 if args.quick else 2000
                )
                results["scenarios"][name] = {
                    "horizon": horizon,
                    "test_mse_scaled": trained[name]["test_mse"],
                    "load": rows,
                    "batch1_ort_vs_torch": speed,
                }
            for mode, (proc, _) in servers.items():
                results["server_peak_rss_mib_after_load"][f"batching_{mode}"] = peak_rss_mib(proc.pid)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=60)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(args.out)
    atomic_write_text(out, json.dumps(results, indent=2))
    print_table(results)
    print(f"wrote {out}")
    return 0


def print_table(results: dict) -> None:
    print("\n| scenario | clients | batching on rps | off rps | on/off | p50 on/off ms | p99 on/off ms |")
    print("|---|---|---|---|---|---|---|")
    for name, s in results["scenarios"].items():
        for clients, row in s["load"].items():
            print(load_row([name, clients], row))
    print("\n| scenario | onnxruntime ms | torch eager ms | speed-up |")
    print("|---|---|---|---|")
    for name, s in results["scenarios"].items():
        sp = s["batch1_ort_vs_torch"]
        print(f"| {name} | {sp['onnxruntime_ms']:.3f} | {sp['torch_eager_ms']:.3f} | {sp['speedup']:.1f}x |")
    print(f"\nserver peak RSS (MiB): {results['server_peak_rss_mib_after_load']}")


if __name__ == "__main__":
    sys.exit(main())
