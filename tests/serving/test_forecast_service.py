"""Forecast over real gRPC on loopback against the in-process model, batching, errors, fuzzing, metrics."""

from __future__ import annotations

import concurrent.futures
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecasting.export import ServingGraph
from serving.batching import BatchingConfig
from serving.client import ArcastClient
from serving.proto.arcast.v1 import forecast_pb2, forecast_pb2_grpc
from tests.serving.conftest import start_server

MODEL = "etth1-arnet"


def in_process(run, histories: np.ndarray, horizon: int) -> np.ndarray:
    """The torch model's own window-shift rollout, (N, horizon)."""
    graph = ServingGraph(run.model, run.scaler.mean, run.scaler.std).eval()
    window = torch.from_numpy(histories[:, -run.model.context_length :, None].astype(np.float32))
    blocks = []
    with torch.no_grad():
        while sum(b.shape[1] for b in blocks) < horizon:
            blocks.append(graph(window))
            window = torch.cat([window, blocks[-1]], 1)[:, -run.model.context_length :]
    return torch.cat(blocks, 1)[:, :horizon, 0].numpy()


@pytest.mark.parametrize("horizon", [1, 12, 30, 120])
def test_grpc_forecast_equals_in_process_model(
    client: ArcastClient, arnet_run, histories: np.ndarray, horizon: int
) -> None:
    result = client.forecast(MODEL, list(histories), horizon)
    assert (result.model, result.version) == (MODEL, "1")
    served = np.stack([f.values[:, 0] for f in result.forecasts])
    np.testing.assert_allclose(served, in_process(arnet_run, histories, horizon), atol=1e-5, rtol=0)
    assert [f.id for f in result.forecasts] == [str(i) for i in range(len(histories))]


def test_future_timestamps_follow_the_history(client: ArcastClient, histories: np.ndarray) -> None:
    stamps = np.arange("2016-07-01T00", "2016-07-03T12", dtype="datetime64[h]").astype("datetime64[us]")
    result = client.forecast(MODEL, [histories[0]], 3, timestamps=[stamps])
    expected = stamps[-1] + np.arange(1, 4) * np.timedelta64(1, "h")
    assert result.forecasts[0].timestamps.tolist() == expected.tolist()


def test_batched_answers_equal_unbatched(model_store: Path, client: ArcastClient, histories: np.ndarray) -> None:
    unbatched = start_server(model_store, batching=BatchingConfig(enabled=False))
    try:
        with ArcastClient(f"127.0.0.1:{unbatched.port}") as plain:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                batched = list(pool.map(lambda h: client.forecast(MODEL, [h], 24).forecasts[0].values, histories))
            alone = [plain.forecast(MODEL, [h], 24).forecasts[0].values for h in histories]
        np.testing.assert_allclose(np.stack(batched), np.stack(alone), atol=1e-6, rtol=0)
    finally:
        unbatched.stop(grace_s=1)


def _call(client: ArcastClient, request: forecast_pb2.ForecastRequest, timeout: float = 10) -> grpc.RpcError:
    stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Forecast(request, timeout=timeout)
    return info.value


def _request(histories: list, horizon: int = 12, model: str = MODEL, **kw) -> forecast_pb2.ForecastRequest:
    return ArcastClient.forecast_request(model, histories, horizon, **kw)


