"""The server's defaults under load: this checkout's defaults against its old batching wait (``--max-wait-ms 2``),
and optionally against an older checkout with its own defaults, side by side in one run.

    .venv/bin/python bench/serve_defaults.py --store demo-output/models [--old-checkout ../old] \
        --out bench/results/serve_defaults.json

One-series Forecast requests (the demo's AR-Net, horizon 24) from grpc.aio clients in a closed loop, at 1, 8 and 64
clients. Each configuration is a server process of its own; the load phases alternate between them in slices
(``ROUNDS``), so that all see the same drift of a shared machine, and each configuration's slices are pooled.
Ratios are against the first configuration (``new-defaults``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from serving_load import ROUNDS, Phase, closed_loop, git_commit  # bench/serving_load.py

from arcast_core.files import atomic_write_text
from serving.client import ArcastClient
from serving.proto.arcast.v1 import forecast_pb2_grpc

QUIET = ["--log-level", "warning", "--max-workers", "256"]


def spawn(checkout: Path, store: Path, options: list[str]) -> tuple[subprocess.Popen[str], str]:
    """``python -m serving serve`` from ``checkout`` (its own serving package); returns the process and address."""
    cmd = [sys.executable, "-m", "serving", "serve", "--store", str(store.resolve()), "--port", "0", *options]
    proc = subprocess.Popen(cmd, cwd=checkout, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on"):
        proc.kill()
        raise RuntimeError(f"server in {checkout} did not start: {line!r}")
    return proc, line.split()[-1]


async def load(target: str, requests: list, clients: int, seconds: float, phase: Phase) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_pb2_grpc.ForecastServiceStub(channel)
        await closed_loop(lambda i: stub.Forecast(requests[i % len(requests)], timeout=30), clients, seconds, phase)


def summary(phase: Phase) -> dict[str, float]:
    lat = np.array(phase.latencies_s) * 1000
    return {
        "requests": len(lat),
        "rps": round(len(lat) / phase.elapsed_s, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="a model store holding --model")
    parser.add_argument("--model", default="etth1-arnet")
    parser.add_argument("--old-checkout", type=Path, help="also serve from this older checkout, with its defaults")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per configuration and client count")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve_defaults.json"))
    args = parser.parse_args()

    here = Path(__file__).resolve().parents[1]
    configs = {"new-defaults": (here, QUIET), "new-code-old-defaults": (here, [*QUIET, "--max-wait-ms", "2"])}
    if args.old_checkout:
        configs["old-code-old-defaults"] = (args.old_checkout.resolve(), QUIET)
    servers = {name: spawn(checkout, args.store, options) for name, (checkout, options) in configs.items()}
    rng = np.random.default_rng(0)
    with ArcastClient(servers["new-defaults"][1]) as client:
        info = next(m for m in client.list_models() if m.name == args.model and m.latest)
    histories = rng.normal(size=(64, info.context_length * len(info.channels))) * 5 + 30
    requests = [ArcastClient.forecast_request(args.model, [h], 24) for h in histories]
    rows = []
    try:
        for clients in (1, 8, 64):
            phases = {name: Phase() for name in servers}
            for r in range(ROUNDS):
                for name in servers if r % 2 == 0 else reversed(list(servers)):
                    asyncio.run(load(servers[name][1], requests, clients, args.seconds / ROUNDS, phases[name]))
            row: dict = {"clients": clients, **{name: summary(phase) for name, phase in phases.items()}}
            base = row["new-defaults"]["rps"]
            for name in servers:
                row[name]["rps_ratio_vs_new_defaults"] = round(row[name]["rps"] / base, 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    results = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "date": time.strftime("%Y-%m-%d"),
        "configs": {
            name: {"commit": git_commit(checkout), "options": options} for name, (checkout, options) in configs.items()
        },
        "rows": rows,
    }
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
