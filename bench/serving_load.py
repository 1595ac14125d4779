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
