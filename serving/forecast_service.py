"""ForecastService and ModelService: request validation, precise status codes, the rollout through the registry."""

from __future__ import annotations

import concurrent.futures
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from serving.observability import ServerMetrics
from serving.proto.arcast.v1 import forecast_pb2, forecast_pb2_grpc, models_pb2, models_pb2_grpc
from serving.registry import LoadedModel, ModelNotFound, ModelRegistry

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_series: int = 1024  # series per request
    max_values: int = 4_000_000  # history values per request, all series together
    request_timeout_s: float = 30.0  # used when the client sets no deadline


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class ValidatedRequest:
    model: LoadedModel
    horizon: int
    context: np.ndarray  # (n_series, context_length, C) float32
    context_stamps: np.ndarray | None  # (n_series, context_length) datetime64[us], for calendar-feature models
    future_stamps: list[np.ndarray | None]  # per series: (horizon,) datetime64[us], or None


def _timestamps(series: forecast_pb2.Series, index: int, steps: int) -> np.ndarray | None:
    if not series.timestamps:
        return None
    field = f"series[{index}].timestamps"
    if len(series.timestamps) != steps:
        raise _invalid(f"{field}: {len(series.timestamps)} timestamps for {steps} steps (give one per step or none)")
    micros = np.array([t.seconds * 1_000_000 + t.nanos // 1000 for t in series.timestamps], dtype=np.int64)
    bad = np.flatnonzero(np.diff(micros) <= 0)
    if len(bad):
        raise _invalid(f"{field}[{bad[0] + 1}]: not after the previous timestamp (timestamps must increase)")
    return micros.astype("datetime64[us]")


def validate(request: forecast_pb2.ForecastRequest, registry: ModelRegistry, limits: Limits) -> ValidatedRequest:
    if not request.model:
        raise _invalid("model: required")
    try:
        model = registry.get(request.model, request.version or None)
    except ModelNotFound as err:
        raise RequestError(grpc.StatusCode.NOT_FOUND, str(err)) from err
    runner = model.runner
    if not hasattr(runner, "forecast"):
        raise _invalid(f"model: {request.model!r} is a {model.manifest['model_kind']} model, not a forecaster")
    if request.horizon <= 0:
        raise _invalid("horizon: must be at least 1")
    if request.horizon > runner.max_horizon:
        raise _invalid(f"horizon: {request.horizon} exceeds the model's max_horizon {runner.max_horizon}")
    if not request.series:
        raise _invalid("series: at least one series is required")
    if len(request.series) > limits.max_series:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"series: {len(request.series)} series exceed the limit of {limits.max_series} per request",
        )
    total = sum(len(s.values) for s in request.series)
    if total > limits.max_values:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"series: {total} history values exceed the limit of {limits.max_values} per request",
        )
    channels, length = runner.n_channels, runner.context_length
    context = np.empty((len(request.series), length, channels), dtype=np.float32)
    stamps: list[np.ndarray | None] = []
    calendar = runner.calendar is not None
    context_stamps = np.empty((len(request.series), length), dtype="datetime64[us]") if calendar else None
    for i, series in enumerate(request.series):
        field = f"series[{i}].values"
        if not series.values:
            raise _invalid(f"{field}: empty history")
        values = np.asarray(series.values, dtype=np.float64)
        if len(values) % channels:
            raise _invalid(f"{field}: {len(values)} values are not a whole number of steps of {channels} channels")
        steps = len(values) // channels
        if steps < length:
            raise _invalid(f"{field}: {steps} steps of history, the model needs at least {length}")
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise _invalid(f"{field}[{bad[0]}]: {values[bad[0]]} is not a finite number")
        if np.abs(values).max() > np.finfo(np.float32).max:
            raise _invalid(f"{field}: values beyond the float32 range")
        context[i] = values.reshape(steps, channels)[-length:]
        past = _timestamps(series, i, steps)
        if context_stamps is not None:
            if past is None:
                raise _invalid(f"series[{i}].timestamps: required, this model uses calendar features (one per step)")
            context_stamps[i] = past[-length:]
        if past is None:
            stamps.append(None)
        else:
            delta = past[-1] - past[-2] if len(past) > 1 else np.timedelta64(0, "us")
            stamps.append(past[-1] + delta * np.arange(1, request.horizon + 1))
    return ValidatedRequest(model, int(request.horizon), context, context_stamps, stamps)


