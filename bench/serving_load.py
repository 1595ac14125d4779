"""Shared by the serving benchmarks: a server in its own process, closed-loop gRPC load, peak memory."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.server import spawn_server

ROUNDS = 4  # alternating slices per load phase


def start_server(store: Path, batching: bool, max_wait_ms: float = 0.0, max_batch: int = 256) -> tuple[Any, str]:
    """A server process for load tests: quiet logs, many workers, batching on or off."""
    options = ["--log-level", "warning", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    options += ["--max-workers", "256", *([] if batching else ["--no-batching"])]
    return spawn_server(store, *options)


def load_row(cells: list[str], row: dict[str, Any]) -> str:
    """A markdown row: ``cells``, then throughput on/off, their ratio, p50 and p99 on/off."""
    on, off = row["on"], row["off"]
    return (
        f"| {' | '.join(cells)} | {on['rps']:.0f} | {off['rps']:.0f} | {row['throughput_ratio_on_vs_off']:.2f}x"
        f" | {on['p50_ms']:.2f} / {off['p50_ms']:.2f} | {on['p99_ms']:.2f} / {off['p99_ms']:.2f} |"
    )


def git_commit(checkout: Path) -> str:
    """The commit a checkout is at (``+dirty`` with uncommitted changes): which code a row measured."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True, text=True).stdout
    return head.stdout.strip() + ("+dirty" if dirty.strip() else "")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Phase:
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    requests: int = 0  # LoadClients: requests answered, and the rate integrated over the slices' seconds
    weighted_seconds: float = 0.0
    rate_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_s) * 1000
        rps = self.rate_seconds / self.weighted_seconds if self.weighted_seconds else len(lat) / self.elapsed_s
        return {
            "requests": len(lat),
            "rps": rps,
            "mean_ms": float(lat.mean()),
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
        }


async def closed_loop(call: Callable[[int], Awaitable[Any]], clients: int, seconds: float, phase: Phase) -> None:
    """``clients`` concurrent callers, each sending ``call(i)`` back to back for ``seconds`` (after one warm call);
    latencies and elapsed time are added to ``phase``."""
    await call(0)
    stop_at = time.perf_counter() + seconds

    async def caller(first: int) -> None:
        i = first
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await call(i)
            phase.latencies_s.append(time.perf_counter() - t0)
            i += clients

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(clients)))
    phase.elapsed_s += time.perf_counter() - started


def on_off(load: Callable[[str, float, Phase], Awaitable[None]], targets: dict[str, str], seconds: float) -> dict:
    """Batching on against off: ``seconds`` of load for each, in slices alternating on, off, off, on, ... so that
    both see the same drift of a shared machine; each mode's slices pooled. ``load(target, seconds, phase)``."""
    phases = {mode: Phase() for mode in targets}
    for r in range(ROUNDS):
        for mode in targets if r % 2 == 0 else reversed(targets):
            asyncio.run(load(targets[mode], seconds / ROUNDS, phases[mode]))
    out: dict[str, Any] = {mode: phase.summary() for mode, phase in phases.items()}
    out["throughput_ratio_on_vs_off"] = out["on"]["rps"] / out["off"]["rps"]
    return out


def side_by_side(
    measure: Callable[[str, str, float, Phase], None],
    targets: dict[str, str],
    seconds: float,
    rounds: int = ROUNDS,
) -> dict[str, dict[str, Any]]:
    """``seconds`` of load on each target, in ``rounds`` slices whose order alternates (a, b, c, c, b, a, ...) so
    that every mode sees the same drift of a shared machine; each mode's slices pooled.
    ``measure(mode, target, seconds, phase)`` runs one slice."""
    phases = {mode: Phase() for mode in targets}
    for r in range(rounds):
        for mode in targets if r % 2 == 0 else reversed(targets):
            measure(mode, targets[mode], seconds / rounds, phases[mode])
    return {mode: phase.summary() for mode, phase in phases.items()}


