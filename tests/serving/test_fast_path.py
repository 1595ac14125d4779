"""The lone-request fast path (run inline when the batcher is idle) answers exactly what the queued, merged and
unbatched paths answer, over real gRPC and real onnxruntime; concurrent requests still merge."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.batching import BatchingConfig, BatchKind
from serving.client import ArcastClient
from serving.server import ForecastServer
from tests.serving.conftest import start_server
from tests.serving.test_forecast_service import MODEL


@pytest.fixture(scope="module")
def inline(model_store: Path) -> Iterator[ForecastServer]:
    """Batching on without a wait for company: a lone request runs inline in its handler thread."""
    srv = start_server(model_store, batching=BatchingConfig(enabled=True, max_rows=256, max_wait_s=0.0))
    yield srv
    srv.stop(grace_s=1)


@pytest.fixture(scope="module")
def unbatched(model_store: Path) -> Iterator[ForecastServer]:
    srv = start_server(model_store, batching=BatchingConfig(enabled=False))
    yield srv
    srv.stop(grace_s=1)


def _answers(server: ForecastServer, histories: np.ndarray, horizon: int = 24) -> list[bytes]:
    """Each history forecast alone, one request after the other: the serialized answers."""
    with ArcastClient(f"127.0.0.1:{server.port}") as client:
        stub = client.channel.unary_unary(
            "/arcast.v1.ForecastService/Forecast", request_serializer=None, response_deserializer=None
        )
        return [stub(ArcastClient.forecast_request(MODEL, [h], horizon).SerializeToString()) for h in histories]


def _count_queued(server: ForecastServer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the model's batcher ran its queue (the path a lone request skips)."""
    batcher = server.registry.get(MODEL).batcher
    assert batcher is not None
    calls: list[int] = []
    serve = batcher._serve

    def counted(until: object) -> None:
        calls.append(1)
        serve(until)  # type: ignore[arg-type]

    monkeypatch.setattr(batcher, "_serve", counted)
    return calls


def _wait_for(condition: Callable[[], bool], limit_s: float = 60) -> None:
    """Poll until ``condition`` holds (a state the test waits for, not a duration it asserts)."""
    until = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < until, "the expected state never came"
        time.sleep(0.01)


def test_a_lone_request_answers_the_same_inline_queued_and_unbatched(
    inline: ForecastServer, server: ForecastServer, unbatched: ForecastServer, histories: np.ndarray, monkeypatch
) -> None:
    queued = _count_queued(server, monkeypatch)  # the shared server waits 5 ms for company: always queued
    skipped = _count_queued(inline, monkeypatch)
    fast = _answers(inline, histories)
    assert fast == _answers(server, histories) == _answers(unbatched, histories)  # byte for byte
    assert not skipped and len(queued) == len(histories)


def test_requests_arriving_during_a_run_still_merge_and_answer_the_same(
    inline: ForecastServer, unbatched: ForecastServer, histories: np.ndarray
) -> None:
    """The first request runs inline and is held there; the next ones queue meanwhile and run as one batch."""
    batcher = inline.registry.get(MODEL).batcher
    assert batcher is not None
    kind, gate, sizes = batcher._kind, threading.Event(), []

    def held(jobs: list) -> list:
        sizes.append(len(jobs))
        if len(sizes) == 1:
            gate.wait(30)
        return kind.run_batch(jobs)

    batcher._kind = BatchKind(held, kind.rows, kind.key)
    try:
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            first = pool.submit(_answers, inline, histories[:1])
            _wait_for(lambda: bool(sizes))  # the first request holds the run
            rest = [pool.submit(_answers, inline, histories[i : i + 1]) for i in range(1, 9)]
            _wait_for(lambda: len(batcher._waiting) == 8)  # all of them wait in the queue
            gate.set()
            merged = first.result(30) + [f.result(30)[0] for f in rest]
    finally:
        batcher._kind = kind
    assert sizes == [1, 8]
    assert merged == _answers(unbatched, histories[:9])


def test_sessions_do_not_spin_and_answer_as_spinning_ones(model_store: Path, histories: np.ndarray) -> None:
    """Idle onnxruntime threads sleep in every session the server makes; the forecasts are the same to the bit."""
    import onnxruntime as ort

    from serving.artifact import read_artifact, resolve
    from serving.sessions import create_session

    path = read_artifact(resolve(model_store, MODEL)).graph_path("forecast")
    session = create_session(path, None, 2)
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = ort.SessionOptions()
    spinning.intra_op_num_threads = 2
    reference = ort.InferenceSession(str(path), spinning, providers=["CPUExecutionProvider"])
    context = {"context": histories[:, -48:, None].astype(np.float32)}
    assert np.array_equal(session.run(None, context)[0], reference.run(None, context)[0])


@pytest.mark.parametrize(
    ("history", "refusal"),
    [
        ([1.0] * 59 + [3.5e38], "series[0].values[59]: 3.5e+38 is beyond the float32 range the models compute in"),
        ([-3.5e38] + [1.0] * 59, "series[0].values[0]: -3.5e+38 is beyond the float32 range the models compute in"),
        ([1.0] * 30 + [float("nan")] + [1.0] * 29, "series[0].values[30]: nan is not a finite number"),
        ([1.0] * 30 + [float("-inf")] + [1.0] * 29, "series[0].values[30]: -inf is not a finite number"),
        ([3.4e38] * 60, None),  # every value within float32, their sum of squares beyond it: accepted
        ([1e30] * 60, None),
    ],
)
def test_the_range_check_refuses_exactly_the_values_beyond_float32(
    client: ArcastClient, history: list[float], refusal: str | None
) -> None:
    """The one-call check (sum of squares) lets a history through only when every value is within float32;
    everything else is checked value by value, with the same statuses and messages."""
    import grpc

    stub = client.channel.unary_unary(
        "/arcast.v1.ForecastService/Forecast", request_serializer=None, response_deserializer=None
    )
    request = ArcastClient.forecast_request(MODEL, [np.array(history)], 12).SerializeToString()
    try:
        stub(request, timeout=30)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        code, details = err.code(), err.details()
    if refusal is None:  # validation passed (the model may still answer OUT_OF_RANGE for a non-finite forecast)
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.OUT_OF_RANGE)
    else:
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, refusal)
