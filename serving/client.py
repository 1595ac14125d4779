"""A Python client for the arcast gRPC API (what notebooks, jobs and the client CLI use)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import wire
from serving.proto.arcast.v1 import (
    forecast_pb2,
    models_pb2,
    models_pb2_grpc,
    recommend_pb2,
    recommend_pb2_grpc,
)
from serving.security import BearerTokenInterceptor, channel_credentials, is_loopback

log = logging.getLogger(__name__)
P = ParamSpec("P")


@dataclass
class Interval:
    level: float
    lower: np.ndarray  # (horizon, channels)
    upper: np.ndarray
    adapted_levels: np.ndarray | None = None  # adaptive: the level served per value (horizon, channels)
    origins: int = 0  # adaptive: backtest origins used


@dataclass
class Forecast:
    id: str
    values: np.ndarray  # (horizon, channels)
    timestamps: np.ndarray | None  # (horizon,) datetime64[us]
    intervals: list[Interval] = field(default_factory=list)  # one per requested level, in request order


@dataclass
class ForecastResult:
    model: str
    version: str
    forecasts: list[Forecast]


def _stamp(value: np.datetime64) -> Timestamp:
    micros = int(np.datetime64(value, "us").astype(np.int64))
    return Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def wire_forecast_request(
    model: str,
    series: Sequence[np.ndarray],
    horizon: int,
    version: str | None = None,
    ids: Sequence[str] | None = None,
    timestamps: Sequence[np.ndarray | None] | None = None,
    levels: Sequence[float] = (),
    method: str = "split_conformal",
    adaptive_origins: int = 0,
    adaptive_gamma: float = 0.0,
) -> wire.Request:
    """The ForecastRequest (wire twin) for ``series`` ((steps,) or (steps, channels) arrays, oldest first)."""
    request = wire.ForecastRequest(model=model, version=version or "", horizon=horizon)
    if levels:
        request.levels.extend(float(v) for v in levels)
        request.interval_method = forecast_pb2.IntervalMethod.Value(method.upper())
        request.adaptive_origins, request.adaptive_gamma = adaptive_origins, adaptive_gamma
    for i, values in enumerate(series):
        item = request.series.add(id=ids[i] if ids else str(i), values=wire.packed(np.asarray(values).ravel()))
        if timestamps is not None and timestamps[i] is not None:
            item.timestamps.extend(_stamp(t) for t in timestamps[i])
    return request


def _public(build: Callable[P, wire.Request]) -> Callable[P, forecast_pb2.ForecastRequest]:
    def public(*args: P.args, **kwargs: P.kwargs) -> forecast_pb2.ForecastRequest:
        return forecast_pb2.ForecastRequest.FromString(build(*args, **kwargs).SerializeToString())

    return public


class ArcastClient:
    """``with ArcastClient("127.0.0.1:50051") as client: client.forecast("etth1-arnet", [history], 24)``.

    TLS: ``tls_ca`` (the CA that signed the server's certificate; PEM file) and, for mutual TLS, the client's own
    ``tls_cert``/``tls_key``; with only ``tls_cert``/``tls_key`` the server is checked against the system roots.
    ``token`` is sent as ``authorization: Bearer <token>`` on every call (without TLS only a warning stops it going
    off this machine in plaintext).
    """

    def __init__(
        self,
        target: str,
        timeout_s: float = 30.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        tls_ca: str | Path | None = None,
        token: str | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls_ca is not None or tls_cert is not None or tls_key is not None:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
            if token and not is_loopback(target):
                log.warning("sending a bearer token to %s without TLS (pass tls_ca / --tls-ca)", target)
        if token:
            self.channel = grpc.intercept_channel(self.channel, BearerTokenInterceptor(token))
        self.timeout_s = timeout_s
        self._forecast = wire.forecast_callable(self.channel)  # the wire twins: values as raw bytes both ways
        self._models = models_pb2_grpc.ModelServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._recommend = recommend_pb2_grpc.RecommendServiceStub(self.channel)

    def __enter__(self) -> ArcastClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    # The public ForecastRequest that ``forecast`` sends for the same arguments, to send through a generated stub or
    # as raw bytes (the same bytes as the twin).
    forecast_request = staticmethod(_public(wire_forecast_request))

    def forecast(
        self,
        model: str,
        series: Sequence[np.ndarray],
        horizon: int,
        version: str | None = None,
        ids: Sequence[str] | None = None,
        timestamps: Sequence[np.ndarray | None] | None = None,
        timeout_s: float | None = None,
        levels: Sequence[float] = (),
        method: str = "split_conformal",
        adaptive_origins: int = 0,
        adaptive_gamma: float = 0.0,
    ) -> ForecastResult:
        """Forecast each series ((steps,) or (steps, channels) array, oldest first) ``horizon`` steps ahead.

        ``levels`` (e.g. 0.8, 0.9, 0.95): prediction intervals, ``method`` ``split_conformal`` or ``adaptive`` (send
        ``adaptive_origins`` more steps of history than the model's context to adapt over them all).
        """
        request = wire_forecast_request(
            model, series, horizon, version, ids, timestamps, levels, method, adaptive_origins, adaptive_gamma
        )
        response = self._forecast(request, timeout=timeout_s or self.timeout_s)
        out = []
        for item in response.forecasts:
            values = wire.doubles(item.values, "forecasts.values").reshape(horizon, -1)
            stamps = None
            if item.timestamps:
                stamps = np.array(
                    [t.seconds * 1_000_000 + t.nanos // 1000 for t in item.timestamps], dtype=np.int64
                ).astype("datetime64[us]")
            bands = [
                Interval(
                    band.level,
                    wire.doubles(band.lower, "intervals.lower").reshape(horizon, -1),
                    wire.doubles(band.upper, "intervals.upper").reshape(horizon, -1),
                    wire.doubles(band.adapted_levels, "intervals.adapted_levels").reshape(horizon, -1)
                    if band.adapted_levels
                    else None,
                    band.origins,
                )
                for band in item.intervals
            ]
            out.append(Forecast(item.id, values, stamps, bands))
        return ForecastResult(response.model, response.version, out)

    def recommend(
        self,
        model: str,
        history: Sequence[int],
        k: int = 10,
        version: str | None = None,
        exclude: Sequence[int] = (),
        beam_width: int = 0,
        include_seen: bool = False,
        ignore_unknown_items: bool = False,
        diversity: float = 0.0,
        timeout_s: float | None = None,
    ) -> recommend_pb2.RecommendResponse:
        """The top-``k`` next items for one history (item ids, most recent last); every result is a real item.
        ``diversity`` > 0: diverse beam search (semantic-ID models only)."""
        request = recommend_pb2.RecommendRequest(
            model=model,
            version=version or "",
            history=list(history),
            k=k,
            exclude=list(exclude),
            beam_width=beam_width,
            include_seen=include_seen,
            ignore_unknown_items=ignore_unknown_items,
            diversity=diversity,
        )
        return self._recommend.Recommend(request, timeout=timeout_s or self.timeout_s)

    def recommend_batch(
        self,
        model: str,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        version: str | None = None,
        user_ids: Sequence[str] | None = None,
        beam_width: int = 0,
        include_seen: bool = False,
        diversity: float = 0.0,
        timeout_s: float | None = None,
    ) -> recommend_pb2.RecommendBatchResponse:
        request = recommend_pb2.RecommendBatchRequest(
            model=model,
            version=version or "",
            k=k,
            beam_width=beam_width,
            include_seen=include_seen,
            diversity=diversity,
        )
        for i, history in enumerate(histories):
            request.users.add(user_id=user_ids[i] if user_ids else str(i), history=list(history))
        return self._recommend.RecommendBatch(request, timeout=timeout_s or self.timeout_s)

    def list_models(self, name_prefix: str = "") -> list[models_pb2.ModelInfo]:
        return list(
            self._models.ListModels(
                models_pb2.ListModelsRequest(name_prefix=name_prefix), timeout=self.timeout_s
            ).models
        )

    def health(self, service: str = "") -> str:
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