class LoadClients:
    """``procs`` load-generator processes (bench/load_client.py) holding the same serialized requests.

    ``measure(target, clients, seconds)`` splits ``clients`` callers over the processes (1 client: one process) and
    over as many connections as callers (at most ``channels_per_proc`` per process), runs them at once and pools
    their latencies; requests per second is the sum of the processes' rates.
    """

    def __init__(self, method: str, requests: list[bytes], procs: int = 2, channels_per_proc: int = 16) -> None:
        import pickle
        import sys
        import tempfile

        self._file = tempfile.NamedTemporaryFile(suffix=".pkl", delete=False)  # noqa: SIM115
        self._file.write(pickle.dumps(requests))
        self._file.close()
        script = Path(__file__).with_name("load_client.py")
        argv = [sys.executable, str(script), "--method", method, "--requests", self._file.name]
        self._procs = [
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(procs)
        ]
        self._channels = channels_per_proc
        for proc in self._procs:
            assert proc.stdout is not None
            proc.stdout.readline()  # ready

    def measure(self, target: str, clients: int, seconds: float, phase: Phase) -> None:
        import json

        used = self._procs[: max(1, min(len(self._procs), clients))]
        shares = [clients // len(used) + (1 if i < clients % len(used) else 0) for i in range(len(used))]
        for proc, share in zip(used, shares, strict=True):
            assert proc.stdin is not None
            command = {"target": target, "clients": share, "channels": min(share, self._channels), "seconds": seconds}
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        answers = []
        for proc in used:
            assert proc.stdout is not None
            answers.append(json.loads(proc.stdout.readline()))
        rates = [len(a["latencies_ms"]) / a["elapsed_s"] for a in answers]
        phase.latencies_s.extend(ms / 1000 for a in answers for ms in a["latencies_ms"])
        phase.requests += sum(len(a["latencies_ms"]) for a in answers)
        phase.weighted_seconds += seconds
        phase.rate_seconds += sum(rates) * seconds

    def close(self) -> None:
        for proc in self._procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in self._procs:
            proc.wait(timeout=30)
        Path(self._file.name).unlink(missing_ok=True)


class H2Load:
    """Closed-loop load from h2load (nghttp2's HTTP/2 benchmark, C): a much lighter client than Python gRPC, so on
    a small machine more of the CPU is left to the server. Each caller is a connection of its own with one call in
    flight (-c clients -m 1), sending one prepared request (``body``: the serialized message) as a gRPC call; the
    gRPC status is not checked here (the servers' error counters are, by the benchmarks)."""

    def __init__(self, method: str, body: bytes) -> None:
        import shutil
        import struct
        import tempfile

        self.binary = shutil.which("h2load")
        if self.binary is None:
            raise RuntimeError("h2load is not on PATH (apt-get install nghttp2-client), or use --load python")
        self._dir = tempfile.TemporaryDirectory()
        self._body = Path(self._dir.name) / "body.bin"
        self._body.write_bytes(b"\0" + struct.pack(">I", len(body)) + body)  # gRPC framing: uncompressed, length
        self._method = method

    def measure(self, target: str, clients: int, seconds: float, phase: Phase) -> None:
        import re

        log = Path(self._dir.name) / "requests.tsv"
        log.unlink(missing_ok=True)  # h2load appends to its log file
        cmd = [self.binary or "h2load", "-D", f"{int(seconds * 1000)}ms", "--warm-up-time", "300ms", "-t", "1"]
        cmd += ["-c", str(clients), "-m", "1", "-H", "content-type: application/grpc", "-H", "te: trailers"]
        cmd += ["-d", str(self._body), "--log-file", str(log), f"http://{target}{self._method}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
        failed = re.search(r"(\d+) failed, (\d+) errored", out)
        if rate is None or failed is None or int(failed.group(1)) or int(failed.group(2)):
            raise RuntimeError(f"h2load: {out[-800:]}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
        if any(row[1] != "200" for row in rows):
            raise RuntimeError(f"h2load: HTTP statuses other than 200 from {target}")
        phase.latencies_s.extend(int(row[2]) / 1e6 for row in rows)
        phase.requests += len(rows)
        phase.weighted_seconds += seconds
        phase.rate_seconds += float(rate.group(1)) * seconds

    def close(self) -> None:
        self._dir.cleanup()


def scrape(endpoints: list[str]) -> dict[str, float]:
    """Every worker's /metrics, summed over the ``worker`` label: {metric{labels}: value}."""
    import re
    import urllib.request

    out: dict[str, float] = {}
    for endpoint in endpoints:
        text = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                name = re.sub(r',?worker="\d+"', "", name).replace("{,", "{").replace("{}", "")
                out[name] = out.get(name, 0.0) + float(value)
    return out


STAGES = ("decode", "validate", "batch_wait", "run", "build", "encode")


def stage_costs(before: dict[str, float], after: dict[str, float], task: str, method: str) -> dict[str, float]:
    """Mean milliseconds per request of each server stage between two scrapes, the handler's mean
    (``arcast_request_seconds``) and the number of requests and errors."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    out: dict[str, float] = {}
    for stage in STAGES:
        key = f'{{stage="{stage}",task="{task}"}}'
        count = delta(f"arcast_stage_seconds_count{key}")
        out[stage] = 1000 * delta(f"arcast_stage_seconds_sum{key}") / count if count else float("nan")
    count = delta(f'arcast_request_seconds_count{{method="{method}"}}')
    out["handler"] = 1000 * delta(f'arcast_request_seconds_sum{{method="{method}"}}') / count if count else float("nan")
    out["requests"] = count
    out["errors"] = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith("arcast_errors_total"))
    return out


def spawn_with_metrics(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[str], str, list[str]]:
    """A server command that prints ``listening on HOST:PORT`` then ``metrics on HOST:PORT[,HOST:PORT...]``."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)
    assert proc.stdout is not None
    first, second = proc.stdout.readline(), proc.stdout.readline()
    if not first.startswith("listening on") or not second.startswith("metrics on"):
        proc.kill()
        raise RuntimeError(f"server did not start: {first!r} {second!r} (its log is on stderr)")
    return proc, first.split()[-1], second.split()[-1].split(",")


def start_arcast(
    store: Path, batching: bool, workers: int = 1, max_wait_ms: float = 0.0, providers: str | None = None
) -> tuple[Any, str, list[str]]:
    """``python -m serving serve`` for load tests (quiet logs, 256 workers, metrics on free ports)."""
    import sys

    argv = [sys.executable, "-m", "serving", "serve", "--store", str(store), "--port", "0", "--metrics-port", "0"]
    argv += ["--log-level", "warning", "--max-batch", "256", "--max-wait-ms", str(max_wait_ms), "--max-workers", "256"]
    argv += ["--workers", str(workers), *([] if batching else ["--no-batching"])]
    argv += ["--providers", providers] if providers else []
    return spawn_with_metrics(argv)


def start_bare(method: str, replies: dict[str, bytes], folder: Path, workers: int = 1, aio: bool = False) -> Any:
    """bench/bare_server.py: the stack's floor (same method and messages, no work)."""
    import pickle
    import sys

    path = folder / "replies.pkl"
    path.write_bytes(pickle.dumps(replies))
    argv = [sys.executable, str(Path(__file__).with_name("bare_server.py")), "--method", method, "--replies", str(path)]
    argv += ["--workers", str(workers), *(["--aio"] if aio else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        proc.kill()
        raise RuntimeError(f"bare server did not start: {line!r}")
    return proc, line.split()[-1]


FORECAST_METHOD = "/arcast.v1.ForecastService/Forecast"
RECOMMEND_METHOD = "/arcast.v1.RecommendService/Recommend"
ARCAST_MODES = ("on", "off", "workers2")  # arcast: batching on, off, and on with 2 worker processes
FLOOR_MODES = ("floor", "floor_workers2", "floor_aio")  # bare server: thread pool, 2 processes, grpc.aio
FLOOR_OF = {"on": "floor", "off": "floor", "workers2": "floor_workers2"}  # the floor with as many processes


def raw_call(target: str, method: str, request: bytes) -> bytes:
    """One call with serialized bytes both ways: a real answer to size the bare server's reply (and a check that
    the server answers OK before the load, since h2load does not read gRPC statuses)."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        return channel.unary_unary(method, request_serializer=None, response_deserializer=None)(request, timeout=60)


def make_loader(kind: str, method: str, requests: list[bytes]) -> Any:
    return H2Load(method, requests[0]) if kind == "h2load" else LoadClients(method, requests)


def compare_cell(
    loader: Any,
    targets: dict[str, str],
    metrics: dict[str, list[str]],
    clients: int,
    seconds: float,
    task: str,
    method: str,
) -> dict[str, Any]:
    """One load cell: every server side by side, stage costs from the arcast servers' own histograms, and each
    arcast figure as a fraction of the bare floor with as many processes."""
    before = {mode: scrape(endpoints) for mode, endpoints in metrics.items()}
    row: dict[str, Any] = side_by_side(lambda mode, t, secs, ph: loader.measure(t, clients, secs, ph), targets, seconds)
    row["stages_ms"] = {
        mode: stage_costs(before[mode], scrape(endpoints), task, method) for mode, endpoints in metrics.items()
    }
    for mode in ARCAST_MODES:
        row[mode]["floor_fraction"] = row[mode]["rps"] / row[FLOOR_OF[mode]]["rps"]
    row["workers2"]["floor_fraction_1_process"] = row["workers2"]["rps"] / row["floor"]["rps"]
    row["throughput_ratio_on_vs_off"] = row["on"]["rps"] / row["off"]["rps"]
    row["workers_speedup"] = row["workers2"]["rps"] / row["on"]["rps"]
    row["floor_workers_speedup"] = row["floor_workers2"]["rps"] / row["floor"]["rps"]
    row["floor_aio_vs_threads"] = row["floor_aio"]["rps"] / row["floor"]["rps"]
    return row


def floor_row(cells: list[str], row: dict[str, Any]) -> str:
    """A markdown row: ``cells``, then rps of on / 2 workers / floor / floor with 2 processes / floor on aio, the
    floor fractions and the workers' speed-up."""
    r = {mode: row[mode]["rps"] for mode in (*ARCAST_MODES, *FLOOR_MODES)}
    return (
        f"| {' | '.join(cells)} | {r['on']:.0f} | {r['off']:.0f} | {r['workers2']:.0f} | {r['floor']:.0f} | "
        f"{r['floor_workers2']:.0f} | {r['floor_aio']:.0f} | {row['on']['floor_fraction']:.2f} | "
        f"{row['workers2']['floor_fraction']:.2f} | {row['workers_speedup']:.2f}x |"
    )


FLOOR_HEADER = "| on | off | 2 workers | floor | floor, 2 proc | floor, aio | on / floor | 2 workers / floor, 2 proc |"
FLOOR_HEADER += " 2 workers / on |"


def stage_row(cells: list[str], stages: dict[str, float], latency_ms: float) -> str:
    """A markdown row of one server's mean stage costs (ms), its handler time and the client-seen mean latency."""
    parts = [f"{stages[s]:.3f}" for s in STAGES]
    return f"| {' | '.join(cells)} | {' | '.join(parts)} | {stages['handler']:.3f} | {latency_ms:.3f} |"


STAGE_HEADER = "| decode | validate | batch wait | run | build | encode | handler | client latency |"
