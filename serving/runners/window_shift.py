"""The window-shift runner (AR-Net, Informer): one graph, context (B, L, C) -> the next ``step`` values (B, step, C).

Any horizon is reached by predicting a block, appending it to the context and repeating. A graph that also takes
calendar features (Informer: "context_marks" (B, L, F) for the context rows and "target_marks" (B, label_len + step,
F) for the decoder's rows) gets them computed here from the context's timestamps; the timestamps after the context
are the last one + k * freq.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from serving.artifact import Artifact
from serving.manifest import RolloutSpec
from serving.runners.forecast import ForecastRollout, ForecastRunner
from serving.sessions import create_session
from serving.time_features import future_timestamps, regular_timestamps, time_features

ROWS_PER_RUN = 1024  # series per onnxruntime rollout: bounds a run's memory whatever a request asks


@dataclass(frozen=True)
class TimeFeatureSpec:
    encoding: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class WindowShiftRollout(ForecastRollout):
    """``label_len``: the known rows before each block that a calendar-feature graph's decoder takes;
    ``time_features``: the calendar features it takes (at the manifest's top level in format version 1);
    ``rows_per_run``: at most this many series per onnxruntime run, where the export found the graph's
    attention maps too large for ``ROWS_PER_RUN`` (absent: ``ROWS_PER_RUN``)."""

    top_level: ClassVar[tuple[str, ...]] = ("time_features",)
    label_len: int | None = None
    chunked: bool | None = None
    time_features: TimeFeatureSpec | None = None
    rows_per_run: int | None = None


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


class HostSteps:
    """Rollout state in host memory: numpy windows, ``run_graph(feeds) -> block``."""

    def __init__(self, run_graph: Callable[[dict[str, np.ndarray]], np.ndarray]) -> None:
        self.run_graph = run_graph

    def start(self, window: np.ndarray) -> np.ndarray:
        return window

    def run(self, window: np.ndarray, marks: dict[str, np.ndarray]) -> np.ndarray:
        return self.run_graph({"context": window, **marks})

    def slide(self, window: np.ndarray, block: np.ndarray) -> np.ndarray:
        return np.concatenate([window, block], axis=1)[:, -window.shape[1] :]

    def collect(self, blocks: list[np.ndarray]) -> np.ndarray:
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)  # one block: no copy


class BoundSteps:
    """Rollout state kept on the session's device with I/O binding: the window never leaves the device.

    The slide (append the block, keep the last L rows) runs as a tiny ONNX graph on the same device, so
    between steps nothing is copied to the host; only the calendar marks go in and the blocks come out at
    the end. On CUDA this saves two host-device copies per step; on CPU it runs the same code path.
    """

    def __init__(self, session: ort.InferenceSession, shift: ort.InferenceSession, device: str) -> None:
        self.session, self.shift, self.device = session, shift, device

    def start(self, window: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(window, self.device, 0)

    def run(self, window: ort.OrtValue, marks: dict[str, np.ndarray]) -> ort.OrtValue:
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("context", window)
        for name, value in marks.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("forecast", self.device)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def slide(self, window: ort.OrtValue, block: ort.OrtValue) -> ort.OrtValue:
        binding = self.shift.io_binding()
        binding.bind_ortvalue_input("window", window)
        binding.bind_ortvalue_input("block", block)
        binding.bind_output("next", self.device)
        self.shift.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def collect(self, blocks: list[ort.OrtValue]) -> np.ndarray:
        return np.concatenate([b.numpy() for b in blocks], axis=1)


Steps = HostSteps | BoundSteps


def shift_graph(context_length: int) -> bytes:
    """ONNX graph: (window (B, L, C), block (B, S, C)) -> the last L rows of their concatenation."""
    from onnx import TensorProto, helper

    shape = ["batch", None, None]
    nodes = [
        helper.make_node("Concat", ["window", "block"], ["joined"], axis=1),
        helper.make_node(
            "Constant", [], ["starts"], value=helper.make_tensor("s", TensorProto.INT64, [1], [-context_length])
        ),
        helper.make_node("Constant", [], ["ends"], value=helper.make_tensor("e", TensorProto.INT64, [1], [2**62])),
        helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])),
        helper.make_node("Slice", ["joined", "starts", "ends", "axes"], ["next"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shift",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("window", "block")],
        [helper.make_tensor_value_info("next", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()


def window_shift(
    run_graph: Callable[[dict[str, np.ndarray]], np.ndarray] | Steps,
    context: np.ndarray,
    horizon: int,
    context_length: int,
    step: int,
    calendar: CalendarInputs | None = None,
    timestamps: np.ndarray | None = None,
) -> np.ndarray:
    """Predict a block of ``step`` values, append it, slide, repeat: (B, L', C) -> (B, horizon, C).

    ``run_graph`` maps the graph's named inputs to its forecast (host memory), or is a ``Steps`` object that
    keeps the state on a device. With ``calendar``, ``timestamps`` (B or 1, L') are the context rows' times;
    each block's marks come from the one feature table of the whole timeline.
    """
    steps = run_graph if isinstance(run_graph, HostSteps | BoundSteps) else HostSteps(run_graph)
    host_window = np.ascontiguousarray(context[:, -context_length:], dtype=np.float32)
    batch, n_blocks = host_window.shape[0], -(-horizon // step)
    features = None
    if calendar is not None:
        if timestamps is None:
            raise ValueError("this graph takes calendar features: the context's timestamps are needed")
        features = calendar.features(np.asarray(timestamps)[:, -context_length:], n_blocks * step)
    window, blocks = steps.start(host_window), []
    for k in range(n_blocks):
        marks = {}
        if features is not None and calendar is not None:
            marks = calendar.block_marks(features, k * step, context_length, step, batch)
        blocks.append(steps.run(window, marks))
        if k + 1 < n_blocks:
            window = steps.slide(window, blocks[-1])
    return steps.collect(blocks)[:, :horizon]


@dataclass
class WindowShiftModel(ForecastRunner):
    """A loaded window-shift artifact: one graph, context (B, L, C) -> forecast (B, step, C), raw units."""

    rollout_kind: ClassVar[str] = "window_shift"
    rollout_spec: ClassVar[type[RolloutSpec]] = WindowShiftRollout
    artifact: Artifact
    session: ort.InferenceSession
    steps: Steps

    @classmethod
    def load(
        cls,
        artifact: Artifact,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        io_binding: bool | None = None,
    ) -> WindowShiftModel:
        """``io_binding``: keep the rollout state on the device (default: when the session runs on CUDA)."""
        rollout = artifact.manifest.rollout
        if not isinstance(rollout, WindowShiftRollout):
            raise ValueError(f"{artifact.path}: rollout kind {rollout.kind!r} is not window_shift")
        session = create_session(artifact.graph_path("forecast"), providers, intra_op_threads)
        on_cuda = session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        if io_binding or (io_binding is None and on_cuda):
            shift_providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_cuda else ["CPUExecutionProvider"]
            shift = ort.InferenceSession(shift_graph(rollout.context_length), providers=shift_providers)
            steps: Steps = BoundSteps(session, shift, "cuda" if on_cuda else "cpu")
        else:
            steps = HostSteps(lambda feeds: session.run(None, feeds)[0])
        return cls(artifact, session, steps)

    @property
    def device(self) -> str:
        return self.steps.device if isinstance(self.steps, BoundSteps) else "host"

    @property
    def rows_per_run(self) -> int:
        return min(ROWS_PER_RUN, self.spec.rows_per_run or ROWS_PER_RUN)

    @functools.cached_property
    def calendar(self) -> CalendarInputs | None:
        """How the graph takes calendar features (None: context only, e.g. AR-Net); read once per loaded artifact."""
        manifest = self.artifact.manifest
        if "context_marks" not in manifest.graphs["forecast"].input_names:
            return None
        if manifest.freq is None or self.spec.label_len is None:
            raise ValueError(f"{self.artifact.path}: a calendar-feature graph needs the manifest's freq and label_len")
        return CalendarInputs(manifest.freq, self.spec.label_len)

    @property
    def spec(self) -> WindowShiftRollout:
        rollout = self.artifact.manifest.rollout
        assert isinstance(rollout, WindowShiftRollout)
        return rollout

    def smoke_timestamps(self) -> np.ndarray | None:
        """Calendar features take any date: a context ending in 2020."""
        calendar = self.calendar
        if calendar is None:
            return None
        return regular_timestamps(np.datetime64("2020-01-01", "us"), self.context_length, calendar.freq)

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
        # Any caller (the batcher, batch jobs, evaluation) gets runs of at most rows_per_run series: memory.
        chunk = self.rows_per_run
        if len(context) <= chunk:  # one run: nothing to join (C-contiguous, as a joined answer is; no copy when it is)
            out = window_shift(self.steps, context, horizon, self.context_length, self.step, calendar, stamps)
            return np.ascontiguousarray(out)
        return np.concatenate(
            [
                window_shift(
                    self.steps,
                    context[start : start + chunk],
                    horizon,
                    self.context_length,
                    self.step,
                    calendar,
                    stamps if stamps is None or len(stamps) == 1 else stamps[start : start + chunk],
                )
                for start in range(0, len(context), chunk)
            ]
        )
