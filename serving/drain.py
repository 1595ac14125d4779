"""Graceful drain: on shutdown, new calls get UNAVAILABLE (retry elsewhere) while the calls in flight finish.

Stopping a grpc server outright cancels the calls its core has accepted but not yet handed to a handler, and a
client sees CANCELLED, which it must not retry blindly. Draining first answers every such call UNAVAILABLE (safe to
retry, by the gRPC status contract) and waits for the in-flight ones, so that the final stop finds nothing to cancel.
Every arcast call passes the gate in ``serving.rpc.observed`` (a check under a lock: cheaper than an interceptor,
which builds a handler per call); health stays answered while draining, and says NOT_SERVING.
"""

from __future__ import annotations

import threading
import time

QUIET_S = 0.2  # the drain ends once no call has come for this long (callers have seen UNAVAILABLE and moved on)


class Drain:
    """Counts the calls in flight; after ``drain()`` starts, ``enter()`` refuses new ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a plain lock: this runs on every call
        self._in_flight = 0
        self._draining = False
        self._last_refused = 0.0

    def enter(self) -> bool:
        """True: the call may run (pair it with ``leave()``); False: the server is draining, refuse it."""
        with self._lock:
            if self._draining:
                self._last_refused = time.monotonic()
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def drain(self, timeout_s: float, poll_s: float = 0.01) -> int:
        """Refuse new calls; wait up to ``timeout_s`` for those in flight to finish and for callers to stop coming
        (``QUIET_S`` without a call). Returns how many calls are still running."""
        until = time.monotonic() + timeout_s
        with self._lock:
            self._draining = True
            self._last_refused = time.monotonic()  # calls already on their way get QUIET_S to arrive
        while time.monotonic() < until:
            with self._lock:
                if not self._in_flight and time.monotonic() - self._last_refused >= QUIET_S:
                    break
            time.sleep(poll_s)
        with self._lock:
            return self._in_flight
