"""What every arcast RPC shares: limits, precise error statuses, deadlines, metrics and logging around a call."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc

from serving.batching import DeadlineExceeded, Pending, QueueFull
from serving.drain import Drain
from serving.observability import ServerMetrics
from serving.runners.base import NonFiniteOutput, Task

if TYPE_CHECKING:  # the registry imports this module (echo)
    from serving.registry import LoadedModel, ModelRegistry

log = logging.getLogger(__name__)
T = TypeVar("T")
# grpc reports "no deadline" as the time left until its far-future sentinel (~200 years), which no wait accepts;
# anything beyond this many seconds is taken as no deadline.
NO_DEADLINE_S = 1e8
ECHO_CHARS = 80  # how much of a client's string an error message repeats


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server. Each limit is named in the RESOURCE_EXHAUSTED that enforces it."""

    max_series: int = 1024  # series (Forecast) or users (RecommendBatch) per request
    max_values: int = 4_000_000  # history values per request, all series together
    max_forecast_values: int = 4_000_000  # series x horizon x channels per request: the answer's size
    max_beam_rows: int = 65_536  # users x beam width per request: the search's work (e.g. 128 users at 512)
    request_timeout_s: float = 30.0  # used when the client sets no deadline


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def exhausted(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def echo(text: str) -> str:
    """A client's string as an error message may repeat it: quoted, and cut (a name of megabytes stays out)."""
    if len(text) <= ECHO_CHARS:
        return repr(text)
    return f"{text[:ECHO_CHARS]!r}… ({len(text)} characters)"


_SERVES = {"forecast": "forecaster", "recommend": "recommender"}


def served_model(registry: ModelRegistry, name: str, version: str, task: Task) -> LoadedModel:
    """The loaded model a request names, checked to do ``task``: INVALID_ARGUMENT or NOT_FOUND otherwise."""
    if not name:
        raise invalid("model: required")
    try:
        model = registry.get(name, version or None)
    except LookupError as err:  # ModelNotFound
        raise RequestError(grpc.StatusCode.NOT_FOUND, str(err)) from err
    if model.runner.task != task:
        raise invalid(f"model: {echo(name)} is a {model.manifest.model_kind} model, not a {_SERVES[task]}")
    return model


def deadline(context: grpc.ServicerContext, limits: Limits) -> float:
    """When this call's work must be done, on the ``time.monotonic`` clock: the client's deadline, or the
    server's ``request_timeout_s`` when the client set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_S:
        remaining = limits.request_timeout_s
    return time.monotonic() + max(remaining, 0.0)


def await_result(future: Pending[T], until: float, what: str) -> T:
    """The (batched) run's result by the monotonic time ``until``; precise statuses for what can go wrong."""
    try:
        return future.result(timeout=max(until - time.monotonic(), 0.0))
    except (concurrent.futures.TimeoutError, DeadlineExceeded) as err:
        future.cancel()
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline passed before the {what} was ready") from err
    except QueueFull as err:
        raise exhausted(str(err)) from err
    except NonFiniteOutput as err:  # a broken graph: the caller gets a status, never the NaN
        log.error("non-finite model output: %s", err)
        raise RequestError(
            grpc.StatusCode.INTERNAL, f"the model answered non-finite values (NaN or infinity) for this {what}"
        ) from err
    except ValueError as err:  # the runner's own checks, e.g. a shape no validation here foresaw
        raise invalid(str(err)) from err


@dataclass(frozen=True)
class Calls:
    """What every servicer shares about the calls it answers: their metrics and the shutdown gate."""

    metrics: ServerMetrics
    drain: Drain


@contextmanager
def observed(calls: Calls, method: str, model: str, context: grpc.ServicerContext) -> Iterator[None]:
    """Pass the drain gate; count, time and log the RPC; turn RequestError into its status, unexpected errors into
    INTERNAL.

    ``model`` is a metric label: pass only the name of a loaded model (or ""), never a client's raw string.
    """
    metrics = calls.metrics
    if not calls.drain.enter():
        metrics.errors.labels(method, "UNAVAILABLE").inc()
        context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: retry (on another replica)")
    started = time.perf_counter()
    metrics.child(metrics.requests, method, model).inc()
    code = grpc.StatusCode.OK
    try:
        yield
    except RequestError as err:
        code = err.code
        context.abort(err.code, err.message)
    except Exception:
        code = grpc.StatusCode.INTERNAL
        log.exception("unexpected error", extra={"method": method, "model": model})
        context.abort(grpc.StatusCode.INTERNAL, "internal error (logged on the server)")
    finally:
        elapsed = time.perf_counter() - started
        metrics.child(metrics.latency, method).observe(elapsed)
        calls.drain.leave()
        if code != grpc.StatusCode.OK:
            metrics.errors.labels(method, code.name).inc()
        if log.isEnabledFor(logging.DEBUG):  # the record's fields cost more than the check, on every call
            log.debug("rpc", extra={"method": method, "model": model, "code": code.name, "seconds": round(elapsed, 6)})
