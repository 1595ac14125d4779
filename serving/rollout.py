"""onnxruntime sessions and the window-shift rollout (no torch here).

A window-shift model maps the last ``context_length`` values (B, L, C) to the next ``step`` values
(B, step, C). Any horizon is reached by predicting a block, appending it to the context and repeating.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.artifact import Artifact

log = logging.getLogger(__name__)
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
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
    options.inter_op_num_threads = 1
    chosen = list(providers) if providers else list(usable_providers())
    return ort.InferenceSession(str(path), options, providers=chosen)


@dataclass
class WindowShiftModel:
    """A loaded window-shift artifact: one graph, context (B, L, C) -> forecast (B, step, C), raw units."""

    artifact: Artifact
    session: ort.InferenceSession

    @classmethod
    def load(
        cls, artifact: Artifact, providers: Sequence[str] | None = None, intra_op_threads: int | None = None
    ) -> WindowShiftModel:
        rollout = artifact.manifest["rollout"]
        if rollout["kind"] != "window_shift":
            raise ValueError(f"{artifact.path}: rollout kind {rollout['kind']!r} is not window_shift")
        return cls(artifact, create_session(artifact.graph_path("forecast"), providers, intra_op_threads))

    @property
    def context_length(self) -> int:
        return int(self.artifact.manifest["rollout"]["context_length"])

    @property
    def step(self) -> int:
        return int(self.artifact.manifest["rollout"]["step"])

    @property
    def max_horizon(self) -> int:
        return int(self.artifact.manifest["rollout"]["max_horizon"])

    @property
    def n_channels(self) -> int:
        return len(self.artifact.manifest["channels"])

    def forecast(self, context: np.ndarray, horizon: int) -> np.ndarray:
        """(B, L', C) raw history, L' >= context_length -> (B, horizon, C) raw forecast."""
        if context.ndim != 3 or context.shape[2] != self.n_channels:
            raise ValueError(f"context must be (batch, time, {self.n_channels}), got {context.shape}")
        if context.shape[1] < self.context_length:
            raise ValueError(f"context has {context.shape[1]} steps, the model needs {self.context_length}")
        if not 0 < horizon <= self.max_horizon:
            raise ValueError(f"horizon {horizon} is outside 1..{self.max_horizon}")
        window = np.ascontiguousarray(context[:, -self.context_length :], dtype=np.float32)
        blocks = []
        produced = 0
        while produced < horizon:
            block = self.session.run(None, {"context": window})[0]
            blocks.append(block)
            produced += block.shape[1]
            window = np.concatenate([window, block], axis=1)[:, -self.context_length :]
        return np.concatenate(blocks, axis=1)[:, :horizon]
