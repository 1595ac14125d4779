"""onnxruntime sessions: which execution providers load on this machine, and one session per graph (no torch)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import onnxruntime as ort

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@cache
def usable_providers() -> tuple[str, ...]:
    """Providers that actually load here, best first.

    onnxruntime-gpu lists CUDA and TensorRT even on machines where their libraries cannot load, and then
    silently falls back, so each is tried on a one-node graph before it is trusted.
    """
    listed = set(ort.get_available_providers())
    usable = []
    for provider in PROVIDER_PREFERENCE:
        if provider not in listed:
            continue
        if provider == "CPUExecutionProvider" or _provider_loads(provider):
            usable.append(provider)
    return tuple(usable)


def _provider_loads(provider: str) -> bool:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # the probe's failure is expected on CPU-only machines: keep it quiet
        session = ort.InferenceSession(onnx._serialize(model), options, providers=[provider])
        return provider in session.get_providers()
    except Exception:
        return False


def default_threads() -> int:
    """Intra-op threads: the cores this process may use (affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def create_session(
    path: Path, providers: Sequence[str] | None = None, intra_op_threads: int | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or default_threads()
    options.inter_op_num_threads = 1  # and the default sequential execution: one graph node at a time
    # Idle intra-op threads sleep instead of spinning: a server shares its cores with its gRPC threads and sibling
    # workers, and spinning took their CPU (bench/results/serve_forecast.json, "spinning"); no effect on results.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chosen = list(providers) if providers else list(usable_providers())
    return ort.InferenceSession(str(path), options, providers=chosen)
