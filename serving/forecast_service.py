"""ForecastService and ModelService: request validation, precise status codes, the rollout through the registry."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from serving import wire
from serving.interval_service import interval_support, plan_intervals
from serving.proto.arcast.v1 import forecast_pb2_grpc, models_pb2, models_pb2_grpc
from serving.registry import LoadedModel, ModelRegistry
from serving.rpc import Calls, Limits, RequestError, await_result, deadline, exhausted, invalid, observed, served_model
from serving.runners.forecast import FLOAT32_MAX, NON_FINITE_FORECAST, ForecastRunner
from serving.time_features import future_from_history, parse_freq

log = logging.getLogger(__name__)
# A history whose sum of squares is below this has every value finite and within float32 (each square is at most
# the sum, NaN and infinity make the sum NaN or infinite): one BLAS call, no temporary array, accepts the usual
# history; any other is checked value by value (_refuse_values).
FLOAT32_MAX_SQUARED = FLOAT32_MAX * FLOAT32_MAX
# The protobuf Timestamp range (0001-01-01 to 9999-12-31): anything outside is not a time at all.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799


@dataclass
class ValidatedRequest:
    model: LoadedModel
    horizon: int
    context: np.ndarray  # (n_series, context_length, C) float32
    context_stamps: np.ndarray | None  # (n_series, context_length) datetime64[us], for calendar-feature models
    future_stamps: list[np.ndarray | None]  # per series: (horizon,) datetime64[us], or None
    histories: list[np.ndarray] = field(default_factory=list)  # per series: the whole history (steps, C)
    history_stamps: list[np.ndarray | None] = field(default_factory=list)  # and its timestamps, if given


def _timestamps(series: wire.Series, index: int, steps: int) -> np.ndarray | None:
    if not series.timestamps:
        return None
    field = f"series[{index}].timestamps"
    if len(series.timestamps) != steps:
        raise invalid(f"{field}: {len(series.timestamps)} timestamps for {steps} steps (give one per step or none)")
    seconds = np.fromiter((t.seconds for t in series.timestamps), dtype=np.int64, count=steps)
    nanos = np.fromiter((t.nanos for t in series.timestamps), dtype=np.int64, count=steps)
    bad = np.flatnonzero((seconds < MIN_SECONDS) | (seconds > MAX_SECONDS))
    if len(bad):
        raise invalid(f"{field}[{bad[0]}]: {seconds[bad[0]]} seconds is outside the years 1 to 9999")
    bad = np.flatnonzero((nanos < 0) | (nanos > 999_999_999))
    if len(bad):
        raise invalid(f"{field}[{bad[0]}].nanos: {nanos[bad[0]]} is outside 0..999999999")
    micros = seconds * 1_000_000 + nanos // 1000
    bad = np.flatnonzero(np.diff(micros) <= 0)
    if len(bad):
        raise invalid(f"{field}[{bad[0] + 1}]: not after the previous timestamp (timestamps must increase)")
    return micros.astype("datetime64[us]")


def _future(past: np.ndarray, horizon: int, field: str, freq: str | None) -> np.ndarray:
    """The forecast's timestamps: the history's last step repeated ``horizon`` times (calendar months for a
    monthly model), within the Timestamp range."""
    delta = (past[-1] - past[-2]).astype(np.int64) if len(past) > 1 else 0
    last = int(past[-1].astype(np.int64))
    if last + max(delta, 31 * 86_400_000_000 if _monthly(freq) else 0) * horizon > MAX_SECONDS * 1_000_000:
        raise invalid(f"{field}: {horizon} more steps after the last timestamp pass the year 9999")
    if len(past) < 2:
        return np.repeat(past[-1], horizon)
    future = future_from_history(past, horizon, freq)
    assert future is not None  # two or more timestamps
    return future


def _monthly(freq: str | None) -> bool:
    return parse_freq(freq)[1] == "mo" if freq else False


def validate(request: wire.Request, registry: ModelRegistry, limits: Limits) -> ValidatedRequest:
    model = served_model(registry, request.model, request.version, "forecast")
    runner = cast(ForecastRunner, model.runner)
    if request.horizon <= 0:
        raise invalid("horizon: must be at least 1")
    if request.horizon > runner.max_horizon:
        raise invalid(f"horizon: {request.horizon} exceeds the model's max_horizon {runner.max_horizon}")
    if not request.series:
        raise invalid("series: at least one series is required")
    if len(request.series) > limits.max_series:
        raise exhausted(
            f"series: {len(request.series)} series exceed the limit of {limits.max_series} per request (--max-series)"
        )
    total = sum(len(chunk) for s in request.series for chunk in s.values) // wire.DOUBLE.itemsize
    if total > limits.max_values:
        raise exhausted(f"series: {total} history values exceed the limit of {limits.max_values} per request")
    channels, length, freq = runner.n_channels, runner.context_length, runner.artifact.manifest.freq
    answer = len(request.series) * request.horizon * channels
    if answer > limits.max_forecast_values:
        raise exhausted(
            f"series x horizon: {len(request.series)} series x {request.horizon} steps x {channels} channels = "
            f"{answer} values exceed the limit of {limits.max_forecast_values} per request (--max-forecast-values)"
        )
    context = np.empty((len(request.series), length, channels), dtype=np.float32)
    stamps: list[np.ndarray | None] = []
    histories: list[np.ndarray] = []
    history_stamps: list[np.ndarray | None] = []
    calendar = runner.calendar is not None
    context_stamps = np.empty((len(request.series), length), dtype="datetime64[us]") if calendar else None
    for i, series in enumerate(request.series):
        field = f"series[{i}].values"
        try:
            values = wire.doubles(series.values, field)
        except ValueError as err:
            raise invalid(str(err)) from None
        if not len(values):
            raise invalid(f"{field}: empty history")
        if len(values) % channels:
            raise invalid(f"{field}: {len(values)} values are not a whole number of steps of {channels} channels")
        steps = len(values) // channels
        if steps < length:
            raise invalid(f"{field}: {steps} steps of history, the model needs at least {length}")
        if not float(values.dot(values)) < FLOAT32_MAX_SQUARED:  # not surely within float32: look closer
            _refuse_values(values, field)
        history = values.reshape(steps, channels)
        context[i] = history[-length:]
        past = _timestamps(series, i, steps)
        histories.append(history)
        history_stamps.append(past)
        if context_stamps is not None:
            if past is None:
                raise invalid(f"series[{i}].timestamps: required, this model uses calendar features (one per step)")
            context_stamps[i] = past[-length:]
        stamps.append(None if past is None else _future(past, request.horizon, f"series[{i}].timestamps", freq))
    return ValidatedRequest(model, int(request.horizon), context, context_stamps, stamps, histories, history_stamps)


def _refuse_values(values: np.ndarray, field: str) -> None:
    """INVALID_ARGUMENT for a history that is not finite or not within float32, naming the first bad value; nothing
    when every value is within float32 after all (only their sum of squares was not)."""
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise invalid(f"{field}[{bad}]: {values[bad]} is not a finite number")
    if np.abs(values).max() > FLOAT32_MAX:
        bad = int(np.flatnonzero(np.abs(values) > FLOAT32_MAX)[0])
        raise invalid(f"{field}[{bad}]: {values[bad]} is beyond the float32 range the models compute in")


def _to_timestamp(value: np.datetime64) -> Timestamp:
    micros = int(value.astype("datetime64[us]").astype(np.int64))
    return Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def _encoded_stamps(future: np.ndarray | None) -> bytes:
    """A SeriesForecast's timestamps field, encoded (nothing for a series sent without timestamps)."""
    if future is None:
        return b""
    return wire.SeriesForecast(timestamps=[_to_timestamp(t) for t in future]).SerializeToString()


