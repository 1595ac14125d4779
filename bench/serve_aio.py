"""Would grpc.aio serve arcast's Forecast faster than the thread-pool server it uses? Measured, not assumed.

One process serves the same model registry three ways, each on its own port, and h2load loads one at a time in
alternating slices (bench/serving_load.py's ``side_by_side``), at 1, 8 and 64 clients:

- ``threads``: arcast's server as ``serve`` runs it (``ForecastServer``: ``grpc.server`` on a thread pool);
- ``aio_pool``: ``grpc.aio`` running the same synchronous handler on a migration thread pool: what a port that
  keeps today's servicers would get;
- ``aio_inline``: ``grpc.aio`` with an async handler that runs the same handler on the event loop itself. A probe,
  not a server: the loop runs one request at a time, so the dynamic batcher never merges anything, and a failing
  request is not answered with its status. It bounds what a full async port (validation on the loop, the batcher's
  result awaited) could gain where the model is cheap, and shows what losing batching costs where it is not.

    .venv/bin/python bench/serve_aio.py    # -> bench/results/serve_aio.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from serve_forecast import SCENARIOS, build_store  # bench/serve_forecast.py
from serving_load import FORECAST_METHOD, H2Load, side_by_side  # bench/serving_load.py

from arcast_core.files import atomic_write_text
from serving.client import ArcastClient
from serving.server import FORECAST_SERVICE, ForecastServer, ServerConfig
from serving.wire import forecast_handlers


class _ProbeContext:
    """What the synchronous handler asks of its context, answered from a grpc.aio one (abort raises instead)."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(f"{code.name}: {details}")


def start_aio(server: ForecastServer, inline: bool) -> int:
    """A grpc.aio server on its own event loop thread, answering Forecast with ``server``'s registry; its port."""
    servicer = server.forecast_servicer
    started: dict[str, int] = {}
    ready = threading.Event()

    async def on_loop(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return servicer.Forecast(request, _ProbeContext(context))  # type: ignore[arg-type]

    async def serve() -> None:
        pool = futures.ThreadPoolExecutor(max_workers=256)
        aio = grpc.aio.server(migration_thread_pool=pool, maximum_concurrent_rpcs=256)
        handlers = forecast_handlers(on_loop if inline else servicer.Forecast)
        aio.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(FORECAST_SERVICE, handlers),))
        started["port"] = aio.add_insecure_port("127.0.0.1:0")
        await aio.start()
        ready.set()
        await aio.wait_for_termination()

    threading.Thread(target=lambda: asyncio.run(serve()), name=f"aio-inline-{inline}", daemon=True).start()
    if not ready.wait(60):
        raise RuntimeError("the grpc.aio server did not start")
    return started["port"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="load per server and cell, in --rounds slices")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["linear_h24", "mlp512_h168"])
    parser.add_argument("--out", default="bench/results/serve_aio.json")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": os.getloadavg(),
        "setup": {
            "request": "one series of 200 values; h2load, one call in flight per client",
            "servers": "threads (arcast's), aio_pool (grpc.aio, sync handler on a thread pool), aio_inline (probe: "
            "async handler running the handler on the event loop; no batching, no error statuses)",
            "load": f"{args.seconds} s per server and cell in {args.rounds} alternating slices, one process",
        },
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        scenarios = {name: SCENARIOS[name] for name in args.scenarios}
        build_store(store, scenarios)
        server = ForecastServer(ServerConfig(store=store, max_workers=256))
        targets = {
            "threads": f"127.0.0.1:{server.start()}",
            "aio_pool": f"127.0.0.1:{start_aio(server, inline=False)}",
            "aio_inline": f"127.0.0.1:{start_aio(server, inline=True)}",
        }
        for name, scenario in scenarios.items():
            history = 10 + 3 * np.sin(np.arange(200) / 5.0)
            body = ArcastClient.forecast_request(f"etth1-{name}", [history], scenario["horizon"]).SerializeToString()
            loader = H2Load(FORECAST_METHOD, body)
            cells: dict[str, Any] = {}
            try:
                for clients in (1, 8, 64):
                    row = side_by_side(
                        lambda mode, target, secs, phase, c=clients, load=loader: load.measure(target, c, secs, phase),
                        targets,
                        args.seconds,
                        args.rounds,
                    )
                    for mode in ("aio_pool", "aio_inline"):
                        row[f"{mode}_vs_threads"] = row[mode]["rps"] / row["threads"]["rps"]
                    cells[str(clients)] = row
                    ratios = {m: round(row[f"{m}_vs_threads"], 2) for m in ("aio_pool", "aio_inline")}
                    rps = {m: round(row[m]["rps"]) for m in targets}
                    print(f"{name} clients={clients}: {rps} vs threads {ratios}", flush=True)
            finally:
                loader.close()
            results["scenarios"][name] = cells
        server.stop(grace_s=1)
    results["load_average_at_end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(Path(args.out), json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
