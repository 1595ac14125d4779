"""Graceful drain: on shutdown, new calls get UNAVAILABLE (retry elsewhere) while the calls in flight finish.

Stopping a grpc server outright cancels the calls its core has accepted but not yet handed to a handler, and a
client sees CANCELLED, which it must not retry blindly. Draining first answers every such call UNAVAILABLE (safe to
retry, by the gRPC status contract) and waits for the in-flight ones, so that the final stop finds nothing to cancel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

HEALTH_PREFIX = "/grpc.health.v1."  # health stays answered while draining: it says NOT_SERVING
QUIET_S = 0.2  # the drain ends once no call has come for this long (callers have seen UNAVAILABLE and moved on)


class Drain(grpc.ServerInterceptor):
    """Counts the unary calls in flight; after ``start()``, answers new ones UNAVAILABLE."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._in_flight = 0
        self._draining = False
        self._last_refused = 0.0

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        inner = handler.unary_unary

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            with self._changed:
                draining = self._draining
                if draining:
                    self._last_refused = time.monotonic()
                else:
                    self._in_flight += 1
            if draining:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: retry (on another replica)")
            try:
                return inner(request, context)
            finally:
                with self._changed:
                    self._in_flight -= 1
                    self._changed.notify_all()

        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    def drain(self, timeout_s: float) -> int:
        """Refuse new calls; wait up to ``timeout_s`` for those in flight to finish and for callers to stop coming
        (``QUIET_S`` without a call). Returns how many calls are still running."""
        until = time.monotonic() + timeout_s
        with self._changed:
            self._draining = True
            self._last_refused = time.monotonic()  # calls already on their way get QUIET_S to arrive
            while (left := until - time.monotonic()) > 0:
                quiet = time.monotonic() - self._last_refused >= QUIET_S
                if not self._in_flight and quiet:
                    break
                self._changed.wait(min(left, QUIET_S))
            return self._in_flight