@pytest.mark.parametrize(
    ("build", "code", "message"),
    [
        (lambda h: _request([h[0]], model=""), grpc.StatusCode.INVALID_ARGUMENT, "model: required"),
        (lambda h: _request([h[0]], model="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' is not loaded"),
        (lambda h: _request([h[0]], version="7"), grpc.StatusCode.NOT_FOUND, "no loaded version '7'"),
        (lambda h: _request([h[0]], horizon=0), grpc.StatusCode.INVALID_ARGUMENT, "horizon: must be at least 1"),
        (
            lambda h: _request([h[0]], horizon=121),
            grpc.StatusCode.INVALID_ARGUMENT,
            "horizon: 121 exceeds the model's max_horizon 120",
        ),
        (lambda h: _request([]), grpc.StatusCode.INVALID_ARGUMENT, "series: at least one series is required"),
        (lambda h: _request([h[0], []]), grpc.StatusCode.INVALID_ARGUMENT, "series[1].values: empty history"),
        (
            lambda h: _request([h[0][:47]]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "series[0].values: 47 steps of history, the model needs at least 48",
        ),
        (
            lambda h: _request([np.r_[h[0][:50], np.nan, h[0][:10]]]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "series[0].values[50]: nan is not a finite number",
        ),
        (
            lambda h: _request([np.r_[h[0], np.inf]]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "series[0].values[60]: inf is not a finite number",
        ),
        (
            lambda h: _request([h[0]] * 1025),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "series: 1025 series exceed the limit of 1024",
        ),
    ],
)
def test_bad_requests_get_precise_statuses(
    client: ArcastClient, histories: np.ndarray, build, code, message: str
) -> None:
    err = _call(client, build(histories))
    assert err.code() == code
    assert message in err.details()


def test_bad_timestamps(client: ArcastClient, histories: np.ndarray) -> None:
    stamps = np.arange(60).astype("datetime64[h]").astype("datetime64[us]")
    err = _call(client, _request([histories[0]], timestamps=[stamps[:10]]))
    assert "series[0].timestamps: 10 timestamps for 60 steps" in err.details()
    shuffled = stamps.copy()
    shuffled[5] = shuffled[2]
    err = _call(client, _request([histories[0]], timestamps=[shuffled]))
    assert "series[0].timestamps[5]: not after the previous timestamp" in err.details()


def test_oversized_message_is_refused(model_store: Path, histories: np.ndarray) -> None:
    small = start_server(model_store, max_message_bytes=64 * 1024)
    try:
        with ArcastClient(f"127.0.0.1:{small.port}") as c:
            err = _call(c, _request([np.tile(histories[0], 200)]))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert c.forecast(MODEL, [histories[0]], 12).forecasts  # still serving
    finally:
        small.stop(grace_s=1)


def test_deadline_is_honoured(model_store: Path, histories: np.ndarray) -> None:
    slow = start_server(model_store, batching=BatchingConfig(enabled=True, max_rows=4096, max_wait_s=0.5))
    try:
        with ArcastClient(f"127.0.0.1:{slow.port}") as c:
            err = _call(c, _request([histories[0]]), timeout=0.1)
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        slow.stop(grace_s=1)


def test_bad_request_in_a_batch_does_not_affect_the_others(client: ArcastClient, histories: np.ndarray) -> None:
    stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
    good = [_request([h], horizon=24) for h in histories[:8]]
    bad = [_request([h[:10]], horizon=24) for h in histories[:8]]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        good_f = [pool.submit(stub.Forecast, r, timeout=10) for r in good]
        bad_f = [pool.submit(stub.Forecast, r, timeout=10) for r in bad]
        answers = [f.result() for f in good_f]
        for f in bad_f:
            with pytest.raises(grpc.RpcError):
                f.result()
    expected = client.forecast(MODEL, list(histories[:8]), 24)
    for answer, want in zip(answers, expected.forecasts, strict=True):
        np.testing.assert_allclose(answer.forecasts[0].values, want.values[:, 0], atol=1e-6)


finite = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from([MODEL, "", "nope", "../etc"]),
    version=st.sampled_from(["", "1", "x", "99"]),
    horizon=st.integers(min_value=0, max_value=500),
    series=st.lists(st.lists(finite, max_size=80), max_size=4),
)
def test_fuzzed_requests_never_break_the_server(
    client: ArcastClient, arnet_run, histories: np.ndarray, model, version, horizon, series
) -> None:
    stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
    request = forecast_pb2.ForecastRequest(model=model, version=version, horizon=horizon)
    for values in series:
        request.series.add(values=values)
    try:
        stub.Forecast(request, timeout=10)
    except grpc.RpcError as err:
        assert err.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ), err
    served = client.forecast(MODEL, [histories[3]], 12).forecasts[0].values[:, 0]
    np.testing.assert_allclose(served, in_process(arnet_run, histories[3:4], 12)[0], atol=1e-5)


def test_list_models_health_and_reflection(client: ArcastClient) -> None:
    (info,) = client.list_models()
    assert (info.name, info.version, info.model_kind, info.rollout_kind) == (MODEL, "1", "arnet", "window_shift")
    assert (info.context_length, info.step, info.max_horizon, list(info.channels)) == (48, 12, 120, ["OT"])
    assert info.latest and "CPUExecutionProvider" in info.providers and "test.scaled.mse" in info.metrics
    assert client.health() == "SERVING"
    assert client.health("arcast.v1.ForecastService") == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(responses).list_services_response.service}
    assert {"arcast.v1.ForecastService", "arcast.v1.ModelService", "grpc.health.v1.Health"} <= names


def test_prometheus_metrics(server, client: ArcastClient, histories: np.ndarray) -> None:
    client.forecast(MODEL, [histories[0]], 12)
    with pytest.raises(grpc.RpcError):
        client.forecast("nope", [histories[0]], 12)
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert f'arcast_requests_total{{method="Forecast",model="{MODEL}"}}' in text
    assert 'arcast_errors_total{code="NOT_FOUND",method="Forecast"}' in text
    assert "arcast_request_seconds_bucket" in text and "arcast_batch_rows_bucket" in text