class ForecastServicer(forecast_pb2_grpc.ForecastServiceServicer):
    def __init__(self, registry: ModelRegistry, calls: Calls, limits: Limits) -> None:
        self.registry, self.calls, self.limits = registry, calls, limits

    def Forecast(self, request: wire.Request, context: grpc.ServicerContext) -> bytes:
        """The answer as its bytes (``wire.forecast_response``), or the request's precise error status."""
        with observed(self.calls, "Forecast", self.registry.label(request.model), context):
            until = deadline(context, self.limits)
            started = time.perf_counter()  # stage timing: validate, then build (serving.observability.STAGES)
            checked = validate(request, self.registry, self.limits)
            plan = plan_intervals(request, checked, self.limits)  # None without levels: nothing extra
            self.calls.metrics.stage("forecast", "validate", started)
            if plan and plan.head:  # learnt quantiles: one run of the graph, not merged, gives both outputs
                out, intervals = plan.quantile_forecast()
            else:
                inputs, input_stamps = plan.inputs() if plan else (checked.context, checked.context_stamps)
                future = checked.model.forecast(inputs, checked.horizon, input_stamps, until)
                out = await_result(future, until, "forecast")
                if plan:
                    out, intervals = plan.bounds(out)
            if not np.isfinite(out).all():  # a NaN is never an answer
                bad = int(np.flatnonzero(~np.isfinite(out).reshape(len(out), -1).all(axis=1))[0])
                raise RequestError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"series[{bad}]: {NON_FINITE_FORECAST}",
                )
            started = time.perf_counter()
            bands = intervals if plan else [b""] * len(out)
            forecasts = [
                wire.series_forecast(series.id, values, _encoded_stamps(future), band)
                for series, values, future, band in zip(request.series, out, checked.future_stamps, bands, strict=True)
            ]
            response = wire.forecast_response(checked.model.name, checked.model.version, forecasts)
            self.calls.metrics.stage("forecast", "build", started)
            return response


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, calls: Calls) -> None:
        self.registry, self.calls = registry, calls

    def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        with observed(self.calls, "ListModels", "", context):
            response = models_pb2.ListModelsResponse()
            for model in self.registry.loaded():
                if not model.name.startswith(request.name_prefix):
                    continue
                info = model.runner.describe()
                response.models.add(
                    name=model.name,
                    version=model.version,
                    model_kind=model.manifest.model_kind,
                    rollout_kind=info.rollout_kind,
                    context_length=info.context_length,
                    step=info.step,
                    max_horizon=info.max_horizon,
                    channels=info.channels,
                    freq=info.freq,
                    created_at=model.manifest.created_at,
                    metrics=dict(_flatten(model.manifest.metrics)),
                    providers=info.providers,
                    latest=self.registry.is_latest(model),
                    intervals=interval_support(model),
                )
            return response


def _flatten(tree: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, int | float):
            yield f"{prefix}{key}", float(value)
