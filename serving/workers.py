"""``serve --workers N``: N server processes on one port, so that a Python server uses more than one core.

One Python process answers gRPC under one GIL: whatever the cores, it handles about one core's worth of RPCs. With
``--workers N`` this supervisor starts N copies of ``python -m serving serve`` (the same flags), each a complete
server of its own (model registry, hot reload of the store, dynamic batching, drain), all bound to one port with
SO_REUSEPORT: the kernel spreads incoming *connections* over them (a connection, with every call multiplexed on it,
stays with the worker that accepted it, so one client channel is served by one worker; load from many connections
is spread).

- Port: the supervisor reserves the port with a bound, not listening, SO_REUSEPORT socket (``--port 0``: a free one)
  until every worker listens on it, then prints ``listening on HOST:PORT`` like a single server.
- Metrics: one /metrics endpoint per worker, every sample labelled ``worker="<index>"``: ``--metrics-port M`` gives
  worker i the port M + i (``0``: each picks a free one); the supervisor prints ``metrics on HOST:P0,HOST:P1,...``
  after its ``listening on`` line and logs them. Scrape every worker (sum over ``worker`` for server totals).
- onnxruntime: each worker's intra-op threads default to the usable cores divided by N (at least 1), so N workers
  do not oversubscribe the cores; ``--threads`` overrides it.
- SIGTERM or SIGINT: forwarded to every worker; each drains (new calls UNAVAILABLE, in-flight calls finish, up to
  ``--grace``); the supervisor exits 0 once all have exited 0, 1 otherwise.
- A worker that dies while serving is logged with its exit status and restarted in its place (the others keep
  serving the port meanwhile); more than ``MAX_RESTARTS`` deaths within ``RESTART_WINDOW_S`` (a worker that cannot
  start, say) stop every worker and the supervisor exits 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
INTERNAL = ("func", "command", "parser", "workers", "port", "metrics_port", "threads")


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[str]
    metrics: str | None = None  # host:port of its /metrics
    started: float = field(default_factory=time.monotonic)


def worker_threads(workers: int) -> int:
    """Intra-op threads per worker: the usable cores shared out (at least 1)."""
    from serving.sessions import default_threads

    return max(1, default_threads() // workers)


def child_argv(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """``serve``'s flags as parsed, written back out (every flag a worker must share), without the ones the
    supervisor sets per worker."""
    out: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in INTERNAL or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:  # store_true
            out.append(flag)
        else:
            out += [flag, str(value)]
    return out


def _reserve(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket on host:port, so no other program takes the port meanwhile."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    holder = socket.socket(family, kind, proto)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind(address)
    except OSError as err:
        holder.close()
        raise OSError(f"--port: cannot listen on {host}:{port}: in use, or not an address of this machine") from err
    return holder


class Supervisor:
    def __init__(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
        self.count = args.workers
        self.host = args.host
        self.grace_s = args.grace
        self.metrics_port = args.metrics_port
        self.threads = args.threads or worker_threads(self.count)
        self.flags = child_argv(args, parser)
        self.port = 0
        self.workers: list[Worker] = []
        self._deaths: deque[float] = deque()
        self._stop = threading.Event()

    def _spawn(self, index: int) -> Worker:
        port = self.metrics_port and self.metrics_port + index  # None: no metrics; 0: each picks a free port
        metrics = [] if port is None else ["--metrics-port", str(port)]
        cmd = [sys.executable, "-m", "serving", "serve", *self.flags, "--port", str(self.port)]
        cmd += [*metrics, "--threads", str(self.threads), "--reuse-port", "--worker-index", str(index)]
        return Worker(index, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))

    @staticmethod
    def _listening(worker: Worker) -> Worker:
        """Wait for a worker's "metrics on HOST:PORT" (with metrics), then its "listening on HOST:PORT"."""
        assert worker.proc.stdout is not None
        for line in worker.proc.stdout:
            if line.startswith("metrics on"):
                worker.metrics = line.split()[-1]
            elif line.startswith("listening on"):
                return worker
        status = worker.proc.wait()
        raise RuntimeError(f"worker {worker.index} exited with status {status} before listening (its log is above)")

    def _start(self, index: int) -> Worker:
        return self._listening(self._spawn(index))

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self._stop.set())
        holder = _reserve(self.host, self.port)
        self.port = holder.getsockname()[1]
        try:
            self.workers = [self._spawn(index) for index in range(self.count)]  # they start side by side
            for worker in self.workers:
                self._listening(worker)
        except RuntimeError as err:
            log.error("%s", err)
            self._shutdown()
            return 1
        finally:
            holder.close()
        print(f"listening on {self.host}:{self.port}", flush=True)  # the one line scripts wait for, first
        endpoints = [w.metrics for w in self.workers if w.metrics]
        if endpoints:
            print(f"metrics on {','.join(endpoints)}", flush=True)
        log.info(
            "serving with workers",
            extra={
                "address": f"{self.host}:{self.port}",
                "workers": [{"worker": w.index, "pid": w.proc.pid, "metrics": w.metrics} for w in self.workers],
                "threads_per_worker": self.threads,
            },
        )
        while not self._stop.wait(0.2):
            for slot, worker in enumerate(self.workers):
                status = worker.proc.poll()
                if status is None or self._stop.is_set():
                    continue
                log.error(
                    "worker %d (pid %d) exited with status %d: restarting it", worker.index, worker.proc.pid, status
                )
                now = time.monotonic()
                self._deaths.append(now)
                while self._deaths and now - self._deaths[0] > RESTART_WINDOW_S:
                    self._deaths.popleft()
                if len(self._deaths) > MAX_RESTARTS:
                    log.error("more than %d worker deaths within %.0f s: stopping", MAX_RESTARTS, RESTART_WINDOW_S)
                    self._shutdown()
                    return 1
                try:
                    self.workers[slot] = self._start(worker.index)
                except RuntimeError as err:
                    log.error("%s", err)
                    self._deaths.append(time.monotonic())
        log.info("signal received: draining every worker")
        return self._shutdown()

    def _shutdown(self) -> int:
        """SIGTERM to every worker, then wait for each to drain; 0 when all exited 0."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        until = time.monotonic() + self.grace_s + 30
        failed = 0
        for worker in self.workers:
            try:
                status = worker.proc.wait(timeout=max(until - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time: killed", worker.index)
                worker.proc.kill()
                status = worker.proc.wait()
            if status != 0:
                failed += 1
                log.error("worker %d exited with status %d", worker.index, status)
        log.info("stopped", extra={"workers": len(self.workers), "failed": failed})
        return 1 if failed else 0


def supervise(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    supervisor = Supervisor(args, parser)
    supervisor.port = args.port
    return supervisor.run()


def die_with_parent() -> None:
    """A worker stops (SIGTERM: drains) when its supervisor dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl here: the worker outlives a killed supervisor
        return
