"""onnxruntime sessions and the two rollouts: window shift and KV-cache decode (no torch here).

A window-shift model maps the last ``context_length`` values (B, L, C) to the next ``step`` values
(B, step, C). Any horizon is reached by predicting a block, appending it to the context and repeating.
A graph that also takes calendar features (Informer: "context_marks" (B, L, F) for the context rows and
"target_marks" (B, label_len + step, F) for the decoder's rows) gets them computed here from the context's
timestamps; the timestamps after the context are the last one + k * freq.

A KV-cache model (AutoTimes) is one graph run twice over: with an empty past it is the prefill over the
context's segment tokens, then each new segment is one decode step that takes the past keys/values back and
returns them one position longer. See ``KVCacheModel``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.artifact import Artifact
from serving.batching import BatchKind, Piece, run_in_chunks
from serving.time_features import freq_step, future_timestamps, time_features

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
        return np.concatenate(blocks, axis=1)


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


ROWS_PER_RUN = 1024  # window-shift series per onnxruntime rollout: bounds a run's memory whatever a request asks
SEQUENCES_PER_RUN = 256  # KV-cache sequences (series x channels) per rollout: each holds the LLM's cache


class NonFiniteOutput(ArithmeticError):
    """A graph answered NaN or infinity: never served as a number."""


class ManifestFacts:
    """The rollout facts every forecasting runner reads from its artifact's manifest, and its load-time check."""

    artifact: Artifact

    def forecast(self, context: np.ndarray, horizon: int, timestamps: np.ndarray | None = None) -> np.ndarray: ...

    def smoke_check(self) -> None:
        """Forecast one plausible series (the training mean plus a wave of one standard deviation) two blocks
        ahead; raise NonFiniteOutput when the answer is not finite, so that a broken graph is never served."""
        norm = self.artifact.manifest.get("normalization") or {}
        mean = np.asarray(norm.get("mean", np.zeros(self.n_channels)), np.float32)
        std = np.asarray(norm.get("std", np.ones(self.n_channels)), np.float32)
        steps = np.arange(self.context_length, dtype=np.float32)[:, None]
        context = (mean + std * np.sin(2 * np.pi * steps / 24))[None]
        stamps = None
        calendar = getattr(self, "calendar", None)
        if calendar is not None:  # a timestamp table has its own start; calendar features take any date
            start = calendar.start if isinstance(calendar, TimestampTable) else np.datetime64("2020-01-01", "us")
            stamps = start + np.arange(self.context_length) * freq_step(calendar.freq).astype("timedelta64[us]")
        out = self.forecast(context, min(self.max_horizon, 2 * self.step), stamps)
        if not np.isfinite(out).all():
            raise NonFiniteOutput(f"{self.artifact.path}: the smoke forecast is not finite (NaN or infinity)")

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


@dataclass
class WindowShiftModel(ManifestFacts):
    """A loaded window-shift artifact: one graph, context (B, L, C) -> forecast (B, step, C), raw units."""

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
        rollout = artifact.manifest["rollout"]
        if rollout["kind"] != "window_shift":
            raise ValueError(f"{artifact.path}: rollout kind {rollout['kind']!r} is not window_shift")
        session = create_session(artifact.graph_path("forecast"), providers, intra_op_threads)
        on_cuda = session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        if io_binding or (io_binding is None and on_cuda):
            shift_providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_cuda else ["CPUExecutionProvider"]
            shift = ort.InferenceSession(shift_graph(int(rollout["context_length"])), providers=shift_providers)
            steps: Steps = BoundSteps(session, shift, "cuda" if on_cuda else "cpu")
        else:
            steps = HostSteps(lambda feeds: session.run(None, feeds)[0])
        return cls(artifact, session, steps)

    @property
    def device(self) -> str:
        return self.steps.device if isinstance(self.steps, BoundSteps) else "host"

    @property
    def rows_per_run(self) -> int:
        return ROWS_PER_RUN

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
            self.steps,
            context,
            horizon,
            self.context_length,
            self.step,
            calendar,
            stamps,
        )


# --- KV-cache decode (AutoTimes) -----------------------------------------------------------------------------

NORM_EPS = 1e-5  # per-series normalisation: (x - mean) / sqrt(var + eps), as the model was trained


