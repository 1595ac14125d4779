"""Regression tests for the serving defects a platform team found (issue 12): each failed before its fix."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import grpc
import numpy as np

from serving.batching import BatchingConfig
from serving.client import ArcastClient
from serving.proto.arcast.v1 import forecast_pb2_grpc
from tests.serving.conftest import start_server

MODEL = "etth1-arnet"


def test_requests_without_a_deadline_that_wait_for_a_running_batch_are_answered(
    model_store: Path, histories: np.ndarray
) -> None:
    # A batch that waits 50 ms for company keeps the first request running while the others queue behind it.
    server = start_server(model_store, batching=BatchingConfig(enabled=True, max_rows=1, max_wait_s=0.05))
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
            requests = [ArcastClient.forecast_request(MODEL, [h], 12) for h in histories[:8]]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda r: stub.Forecast(r), requests))  # no timeout: no deadline
        assert [len(a.forecasts[0].values) for a in answers] == [12] * 8
    finally:
        server.stop(grace_s=1)
