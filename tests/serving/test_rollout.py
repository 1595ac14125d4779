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


def test_the_gpu_probe_runs_onnxruntime_and_keeps_its_noise_as_the_reason(capfd: pytest.CaptureFixture[str]) -> None:
    """The probe once failed before it reached onnxruntime (a private onnx function that is gone), so no server
    ever chose CUDA by itself, GPU or not. It must get as far as onnxruntime, print nothing, and keep the reason."""
    import onnxruntime as ort

    from serving.sessions import PROBE_FAILURES, _provider_loads

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider to probe")
    capfd.readouterr()
    loads = _provider_loads("CUDAExecutionProvider")
    printed = capfd.readouterr()
    if loads:  # a machine with a GPU and its libraries
        assert "CUDAExecutionProvider" not in PROBE_FAILURES
        return
    reason = PROBE_FAILURES["CUDAExecutionProvider"]
    assert "fell back" in reason or "cannot load" in reason, reason  # onnxruntime itself refused it
    assert (printed.out, printed.err) == ("", ""), printed


def test_cuda_sessions_ask_for_full_float32_and_still_fall_back_on_a_cpu_machine(model_store: Path) -> None:
    from serving.sessions import PROVIDER_OPTIONS, create_session

    assert PROVIDER_OPTIONS["CUDAExecutionProvider"] == {"use_tf32": "0"}
    artifact = read_artifact(resolve(model_store, "etth1-arnet"))
    session = create_session(artifact.graph_path("forecast"), ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session.get_providers()[-1] == "CPUExecutionProvider"  # the options do not stop the session loading