@dataclass(frozen=True)
class TimestampTable:
    """Normalised text embeddings of the segments starting at each row of a regular time grid.

    Row i is the segment of ``segment`` steps starting at ``start + i * freq``, embedded by the model's LLM at
    export time: serving looks rows up and never runs the text through the LLM. Timestamps outside the table
    (before ``start``, or past its last row) cannot be served and are refused with the covered range.
    """

    start: np.datetime64
    freq: str
    segment: int
    embeddings: np.ndarray  # (rows, hidden) float32

    @property
    def end(self) -> np.datetime64:
        """The start of the last segment the table holds."""
        return self.start + (len(self.embeddings) - 1) * freq_step(self.freq).astype("timedelta64[us]")

    def rows(self, timestamps: np.ndarray, count: int) -> np.ndarray:
        """(B, count) table rows of ``count`` segments from the first context step of each (B, L) row."""
        stamps = np.asarray(timestamps, dtype="datetime64[us]")
        step = freq_step(self.freq).astype("timedelta64[us]")
        if stamps.shape[1] > 1 and (np.diff(stamps, axis=1) != step).any():
            raise ValueError(f"timestamps: this model needs a regular {self.freq} grid (one step per value)")
        offset = stamps[:, 0] - self.start
        if (offset % step != np.timedelta64(0, "us")).any():
            raise ValueError(f"timestamps: not on the model's {self.freq} grid starting at {self.start}")
        first = (offset // step).astype(np.int64)
        rows = first[:, None] + self.segment * np.arange(count)
        outside = np.flatnonzero((rows < 0).any(axis=1) | (rows >= len(self.embeddings)).any(axis=1))
        if len(outside):
            raise ValueError(
                f"timestamps: series {outside[0]} (from {stamps[outside[0], 0]}) needs timestamp embeddings outside "
                f"the model's table (segment starts {self.start} to {self.end})"
            )
        return rows

    def lookup(self, timestamps: np.ndarray, count: int) -> np.ndarray:
        """(B, count, hidden) embeddings of ``count`` segments from each context's first step."""
        return self.embeddings[self.rows(timestamps, count)]


class _KVSteps:
    """Runs the step graph with plain numpy feeds (host) or with I/O binding that keeps the cache on a device."""

    def __init__(self, session: ort.InferenceSession, device: str | None) -> None:
        self.session, self.device = session, device
        self.outputs = [o.name for o in session.get_outputs()]

    def __call__(self, feeds: dict[str, object]) -> list:
        if self.device is None:
            return self.session.run(None, feeds)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):  # the previous step's outputs, already on the device
                binding.bind_ortvalue_input(name, value)
            else:  # host arrays (prefill tokens, timestamp embeddings): onnxruntime copies them over
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.outputs:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()

    def host(self, value: object) -> np.ndarray:
        return value.numpy() if isinstance(value, ort.OrtValue) else np.asarray(value)


