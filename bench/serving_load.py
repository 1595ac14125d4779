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
    out: dict[str, Any] = {}
    for mode, phase in phases.items():
        lat = np.array(phase.latencies_s) * 1000
        out[mode] = {
            "requests": len(lat),
            "rps": len(lat) / phase.elapsed_s,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
        }
    out["throughput_ratio_on_vs_off"] = out["on"]["rps"] / out["off"]["rps"]
    return out