def _to_timestamp(value: np.datetime64) -> Timestamp:
    micros = int(value.astype("datetime64[us]").astype(np.int64))
    return Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def await_result(future: Future[T], context: grpc.ServicerContext, limits: Limits, what: str) -> T:
    """The batched run's result within the client's deadline (or the server's timeout when it set none)."""
    remaining = context.time_remaining()
    timeout = limits.request_timeout_s if remaining is None or math.isinf(remaining) else remaining
    try:
        return future.result(timeout=max(timeout, 0.0))
    except concurrent.futures.TimeoutError as err:
        future.cancel()
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline passed before the {what} was ready") from err
    except ValueError as err:  # the runner's own checks, e.g. a shape no validation here foresaw
        raise _invalid(str(err)) from err


class ForecastServicer(forecast_pb2_grpc.ForecastServiceServicer):
    def __init__(self, registry: ModelRegistry, metrics: ServerMetrics, limits: Limits) -> None:
        self.registry, self.metrics, self.limits = registry, metrics, limits

    def Forecast(
        self, request: forecast_pb2.ForecastRequest, context: grpc.ServicerContext
    ) -> forecast_pb2.ForecastResponse:
        with observed(self.metrics, "Forecast", request.model, context):
            checked = validate(request, self.registry, self.limits)
            future = checked.model.forecast(checked.context, checked.horizon, checked.context_stamps)
            out = await_result(future, context, self.limits, "forecast")
            response = forecast_pb2.ForecastResponse(model=checked.model.name, version=checked.model.version)
            for series, values, future_stamps in zip(request.series, out, checked.future_stamps, strict=True):
                item = response.forecasts.add(id=series.id, values=values.reshape(-1).astype(np.float64).tolist())
                if future_stamps is not None:
                    item.timestamps.extend(_to_timestamp(t) for t in future_stamps)
            return response


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, metrics: ServerMetrics) -> None:
        self.registry, self.metrics = registry, metrics

    def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        with observed(self.metrics, "ListModels", "", context):
            response = models_pb2.ListModelsResponse()
            for model in self.registry.loaded():
                if not model.name.startswith(request.name_prefix):
                    continue
                m = model.manifest
                rollout = m["rollout"]
                response.models.add(
                    name=model.name,
                    version=model.version,
                    model_kind=m["model_kind"],
                    rollout_kind=rollout["kind"],
                    context_length=rollout.get("context_length", 0),
                    step=rollout.get("step", 0),
                    max_horizon=rollout.get("max_horizon", 0),
                    channels=m.get("channels", []),
                    freq=m.get("freq") or "",
                    created_at=m["created_at"],
                    metrics=dict(_flatten(m.get("metrics", {}))),
                    providers=model.runner.session.get_providers(),
                    latest=self.registry.is_latest(model),
                )
            return response


def _flatten(tree: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, int | float):
            yield f"{prefix}{key}", float(value)


@contextmanager
def observed(metrics: ServerMetrics, method: str, model: str, context: grpc.ServicerContext) -> Iterator[None]:
    """Count, time and log the RPC; turn RequestError into its status, unexpected errors into INTERNAL."""
    started = time.perf_counter()
    metrics.requests.labels(method, model).inc()
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
        metrics.latency.labels(method).observe(elapsed)
        if code != grpc.StatusCode.OK:
            metrics.errors.labels(method, code.name).inc()
        log.debug("rpc", extra={"method": method, "model": model, "code": code.name, "seconds": round(elapsed, 6)})
