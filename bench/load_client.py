"""A closed-loop load generator process for the serving benchmarks (started by ``bench/serving_load.py``).

One process holds the prepared requests (already serialized: the client spends no time encoding) and waits for
commands on stdin, one JSON object per line: ``{"target": "host:port", "clients": 8, "channels": 8,
"seconds": 1.5}`` (optional: ``"timeout_s"`` per call, default ``CALL_TIMEOUT_S``). It runs ``clients``
concurrent callers over ``channels`` separate connections (each its own TCP connection, so that SO_REUSEPORT can
spread them over a server's worker processes), each caller sending back to back, after one warm call per
connection; answers are not decoded. It answers one JSON line: the latencies in milliseconds and the elapsed
seconds. Several such processes load one server when one Python client cannot."""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import sys
import time
from pathlib import Path

import grpc

# Per call: 64 closed-loop clients of an LLM-sized model (AutoTimes on SmolLM2) queue for minutes on 2 cores.
CALL_TIMEOUT_S = 600.0


async def run(
    method: str,
    requests: list[bytes],
    target: str,
    clients: int,
    channels: int,
    seconds: float,
    timeout_s: float = CALL_TIMEOUT_S,
) -> dict:
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    opened = [grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, min(channels, clients)))]
    calls = [ch.unary_unary(method, request_serializer=None, response_deserializer=None) for ch in opened]
    try:
        for call in calls:  # connect and warm every connection outside the timed part
            await call(requests[0], timeout=timeout_s)
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            call, i = calls[k % len(calls)], k
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await call(requests[i % len(requests)], timeout=timeout_s)
                latencies.append((time.perf_counter() - t0) * 1000)
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(clients)))
        return {"latencies_ms": latencies, "elapsed_s": time.perf_counter() - started}
    finally:
        for ch in opened:
            await ch.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True, help="full method name, e.g. /arcast.v1.ForecastService/Forecast")
    parser.add_argument("--requests", type=Path, required=True, help="pickled list of serialized request messages")
    args = parser.parse_args()
    requests = pickle.loads(args.requests.read_bytes())
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        result = asyncio.run(
            run(
                args.method,
                requests,
                command["target"],
                command["clients"],
                command["channels"],
                command["seconds"],
                command.get("timeout_s", CALL_TIMEOUT_S),
            )
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
