"""The rollout engine: device-resident (I/O-bound) rollout equals the host rollout; provider choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.artifact import read_artifact, resolve
from serving.runners.window_shift import WindowShiftModel
from serving.sessions import usable_providers


@pytest.mark.parametrize("horizon", [1, 12, 13, 120])
def test_io_bound_rollout_equals_host_rollout(model_store: Path, histories: np.ndarray, horizon: int) -> None:
    artifact = read_artifact(resolve(model_store, "etth1-arnet"))
    host = WindowShiftModel.load(artifact, io_binding=False)
    bound = WindowShiftModel.load(artifact, io_binding=True)  # on this CPU machine: the same path CUDA takes
    assert (host.device, bound.device) == ("host", "cpu")
    context = histories[:, :, None].astype(np.float32)
    np.testing.assert_array_equal(bound.forecast(context, horizon), host.forecast(context, horizon))


def test_providers_are_those_that_load() -> None:
    providers = usable_providers()
    assert providers[-1] == "CPUExecutionProvider"
    # onnxruntime-gpu lists CUDA even without a GPU; it is kept only if a session really runs on it.
    import onnxruntime as ort

    for provider in providers:
        assert provider in ort.get_available_providers()
