"""Regression tests for the serving defects a platform team found (issue 12): each failed before its fix."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
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
