"""onnxruntime sessions and the window-shift rollout (no torch here).

A window-shift model maps the last ``context_length`` values (B, L, C) to the next ``step`` values
(B, step, C). Any horizon is reached by predicting a block, appending it to the context and repeating.
A graph that also takes calendar features (Informer: "context_marks" (B, L, F) for the context rows and
"target_marks" (B, label_len + step, F) for the decoder's rows) gets them computed here from the context's
timestamps; the timestamps after the context are the last one + k * freq.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.artifact import Artifact
from serving.time_features import future_timestamps, time_features

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


@dataclass(frozen=True)
class CalendarInputs:
    """How a graph takes calendar features: computed at ``freq``, with ``label_len`` known rows before each block."""

    freq: str
    label_len: int

    def features(self, timestamps: np.ndarray, future: int) -> np.ndarray:
        """(B, L + future, F) features of the context's timestamps (B, L) and of the ``future`` rows after them."""
        stamps = np.asarray(timestamps, dtype="datetime64[us]")
        timeline = np.concatenate([stamps, future_timestamps(stamps[:, -1], future, self.freq)], axis=1)
        return time_features(timeline.ravel(), self.freq).reshape(*timeline.shape, -1)

    def block_marks(
        self, features: np.ndarray, offset: int, context_length: int, step: int, batch: int
    ) -> dict[str, np.ndarray]:
        """The marks of the block predicted after ``offset`` values have been appended to the context."""
        start = offset + context_length

        def take(rows: slice) -> np.ndarray:
            part = features[:, rows]
            return np.ascontiguousarray(np.broadcast_to(part, (batch, *part.shape[1:])))

        return {
            "context_marks": take(slice(offset, start)),
            "target_marks": take(slice(start - self.label_len, start + step)),
        }

    def marks(self, timestamps: np.ndarray, step: int) -> dict[str, np.ndarray]:
        """The marks of the first block after a context with these (B, L) timestamps."""
        stamps = np.asarray(timestamps, dtype="datetime64[us]")
        return self.block_marks(self.features(stamps, step), 0, stamps.shape[1], step, stamps.shape[0])


def window_shift(
    run_graph: Callable[[dict[str, np.ndarray]], np.ndarray],
    context: np.ndarray,
    horizon: int,
    context_length: int,
    step: int,
    calendar: CalendarInputs | None = None,
    timestamps: np.ndarray | None = None,
) -> np.ndarray:
    """Predict a block of ``step`` values, append it, slide, repeat: (B, L', C) -> (B, horizon, C).

    ``run_graph`` maps the graph's named inputs to its forecast. With ``calendar``, ``timestamps`` (B or 1,
    L') are the context rows' times; each block's marks come from the one feature table of the whole timeline.
    """
    window = np.ascontiguousarray(context[:, -context_length:], dtype=np.float32)
    batch, n_blocks = window.shape[0], -(-horizon // step)
    features = None
    if calendar is not None:
        if timestamps is None:
            raise ValueError("this graph takes calendar features: the context's timestamps are needed")
        features = calendar.features(np.asarray(timestamps)[:, -context_length:], n_blocks * step)
    blocks = []
    for k in range(n_blocks):
        feeds = {"context": window}
        if features is not None and calendar is not None:
            feeds.update(calendar.block_marks(features, k * step, context_length, step, batch))
        block = run_graph(feeds)
        blocks.append(block)
        window = np.concatenate([window, block], axis=1)[:, -context_length:]
    return np.concatenate(blocks, axis=1)[:, :horizon]


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

    @property
    def calendar(self) -> CalendarInputs | None:
        """How the graph takes calendar features (None: context only, e.g. AR-Net)."""
        names = [i["name"] for i in self.artifact.manifest["graphs"]["forecast"]["inputs"]]
        if "context_marks" not in names:
            return None
        return CalendarInputs(self.artifact.manifest["freq"], int(self.artifact.manifest["rollout"]["label_len"]))

    def forecast(self, context: np.ndarray, horizon: int, timestamps: np.ndarray | None = None) -> np.ndarray:
        """(B, L', C) raw history, L' >= context_length -> (B, horizon, C) raw forecast.

        ``timestamps`` (L',) shared by the batch or (B, L'), datetime64: the times of the context rows, needed
        (and only used) when the graph takes calendar features.
        """
        if context.ndim != 3 or context.shape[2] != self.n_channels:
            raise ValueError(f"context must be (batch, time, {self.n_channels}), got {context.shape}")
        if context.shape[1] < self.context_length:
            raise ValueError(f"context has {context.shape[1]} steps, the model needs {self.context_length}")
        if not 0 < horizon <= self.max_horizon:
            raise ValueError(f"horizon {horizon} is outside 1..{self.max_horizon}")
        calendar = self.calendar
        stamps = None
        if calendar is not None:
            if timestamps is None:
                raise ValueError("this model takes calendar features: pass the context's timestamps")
            try:
                stamps = np.asarray(timestamps, dtype="datetime64[us]")
            except (TypeError, ValueError) as err:
                raise ValueError(f"timestamps are not datetimes: {err}") from err
            stamps = stamps.reshape(1, -1) if stamps.ndim == 1 else stamps
            if stamps.ndim != 2 or stamps.shape[1] != context.shape[1] or stamps.shape[0] not in (1, context.shape[0]):
                raise ValueError(
                    f"timestamps must be ({context.shape[1]},) or ({context.shape[0]}, {context.shape[1]}), "
                    f"got {np.shape(timestamps)}"
                )
        return window_shift(
            lambda feeds: self.session.run(None, feeds)[0],
            context,
            horizon,
            self.context_length,
            self.step,
            calendar,
            stamps,
        )