@dataclass
class KVCacheModel(ManifestFacts):
    """A loaded kv_cache artifact (AutoTimes): one step graph, prefill then one decode step per segment.

    ``forecast`` scales the raw context with the training scaler, normalises each series over the context,
    cuts every channel into segment tokens (channel independence: B series x C channels -> N = B*C
    sequences), runs the prefill (empty past), then feeds each predicted segment back as one token with the
    returned keys/values, and undoes both normalisations. Models trained with timestamp embeddings read them
    from the artifact's table (``calendar``), so a request needs the context's timestamps.
    """

    artifact: Artifact
    session: ort.InferenceSession
    table: TimestampTable | None
    steps: _KVSteps

    @classmethod
    def load(
        cls,
        artifact: Artifact,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        io_binding: bool | None = None,
    ) -> KVCacheModel:
        """``io_binding``: keep the cache on the device between steps (default: when the session runs on CUDA)."""
        rollout = artifact.manifest["rollout"]
        if rollout["kind"] != "kv_cache":
            raise ValueError(f"{artifact.path}: rollout kind {rollout['kind']!r} is not kv_cache")
        session = create_session(artifact.graph_path("step"), providers, intra_op_threads)
        table = None
        stamps = rollout.get("timestamps")
        if stamps:
            embeddings = np.load(artifact.path / stamps["file"], allow_pickle=False)
            if embeddings.shape != (int(stamps["rows"]), int(rollout["hidden_size"])):
                raise ValueError(f"{artifact.path}: timestamp table of shape {embeddings.shape} is not as declared")
            start = np.datetime64(stamps["start"], "us")
            table = TimestampTable(start, stamps["freq"], int(rollout["step"]), embeddings.astype(np.float32))
        on_cuda = session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        device = ("cuda" if on_cuda else "cpu") if (io_binding or (io_binding is None and on_cuda)) else None
        return cls(artifact, session, table, _KVSteps(session, device))

    @property
    def device(self) -> str:
        return self.steps.device or "host"

    @property
    def rows_per_run(self) -> int:
        return max(1, SEQUENCES_PER_RUN // self.n_channels)

    @property
    def calendar(self) -> TimestampTable | None:
        """The timestamp table when the model uses timestamp embeddings (requests then need timestamps)."""
        return self.table

    @property
    def scaler(self) -> tuple[np.ndarray, np.ndarray]:
        """The training data's per-channel (mean, std): raw = scaled * std + mean."""
        norm = self.artifact.manifest["normalization"]
        return np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)

    def normalised_segments(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw (B, T, C) -> segment tokens (B*C, T / step, step) and the per-series mean and std (B, 1, C).

        The values are first scaled with the training scaler; mean and std are on that scale.
        """
        center, scale = self.scaler
        scaled = ((np.asarray(values, np.float32) - center) / scale).astype(np.float32)
        mean = scaled.mean(axis=1, keepdims=True, dtype=np.float32)
        std = np.sqrt(np.square(scaled - mean).mean(axis=1, keepdims=True, dtype=np.float32) + np.float32(NORM_EPS))
        z = (scaled - mean) / std
        b, t, c = z.shape
        return np.ascontiguousarray(z.transpose(0, 2, 1).reshape(b * c, t // self.step, self.step)), mean, std

    def _stamps(self, timestamps: np.ndarray | None, batch: int, length: int) -> np.ndarray:
        if timestamps is None:
            raise ValueError("this model uses timestamp embeddings: pass the context's timestamps")
        try:
            stamps = np.asarray(timestamps, dtype="datetime64[us]")
        except (TypeError, ValueError) as err:
            raise ValueError(f"timestamps are not datetimes: {err}") from err
        stamps = stamps.reshape(1, -1) if stamps.ndim == 1 else stamps
        if stamps.ndim != 2 or stamps.shape[1] != length or stamps.shape[0] not in (1, batch):
            raise ValueError(f"timestamps must be ({length},) or ({batch}, {length}), got {np.shape(timestamps)}")
        return np.broadcast_to(stamps, (batch, length))

    def prepare(
        self,
        context: np.ndarray,
        n_blocks: int,
        timestamps: np.ndarray | None = None,
        prompt: np.ndarray | None = None,
    ) -> KVInputs:
        """Check a request and turn it into the prefill's tokens (and timestamp embeddings for every step)."""
        if context.ndim != 3 or context.shape[2] != self.n_channels:
            raise ValueError(f"context must be (batch, time, {self.n_channels}), got {context.shape}")
        if context.shape[1] < self.context_length:
            raise ValueError(f"context has {context.shape[1]} steps, the model needs {self.context_length}")
        batch, length = context.shape[0], self.context_length
        segments, mean, std = self.normalised_segments(context[:, -length:])
        tokens = segments.shape[1]
        time = None
        if self.table is not None:
            stamps = self._stamps(timestamps, batch, context.shape[1])[:, -length:]
            time = np.repeat(self.table.lookup(stamps, tokens + n_blocks - 1), self.n_channels, axis=0)
        if prompt is not None:
            if prompt.ndim != 3 or prompt.shape[0] != batch or prompt.shape[2] != self.n_channels:
                raise ValueError(f"prompt must be ({batch}, k * {self.step}, {self.n_channels}), got {prompt.shape}")
            if prompt.shape[1] % self.step or prompt.shape[1] == 0:
                raise ValueError(f"prompt length {prompt.shape[1]} is not a positive multiple of {self.step}")
            prompt_segments = self.normalised_segments(prompt)[0]
            segments = np.concatenate([prompt_segments, segments], axis=1)
            if time is not None:  # prompt tokens carry no timestamp: a zero embedding adds nothing
                no_time = np.zeros((len(segments), prompt_segments.shape[1], time.shape[2]), np.float32)
                time = np.concatenate([no_time, time], axis=1)
            tokens += prompt_segments.shape[1]
        return KVInputs(segments, time, tokens, mean, std)

    def rollout(self, inputs: KVInputs, n_blocks: int, teacher: np.ndarray | None = None) -> np.ndarray:
        """Prefill, then ``n_blocks - 1`` decode steps: (N, n_blocks, step) normalised segments.

        ``teacher`` (N, n_blocks, step): feed these segments back instead of the model's own predictions
        (to compare step by step with another implementation without the errors compounding).
        """
        layout = self.artifact.manifest["rollout"]
        past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_")]
        n, s, time = len(inputs.segments), inputs.tokens, inputs.time
        empty = np.zeros((n, int(layout["kv_heads"]), 0, int(layout["head_dim"])), np.float32)
        feeds: dict[str, object] = {"segments": inputs.segments, **dict.fromkeys(past_names, empty)}
        if time is not None:
            feeds["time_embeds"] = np.ascontiguousarray(time[:, :s])
        blocks = []
        for k in range(n_blocks):
            outputs = self.steps(feeds)
            blocks.append(outputs[0])
            if k + 1 < n_blocks:
                present = dict(zip(self.steps.outputs[1:], outputs[1:], strict=True))
                fed = outputs[0] if teacher is None else np.ascontiguousarray(teacher[:, k : k + 1], np.float32)
                feeds = {"segments": fed, **{name: present["present" + name[4:]] for name in past_names}}
                if time is not None:
                    feeds["time_embeds"] = np.ascontiguousarray(time[:, s + k : s + k + 1])
        return np.concatenate([self.steps.host(b) for b in blocks], axis=1)

    def denormalise(self, segments: np.ndarray, inputs: KVInputs) -> np.ndarray:
        """(B*C, n, step) normalised segments -> (B, n * step, C) raw values."""
        batch = inputs.mean.shape[0]
        pred = segments.reshape(batch, self.n_channels, -1).transpose(0, 2, 1)
        center, scale = self.scaler
        return ((pred * inputs.std + inputs.mean) * scale + center).astype(np.float32)

    def forecast(
        self,
        context: np.ndarray,
        horizon: int,
        timestamps: np.ndarray | None = None,
        prompt: np.ndarray | None = None,
    ) -> np.ndarray:
        """(B, L', C) raw history, L' >= context_length -> (B, horizon, C) raw forecast.

        ``timestamps`` (L',) shared by the batch or (B, L'), datetime64: needed when the model uses timestamp
        embeddings. ``prompt`` (B, P, C) raw, P a multiple of the step: in-context examples placed before the
        context (normalised on their own, no timestamp embedding).
        """
        if not 0 < horizon <= self.max_horizon:
            raise ValueError(f"horizon {horizon} is outside 1..{self.max_horizon}")
        n_blocks = -(-horizon // self.step)
        inputs = self.prepare(context, n_blocks, timestamps, prompt)
        return self.denormalise(self.rollout(inputs, n_blocks), inputs)[:, :horizon]


@dataclass
class KVInputs:
    """A prepared KV-cache request: prefill tokens, timestamp embeddings, and the per-series normalisation."""

    segments: np.ndarray  # (N, tokens, step) normalised segment tokens, N = batch * channels
    time: np.ndarray | None  # (N, tokens + n_blocks - 1, hidden): the prefill's and every decode step's
    tokens: int  # prefill length (prompt + context segments)
    mean: np.ndarray  # (B, 1, C) on the training scaler's scale
    std: np.ndarray


def load_runner(
    artifact: Artifact,
    providers: Sequence[str] | None = None,
    intra_op_threads: int | None = None,
) -> WindowShiftModel | KVCacheModel:
    """The runner for the artifact's rollout kind (window_shift or kv_cache)."""
    kind = artifact.manifest["rollout"]["kind"]
    if kind == "window_shift":
        return WindowShiftModel.load(artifact, providers, intra_op_threads)
    if kind == "kv_cache":
        return KVCacheModel.load(artifact, providers, intra_op_threads)
    raise ValueError(f"{artifact.path}: rollout kind {kind!r} is not served yet")


@dataclass(frozen=True)
class ForecastJob:
    """One request's series: the unit the dynamic batcher merges."""

    context: np.ndarray  # (rows, L, C)
    horizon: int
    timestamps: np.ndarray | None  # (rows, L) for models with calendar features
    deadline: float | None = None  # time.monotonic() after which the rest of its work is dropped


def forecast_batches(
    runner: WindowShiftModel | KVCacheModel, slots: AbstractContextManager[object] | None = None
) -> BatchKind[ForecastJob, np.ndarray]:
    """How the dynamic batcher merges forecast requests: rows stacked, one rollout at the longest horizon.

    Rows are independent and a shorter horizon is a prefix of a longer rollout, so merging is exact. Long batches
    run in chunks of rows (memory), each inside one of the server's ``slots`` (concurrent runs), with deadlines
    checked between chunks.
    """
    chunk_rows = runner.rows_per_run
    slots = slots or nullcontext()

    def rows_of(pieces: list[Piece[ForecastJob]], field: str) -> np.ndarray:
        parts = [getattr(p.job, field)[p.rows] for p in pieces]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def run_chunk(pieces: list[Piece[ForecastJob]]) -> list[np.ndarray]:
        context = rows_of(pieces, "context")
        stamps = None if pieces[0].job.timestamps is None else rows_of(pieces, "timestamps")
        with slots:
            out = runner.forecast(context, max(p.job.horizon for p in pieces), stamps)
        parts, start = [], 0
        for p in pieces:
            rows = p.rows.stop - p.rows.start
            parts.append(out[start : start + rows, : p.job.horizon])
            start += rows
        return parts

    def run(jobs: list[ForecastJob]) -> list[np.ndarray | BaseException]:
        return run_in_chunks(
            jobs, lambda job: len(job.context), chunk_rows, lambda job: job.deadline, run_chunk, _join_rows
        )

    return BatchKind(run, rows=lambda job: len(job.context), key=lambda job: job.timestamps is None)


def _join_rows(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
