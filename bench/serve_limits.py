"""What one heavy request costs the server: status, time, peak memory, and the work done after its deadline.

    .venv/bin/python bench/serve_limits.py --store demo-output/models --out bench/results/serve_limits.json

The store needs a forecaster (``--forecaster``, default etth1-arnet) and a recommender (``--recommender``, default
beauty-prorec), as ``make demo`` leaves in demo-output/models. Each case runs against a fresh server process, so its
peak RSS (VmHWM) is that case's alone. ``--label`` names the code under test, so that one results file can hold runs
of an older checkout (run this script from that checkout's folder with ``--out`` pointing here) beside the new one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path.cwd()))  # the checkout this runs from: its serving package, old or new
from serving_load import git_commit, peak_rss_mib  # bench/serving_load.py

from arcast_core.files import atomic_write_text
from serving.proto.arcast.v1 import forecast_pb2, recommend_pb2, recommend_pb2_grpc
from serving.server import spawn_server


def proc_stat(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds so far) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return peak_rss_mib(pid), (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in ticks of 1/100 s


def run_case(store: Path, options: list[str], call: Callable[[grpc.Channel], str], settle_s: float) -> dict[str, Any]:
    """Start a server, make ``call`` (which returns the status name), then watch the server for ``settle_s`` more
    seconds: the CPU it burns after the call's answer is work nobody waits for."""
    proc, target = spawn_server(store, "--log-level", "error", *options)
    try:
        channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        )
        grpc.channel_ready_future(channel).result(timeout=60)
        base_rss, _ = proc_stat(proc.pid)
        started = time.perf_counter()
        status = call(channel)
        seconds = time.perf_counter() - started
        _, cpu_at_answer = proc_stat(proc.pid)
        time.sleep(settle_s)
        peak, cpu_after = proc_stat(proc.pid)
        channel.close()
        return {
            "status": status,
            "seconds": round(seconds, 3),
            "server_rss_at_start_mib": round(base_rss, 1),
            "server_peak_rss_mib": round(peak, 1),
            "cpu_s_after_answer": round(cpu_after - cpu_at_answer, 2),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def status_of(fn: Callable[[], object]) -> str:
    try:
        fn()
        return "OK"
    except grpc.RpcError as err:
        return f"{err.code().name}: {err.details()[:160]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--forecaster", default="etth1-arnet")
    parser.add_argument("--recommender", default="beauty-prorec")
    parser.add_argument("--label", default="new", help="names the code under test in the results (e.g. old, new)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve_limits.json"))
    parser.add_argument("--skip-unbounded", action="store_true", help="skip cases that would exhaust an old server")
    args = parser.parse_args()

    item_ids = np.load(args.store / args.recommender / "1" / "item_ids.npy")[1:]
    rng = np.random.default_rng(0)

    def users(n: int) -> recommend_pb2.RecommendBatchRequest:
        request = recommend_pb2.RecommendBatchRequest(model=args.recommender, k=10, beam_width=512)
        for i in range(n):
            request.users.add(user_id=str(i), history=rng.choice(item_ids, 20, replace=False).tolist())
        return request

    def recommend(n: int, timeout: float) -> Callable[[grpc.Channel], str]:
        request = users(n)
        return lambda ch: status_of(
            lambda: recommend_pb2_grpc.RecommendServiceStub(ch).RecommendBatch(request, timeout=timeout)
        )

    def gzip_bombs(count: int, mib: int) -> Callable[[grpc.Channel], str]:
        """``count`` concurrent Forecast requests of ``mib`` MiB of zeros each, sent gzip-compressed (~100 KB)."""
        request = forecast_pb2.ForecastRequest(model=args.forecaster, horizon=12)
        request.series.add(values=np.zeros(mib * 1024 * 1024 // 8))
        method = "/arcast.v1.ForecastService/Forecast"

        def call(ch: grpc.Channel) -> str:
            stub = ch.unary_unary(method, request_serializer=forecast_pb2.ForecastRequest.SerializeToString)
            barrier = threading.Barrier(count)

            def one() -> str:
                barrier.wait()
                return status_of(lambda: stub(request, timeout=120, compression=grpc.Compression.Gzip))

            with ThreadPoolExecutor(count) as pool:
                answers = list(pool.map(lambda _: one(), range(count)))
            return f"{count} x " + max(set(answers), key=answers.count)

        return call

    cases: dict[str, tuple[list[str], Callable[[grpc.Channel], str], float]] = {
        "recommend_batch_128_users_beam_512": ([], recommend(128, 600), 1),
        "recommend_batch_128_users_beam_512_deadline_2s": ([], recommend(128, 2), 15),
        "forecast_16_concurrent_gzip_60mib": ([], gzip_bombs(16, 60), 1),
    }
    if not args.skip_unbounded:  # an old server would try to take ~27 GB here
        cases["recommend_batch_1024_users_beam_512"] = ([], recommend(1024, 600), 1)
    rows = []
    for name, (options, call, settle) in cases.items():
        row = {"case": name, "code": args.label, **run_case(args.store, options, call, settle)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    results = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    results["rows"] = [r for r in results["rows"] if r["code"] != args.label] + rows
    results.setdefault("runs", {})[args.label] = {
        "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(Path.cwd()),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
