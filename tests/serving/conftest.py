"""A real gRPC server on a loopback port over the session's model store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.batching import BatchingConfig
from serving.client import ArcastClient
from serving.server import ForecastServer, ServerConfig


def start_server(store: Path, **overrides) -> ForecastServer:
    server = ForecastServer(ServerConfig(store=store, port=0, **overrides))
    server.start()
    return server


@pytest.fixture(scope="module")
def server(model_store: Path) -> Iterator[ForecastServer]:
    srv = start_server(
        model_store, batching=BatchingConfig(enabled=True, max_rows=256, max_wait_s=0.005), metrics_port=0
    )
    yield srv
    srv.stop(grace_s=1)


@pytest.fixture(scope="module")
def client(server: ForecastServer) -> Iterator[ArcastClient]:
    with ArcastClient(f"127.0.0.1:{server.port}") as c:
        yield c


@pytest.fixture(scope="module")
def histories(etth1_slice: Path) -> np.ndarray:
    """Real OT histories: 40 windows of 60 hours from the ETTh1 slice, (40, 60)."""
    import polars as pl

    ot = pl.read_csv(etth1_slice)["OT"].to_numpy()
    return np.stack([ot[i * 40 : i * 40 + 60] for i in range(40)])
