"""The contract every registered forecasting model meets, from its SPEC alone: a new model needs no new test.

For each kind in ``forecasting.models.MODELS``: train one epoch of its ``tiny`` setting on the real ETTh1 slice,
export it, serve the store over gRPC, and check that the forecasts of real test windows, over more than one
block of the rollout, equal the torch model's own rollout (``forecasting.export.torch_forecast``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from arcast_core.training import TrainConfig
from forecasting import llm_backbone
from forecasting.data import DataConfig, prepare_data
from forecasting.export import export_run, torch_forecast
from forecasting.models import MODELS
from forecasting.runs import train_run
from serving.client import ArcastClient
from tests.serving.conftest import start_server

WINDOWS = np.array([0, 17, 40])  # offsets into the test split


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private cache folder for what models cache on disk (AutoTimes' timestamp embeddings)."""
    before = os.environ.get(llm_backbone.ENV_CACHE_DIR)
    os.environ[llm_backbone.ENV_CACHE_DIR] = str(tmp_path_factory.mktemp("arcast-cache"))
    yield
    if before is None:
        os.environ.pop(llm_backbone.ENV_CACHE_DIR, None)
    else:
        os.environ[llm_backbone.ENV_CACHE_DIR] = before


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_train_export_serve_matches_torch(
    kind: str, etth1_slice: Path, tmp_path: Path, one_thread, private_cache
) -> None:
    tiny = MODELS[kind].tiny
    params = {**tiny.model, **(tiny.assets(tmp_path / "assets") if tiny.assets else {})}
    data = DataConfig(dataset=str(etth1_slice), **tiny.data)
    run = train_run(kind, data, params, TrainConfig(epochs=1, batch_size=32, lr=1e-3, progress=False))
    assert run.fit["epochs_run"] == 1 and np.isfinite(run.metrics["test"]["scaled"]["mse"])

    horizon = 2 * run.model.step + 1  # three blocks: the rollout feeds back its own forecasts
    artifact = export_run(run, tmp_path / "store", f"contract-{kind}", max_horizon=horizon)
    assert artifact.manifest.model_kind == kind and artifact.manifest.rollout.kind == run.model.rollout_kind
    assert artifact.manifest.facts["calibration"]["horizon"] == horizon  # every kind: each rolled-out step its own

    prepared = prepare_data(data)
    lookback, start = run.model.context_length, prepared.borders.test[0]
    raw = np.stack([prepared.table.values[start + i : start + i + lookback] for i in WINDOWS]).astype(np.float32)
    stamps = np.stack([prepared.table.timestamps[start + i : start + i + lookback] for i in WINDOWS])
    server = start_server(tmp_path / "store")
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            result = client.forecast(f"contract-{kind}", list(raw), horizon, timestamps=list(stamps), levels=[0.9])
    finally:
        server.stop(grace_s=1)

    assert (result.model, result.version) == (f"contract-{kind}", "1")
    served = np.stack([f.values for f in result.forecasts])
    assert all(
        f.intervals[0].level == 0.9 and (f.intervals[0].lower <= f.intervals[0].upper).all() for f in result.forecasts
    )
    expected = torch_forecast(run, raw, horizon, stamps)
    assert served.shape == expected.shape == (len(WINDOWS), horizon, len(run.channels))
    scale = run.scaler.transform  # compare on the training scale, where 1e-4 means the same for every channel
    np.testing.assert_allclose(scale(served), scale(expected), atol=1e-4, rtol=0)
