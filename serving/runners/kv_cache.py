"""The KV-cache runner (AutoTimes): one step graph, two rollouts (no torch here).

``growing``: the graph is run twice over: with an empty past it is the prefill over the context's segment tokens,
then each new segment is one decode step that takes the past keys/values back and returns them one position
longer. ``sliding`` (the official AutoTimes test loop): every segment is one prefill (empty past) over a fixed
window of the context's length, re-normalised over its own values; the window then drops its oldest segment and
takes the prediction. See ``KVCacheModel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from serving.artifact import Artifact
from serving.manifest import ArtifactError, RolloutSpec
from serving.runners.forecast import ForecastRollout, ForecastRunner
from serving.sessions import create_session
from serving.time_features import freq_step

SEQUENCES_PER_RUN = 256  # sequences (series x channels) per rollout: each holds the LLM's cache


@dataclass(frozen=True)
class TimestampSpec:
    """The table of timestamp embeddings: ``rows`` grid rows at ``freq`` from ``start``, made with ``backbone``."""

    file: str
    start: str
    freq: str
    rows: int
    template: str
    backbone: str


ROLLOUTS = ("growing", "sliding")


@dataclass(frozen=True)
class KVCacheRollout(ForecastRollout):
    """The KV cache's layout per layer (N, kv_heads, length, head_dim) and, when used, the timestamp table.

    ``rollout``: how a forecast goes past one segment unless a caller asks otherwise: ``growing`` (KV cache,
    the context grows; manifests written before the field existed mean this) or ``sliding`` (a fixed window,
    re-normalised and run in full for every segment, as the official AutoTimes test loop).
    """

    n_layers: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    normalization: str
    channel_independent: bool
    timestamps: TimestampSpec | None = None
    rollout: str = "growing"


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
class KVCacheModel(ForecastRunner):
    """A loaded kv_cache artifact (AutoTimes): one step graph, prefill then one decode step per segment.

    ``forecast`` scales the raw context with the training scaler, normalises each series over the context,
    cuts every channel into segment tokens (channel independence: B series x C channels -> N = B*C
    sequences) and rolls out as the manifest's ``rollout`` says (or the caller's ``rollout``): ``growing``
    runs the prefill (empty past), then feeds each predicted segment back as one token with the returned
    keys/values; ``sliding`` runs one prefill per segment over the last ``context_length`` values, each window
    re-normalised over itself and given the timestamp rows of its own segments (the table lookup moves one
    segment per step). Both normalisations are undone on the way out. Models trained with timestamp embeddings read them
    from the artifact's table (``calendar``), so a request needs the context's timestamps.
    """

    rollout_kind: ClassVar[str] = "kv_cache"
    rollout_spec: ClassVar[type[RolloutSpec]] = KVCacheRollout
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
        rollout = artifact.manifest.rollout
        if not isinstance(rollout, KVCacheRollout):
            raise ValueError(f"{artifact.path}: rollout kind {rollout.kind!r} is not kv_cache")
        if rollout.rollout not in ROLLOUTS:
            raise ArtifactError(
                f"{artifact.path}: field 'rollout.rollout' is {rollout.rollout!r}, not one of {', '.join(ROLLOUTS)}"
            )
        session = create_session(artifact.graph_path("step"), providers, intra_op_threads)
        table = None
        stamps = rollout.timestamps
        if stamps:
            embeddings = np.load(artifact.path / stamps.file, allow_pickle=False)
            if embeddings.shape != (stamps.rows, rollout.hidden_size):
                raise ValueError(f"{artifact.path}: timestamp table of shape {embeddings.shape} is not as declared")
            start = np.datetime64(stamps.start, "us")
            table = TimestampTable(start, stamps.freq, rollout.step, embeddings.astype(np.float32))
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
    def spec(self) -> KVCacheRollout:
        rollout = self.artifact.manifest.rollout
        assert isinstance(rollout, KVCacheRollout)
        return rollout

    def smoke_timestamps(self) -> np.ndarray | None:
        """The timestamp table's own first rows (None without one)."""
        if self.table is None:
            return None
        step = freq_step(self.table.freq).astype("timedelta64[us]")
        return self.table.start + np.arange(self.context_length) * step

    @property
    def calendar(self) -> TimestampTable | None:
        """The timestamp table when the model uses timestamp embeddings (requests then need timestamps)."""
        return self.table

    @property
    def scaler(self) -> tuple[np.ndarray, np.ndarray]:
        """The training data's per-channel (mean, std): raw = scaled * std + mean."""
        norm = self.artifact.manifest.normalization
        if norm is None:
            raise ValueError(f"{self.artifact.path}: a kv_cache manifest needs the training scaler (normalization)")
        return np.asarray(norm.mean, np.float32), np.asarray(norm.std, np.float32)

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Raw (B, T, C) -> float32 values on the training scaler's scale."""
        center, scale = self.scaler
        return ((np.asarray(values, np.float32) - center) / scale).astype(np.float32)

    def normalise(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scaled (B, T, C) -> segment tokens (B*C, T / step, step) and the per-series mean and std (B, 1, C)."""
        mean = scaled.mean(axis=1, keepdims=True, dtype=np.float32)
        std = np.sqrt(np.square(scaled - mean).mean(axis=1, keepdims=True, dtype=np.float32) + np.float32(NORM_EPS))
        z = (scaled - mean) / std
        b, t, c = z.shape
        return np.ascontiguousarray(z.transpose(0, 2, 1).reshape(b * c, t // self.step, self.step)), mean, std

    def normalised_segments(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw (B, T, C) -> segment tokens (B*C, T / step, step) and the per-series mean and std (B, 1, C).

        The values are first scaled with the training scaler; mean and std are on that scale.
        """
        return self.normalise(self.scale(values))

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
        """Check a request and turn it into the scaled context, prompt tokens and timestamp embeddings."""
        if context.ndim != 3 or context.shape[2] != self.n_channels:
            raise ValueError(f"context must be (batch, time, {self.n_channels}), got {context.shape}")
        if context.shape[1] < self.context_length:
            raise ValueError(f"context has {context.shape[1]} steps, the model needs {self.context_length}")
        batch, length = context.shape[0], self.context_length
        scaled = self.scale(context[:, -length:])
        time = None
        if self.table is not None:
            stamps = self._stamps(timestamps, batch, context.shape[1])[:, -length:]
            time = np.repeat(self.table.lookup(stamps, length // self.step + n_blocks - 1), self.n_channels, axis=0)
        prompt_segments = None
        if prompt is not None:
            if prompt.ndim != 3 or prompt.shape[0] != batch or prompt.shape[2] != self.n_channels:
                raise ValueError(f"prompt must be ({batch}, k * {self.step}, {self.n_channels}), got {prompt.shape}")
            if prompt.shape[1] % self.step or prompt.shape[1] == 0:
                raise ValueError(f"prompt length {prompt.shape[1]} is not a positive multiple of {self.step}")
            prompt_segments = self.normalised_segments(prompt)[0]
        return KVInputs(scaled, time, prompt_segments)

    def _tokens(self, inputs: KVInputs, segments: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Prefill tokens (prompt, then ``segments``) and their timestamp embeddings from context token ``first``."""
        time = None if inputs.time is None else inputs.time[:, first : first + segments.shape[1]]
        if inputs.prompt is None:
            return segments, time
        tokens = np.concatenate([inputs.prompt, segments], axis=1)
        if time is not None:  # prompt tokens carry no timestamp: a zero embedding adds nothing
            no_time = np.zeros((len(tokens), inputs.prompt.shape[1], time.shape[2]), np.float32)
            time = np.concatenate([no_time, time], axis=1)
        return tokens, time

    def _prefill_feeds(self, tokens: np.ndarray, time: np.ndarray | None) -> dict[str, object]:
        layout = self.spec
        empty = np.zeros((len(tokens), layout.kv_heads, 0, layout.head_dim), np.float32)
        feeds: dict[str, object] = {"segments": tokens, **dict.fromkeys(self._past_names, empty)}
        if time is not None:
            feeds["time_embeds"] = np.ascontiguousarray(time)
        return feeds

    @property
    def _past_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs() if i.name.startswith("past_")]

    def rollout(
        self, inputs: KVInputs, n_blocks: int, teacher: np.ndarray | None = None, mode: str | None = None
    ) -> np.ndarray:
        """(B, n_blocks * step, C) forecast on the training scale, by ``mode`` (default: the manifest's rollout).

        ``teacher`` (B, >= (n_blocks - 1) * step, C) values on the training scale: fed back instead of the model's
        own predictions (to compare step by step with another implementation without the errors compounding).
        """
        mode = mode or self.spec.rollout
        if mode == "growing":
            return self._growing(inputs, n_blocks, teacher)
        if mode == "sliding":
            return self._sliding(inputs, n_blocks, teacher)
        raise ValueError(f"rollout must be one of {', '.join(ROLLOUTS)}, got {mode!r}")

    def _growing(self, inputs: KVInputs, n_blocks: int, teacher: np.ndarray | None) -> np.ndarray:
        """Prefill over the context (one normalisation), then ``n_blocks - 1`` decode steps with the KV cache."""
        segments, mean, std = self.normalise(inputs.scaled)
        s = segments.shape[1]
        tokens, time = self._tokens(inputs, segments, 0)
        forced = None if teacher is None else self.normalise_like(teacher, mean, std)
        past_names = self._past_names
        feeds = self._prefill_feeds(tokens, time)
        blocks = []
        for k in range(n_blocks):
            outputs = self.steps(feeds)
            blocks.append(outputs[0])
            if k + 1 < n_blocks:
                present = dict(zip(self.steps.outputs[1:], outputs[1:], strict=True))
                fed = outputs[0] if forced is None else np.ascontiguousarray(forced[:, k : k + 1])
                feeds = {"segments": fed, **{name: present["present" + name[4:]] for name in past_names}}
                if inputs.time is not None:
                    feeds["time_embeds"] = np.ascontiguousarray(inputs.time[:, s + k : s + k + 1])
        normalised = np.concatenate([self.steps.host(b) for b in blocks], axis=1)
        return self.from_segments(normalised, len(mean)) * std + mean

    def _sliding(self, inputs: KVInputs, n_blocks: int, teacher: np.ndarray | None) -> np.ndarray:
        """One prefill per segment over a fixed window, re-normalised; the window then moves one segment on."""
        window, blocks = inputs.scaled, []
        for k in range(n_blocks):
            segments, mean, std = self.normalise(window)
            out = self.steps.host(self.steps(self._prefill_feeds(*self._tokens(inputs, segments, k)))[0])
            block = (self.from_segments(out, len(window)) * std + mean).astype(np.float32)
            blocks.append(block)
            if k + 1 < n_blocks:
                fed = block if teacher is None else np.asarray(teacher[:, k * self.step : (k + 1) * self.step])
                fed = fed.astype(np.float32)
                window = np.concatenate([window[:, self.step :], fed], axis=1)
        return np.concatenate(blocks, axis=1)

    def normalise_like(self, scaled: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """Scaled (B, T, C) -> segment tokens (B*C, T / step, step) with a given per-series mean and std."""
        z = ((np.asarray(scaled, np.float32) - mean) / std).astype(np.float32)
        b, t, c = z.shape
        t -= t % self.step
        return np.ascontiguousarray(z[:, :t].transpose(0, 2, 1).reshape(b * c, t // self.step, self.step))

    def from_segments(self, segments: np.ndarray, batch: int) -> np.ndarray:
        """(B*C, n, step) -> (B, n * step, C)."""
        return segments.reshape(batch, self.n_channels, -1).transpose(0, 2, 1)

    def denormalise(self, scaled: np.ndarray) -> np.ndarray:
        """(B, n, C) values on the training scale -> raw values."""
        center, scale = self.scaler
        return (scaled * scale + center).astype(np.float32)

    def forecast(
        self,
        context: np.ndarray,
        horizon: int,
        timestamps: np.ndarray | None = None,
        prompt: np.ndarray | None = None,
        rollout: str | None = None,
    ) -> np.ndarray:
        """(B, L', C) raw history, L' >= context_length -> (B, horizon, C) raw forecast.

        ``timestamps`` (L',) shared by the batch or (B, L'), datetime64: needed when the model uses timestamp
        embeddings. ``prompt`` (B, P, C) raw, P a multiple of the step: in-context examples placed before the
        context (normalised on their own, no timestamp embedding). ``rollout``: ``growing`` or ``sliding``
        (default: the manifest's).
        """
        if not 0 < horizon <= self.max_horizon:
            raise ValueError(f"horizon {horizon} is outside 1..{self.max_horizon}")
        n_blocks = -(-horizon // self.step)
        inputs = self.prepare(context, n_blocks, timestamps, prompt)
        return self.denormalise(self.rollout(inputs, n_blocks, mode=rollout))[:, :horizon]


@dataclass
class KVInputs:
    """A prepared KV-cache request: the scaled context, prompt tokens and timestamp embeddings."""

    scaled: np.ndarray  # (B, context_length, C) on the training scaler's scale
    time: np.ndarray | None  # (N, context tokens + n_blocks - 1, hidden), N = batch * channels: every segment's
    prompt: np.ndarray | None = None  # (N, P / step, step) normalised prompt tokens (no timestamp)
