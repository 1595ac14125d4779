"""Regression tests for the serving defects a platform team found (issue 12): each failed before its fix."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
import polars as pl
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.artifact import write_manifest
from serving.batch import errors_path, run_batch
from serving.batching import BatchingConfig
from serving.client import ArcastClient
from serving.proto.arcast.v1 import forecast_pb2_grpc
from serving.rpc import Limits
from serving.server import spawn_server
from tests.serving.conftest import start_server

MODEL = "etth1-arnet"


def test_requests_without_a_deadline_that_wait_for_a_running_batch_are_answered(
    model_store: Path, histories: np.ndarray
) -> None:
    # The first request waits 300 ms for company: the others join its batch and wait for its result.
    server = start_server(model_store, batching=BatchingConfig(enabled=True, max_rows=4096, max_wait_s=0.3))
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
            requests = [ArcastClient.forecast_request(MODEL, [h], 12) for h in histories[:8]]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda r: stub.Forecast(r), requests))  # no timeout: no deadline
        assert [len(a.forecasts[0].values) for a in answers] == [12] * 8
    finally:
        server.stop(grace_s=1)


def test_client_model_names_are_not_metric_labels_and_are_cut_in_messages(server, client: ArcastClient) -> None:
    stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
    names = [f"random-{i}" for i in range(50)] + ["x" * 2_000_000]
    for name in names:
        with pytest.raises(grpc.RpcError) as info:
            stub.Forecast(ArcastClient.forecast_request(name, [np.ones(60)], 12), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(info.value.details()) < 300  # a 2 MB name is not echoed whole
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert "random-" not in text and "xxxx" not in text
    assert 'arcast_requests_total{method="Forecast",model="(not loaded)"}' in text


def _swap_graph(source: Path, store: Path, name: str, graph: onnx.GraphProto) -> Path:
    """A copy of the ``source`` artifact as ``store/name/1`` whose forecast graph is ``graph`` (same inputs/outputs)."""
    folder = store / name / "1"
    shutil.copytree(source, folder)
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), folder / "forecast.onnx"
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    write_manifest(folder, {**manifest, "name": name})
    return folder


def _sqrt_of_last_step(value_offset: float) -> onnx.GraphProto:
    """forecast = sqrt(context[:, -12:] + offset): finite for the smoke input (ETTh1's OT, about 33), NaN for
    histories below -offset."""
    nodes = [
        helper.make_node("Constant", [], ["starts"], value=numpy_helper.from_array(np.array([-12], np.int64))),
        helper.make_node("Constant", [], ["ends"], value=numpy_helper.from_array(np.array([48], np.int64))),
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("Constant", [], ["offset"], value=numpy_helper.from_array(np.array(value_offset, np.float32))),
        helper.make_node("Slice", ["context", "starts", "ends", "axes"], ["tail"]),
        helper.make_node("Add", ["tail", "offset"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["forecast"]),
    ]
    return helper.make_graph(
        nodes,
        "sqrt",
        [helper.make_tensor_value_info("context", TensorProto.FLOAT, ["batch", 48, 1])],
        [helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch", 12, 1])],
    )


def test_non_finite_outputs_are_refused_at_load_and_never_answered(
    model_store: Path, tmp_path: Path, histories: np.ndarray
) -> None:
    store = tmp_path / "store"
    _swap_graph(model_store / MODEL / "1", store, "always-nan", _sqrt_of_last_step(-1e6))
    _swap_graph(model_store / MODEL / "1", store, "sometimes-nan", _sqrt_of_last_step(0.0))
    server = start_server(store)
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            assert [m.name for m in client.list_models()] == ["sometimes-nan"]  # the smoke input found the other
            assert server.metrics.models_loaded.labels("refused")._value.get() == 1
            ok = client.forecast("sometimes-nan", [histories[0]], 12).forecasts[0].values
            np.testing.assert_allclose(ok[:, 0], np.sqrt(histories[0][-12:]), rtol=1e-5)
            with pytest.raises(grpc.RpcError) as info:
                client.forecast("sometimes-nan", [histories[0], -histories[1]], 12)
            assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "series[1]: the model's forecast is not finite" in info.value.details()
    finally:
        server.stop(grace_s=1)


def test_batch_job_lists_non_finite_forecasts_as_errors(
    model_store: Path, tmp_path: Path, histories: np.ndarray
) -> None:
    store = tmp_path / "store"
    _swap_graph(model_store / MODEL / "1", store, "sometimes-nan", _sqrt_of_last_step(0.0))
    frame = pl.DataFrame(
        {
            "series_id": np.repeat(["good", "negative", "huge"], 60),
            "value": np.concatenate([histories[0], -histories[1], np.full(60, 1e39)]),
        }
    )
    frame.write_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    summary = run_batch(store, "sometimes-nan", tmp_path / "in.parquet", out, horizon=12, progress=False)
    assert (summary.scored, summary.failed) == (1, 2)
    assert pl.read_parquet(out)["series_id"].unique().to_list() == ["good"]
    errors = dict(pl.read_parquet(errors_path(out)).iter_rows())
    assert "not finite" in errors["negative"] and "float32" in errors["huge"]


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_timestamps_outside_the_protobuf_range_are_invalid_arguments(client: ArcastClient, histories) -> None:
    stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
    stamps = np.arange(60).astype("datetime64[h]").astype("datetime64[us]")
    request = ArcastClient.forecast_request(MODEL, [histories[0]], 12, timestamps=[stamps])
    request.series[0].timestamps[59].seconds = 2**62  # overflowed the microsecond arithmetic: INTERNAL before
    err = _rpc_error(lambda: stub.Forecast(request, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "series[0].timestamps[59]: 4611686018427387904 seconds is outside the years 1 to 9999" in err.details()
    request.series[0].timestamps[59].seconds = 59 * 3600
    request.series[0].timestamps[59].nanos = 2_000_000_000  # accepted before
    err = _rpc_error(lambda: stub.Forecast(request, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "timestamps[59].nanos" in err.details()
    late = np.datetime64("9999-12-31T12", "us") + (stamps - stamps[-1])
    err = _rpc_error(lambda: client.forecast(MODEL, [histories[0]], 24, timestamps=[late]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "pass the year 9999" in err.details()


def test_answers_bigger_than_the_limit_are_refused(model_store: Path, histories: np.ndarray) -> None:
    server = start_server(model_store, limits=Limits(max_forecast_values=100))
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            err = _rpc_error(lambda: client.forecast(MODEL, [histories[0], histories[1]], 60))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 series x 60 steps x 1 channels = 120 values exceed the limit of 100" in err.details()
            assert client.forecast(MODEL, [histories[0]], 60).forecasts  # within it
    finally:
        server.stop(grace_s=1)


def test_a_compressed_request_is_limited_by_its_decompressed_size(client: ArcastClient) -> None:
    request = ArcastClient.forecast_request(MODEL, [np.zeros(5 * 1024 * 1024 // 8)], 12)  # 5 MiB, ~5 KB gzipped
    stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
    err = _rpc_error(lambda: stub.Forecast(request, timeout=10, compression=grpc.Compression.Gzip))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's 4 MiB default, not 64 MiB


def test_an_undecodable_request_is_one_warning_line(client: ArcastClient, caplog: pytest.LogCaptureFixture) -> None:
    raw = client.channel.unary_unary("/arcast.v1.ForecastService/Forecast")  # bytes in, bytes out
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert _rpc_error(lambda: raw(b"\xff\xff\xff garbage", timeout=10)).code() == grpc.StatusCode.INTERNAL
    records = [r for r in caplog.records if "request" in r.getMessage()]
    assert records and all(r.levelno == logging.WARNING and not r.exc_info for r in records), records


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "serving", "serve", "--log-format", "text", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_serve_says_what_is_wrong_with_its_store_and_port(model_store: Path, tmp_path: Path) -> None:
    missing = _serve("--store", str(tmp_path / "nope"), "--port", "0")
    assert missing.returncode == 2 and f"--store {tmp_path / 'nope'}: no such folder" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _serve("--store", str(model_store), "--port", str(port))
    assert busy.returncode == 2 and f"--port: cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "Traceback" not in busy.stderr + missing.stderr


def test_sigterm_under_load_answers_ok_or_unavailable_never_cancelled(model_store: Path, histories) -> None:
    proc, target = spawn_server(model_store, "--log-level", "error")
    codes: collections.Counter[str] = collections.Counter()
    stop_at = time.monotonic() + 2.0

    def hammer(i: int) -> None:
        with ArcastClient(target) as c:
            while time.monotonic() < stop_at:
                try:
                    c.forecast(MODEL, [histories[i]], 12, timeout_s=5)
                    codes["OK"] += 1
                except grpc.RpcError as err:
                    codes[err.code().name] += 1
                    time.sleep(0.01)

    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:  # 16 callers: the old server cancelled a few
            calls = [pool.submit(hammer, i) for i in range(16)]
            time.sleep(0.7)
            proc.send_signal(signal.SIGTERM)
            for call in calls:
                call.result()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert codes["OK"] > 0 and codes["UNAVAILABLE"] > 0
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
