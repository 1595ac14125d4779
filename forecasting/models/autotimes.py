"""AutoTimes (Liu et al., NeurIPS 2024): a frozen decoder-only LLM as an autoregressive forecaster.

Follows the paper and its official code (thuml/AutoTimes, ``models/AutoTimes_Llama.py``):

- each series is normalised over its lookback (mean, sqrt(population variance + 1e-5)), channels are
  forecast independently (B series x C channels -> B*C sequences), and cut into segments of ``segment``
  (96) values: one segment is one LLM token;
- a segment embedding (linear, or an MLP) maps a segment to the LLM's hidden size, the frozen LLM runs over
  the segment tokens (``inputs_embeds``; causal), and a projection maps each final hidden state to the next
  segment. Only the embedding, the projection and the mixing scale train (0.08% of SmolLM2-135M with the
  linear maps: see ``AutoTimes.trainable_share``);
- training: next-segment MSE on every position (inputs: segments 1..S of the lookback, targets: segments
  2..S+1 of lookback || horizon), on the data's scaled values after de-normalisation, as the official loop;
- timestamp position embeddings ("mix_embeds"): for each segment the text "This is Time Series from
  {start} to {end}" (times as ``%Y-%m-%d %H:%M:%S``, end = start + (segment - 1) steps) is embedded once by
  the same frozen LLM (the last token's final hidden state). Segment embedding and text embedding are each
  L2-normalised and summed with a trained scale: ``e / |e| + scale * t / |t|`` (without timestamps the
  segment embedding is used as is, as in the official code);
- one-for-all: trained at one lookback (672 = 7 segments), any horizon by autoregressive rollout over
  segments; in-context forecasting: prompt segments (e.g. another series' lookback and horizon) placed
  before the lookback.

Deviations, documented:

- rollout: two, chosen by ``AutoTimesConfig.rollout`` (or per call, ``forecast(..., rollout=...)``):
  ``sliding`` is the official test loop: a fixed window of ``context_length`` values, re-normalised over
  its own values at every segment, one full forward pass over its ``n_segments`` tokens (no cache reused
  across segments), then the oldest segment dropped and the prediction appended; each window's tokens carry
  the timestamp embeddings of its own segments (the window moves one segment forward in time per step), so
  the LLM only ever sees the positions it was trained at; the default, since it scored better on ETTh1's
  validation windows in both next-segment runs (bench/results/autotimes-recipe.json and -mlp.json).
  ``growing`` (the default only for a model trained on it past the lookback, ``train_segments`` > 1; served
  artifacts written before the choice existed mean it too) grows the context as an LLM generates: the
  lookback is processed once (prefill), each predicted segment is appended as one more token (decode), the
  normalisation stays that of the lookback, and rotary positions continue past training's (positions 8..14
  at horizon 720). This is what makes a KV cache possible; ``forecast(..., use_cache=False)`` recomputes the
  whole sequence at every step and gives the same numbers (tested to 1e-4);
- training past the lookback (``train_segments`` > 1) is an addition: the official code trains the next
  segment only. ``train_rollout`` says which rollout such windows train (see ``AutoTimesConfig``);
- in-context prompts are normalised with their own statistics (the official code normalises prompt and
  lookback together, which only makes sense when both come from one series); prompt tokens get no timestamp
  embedding;
- the timestamp embeddings live in a disk cache keyed by the backbone's identity and the timeline's grid
  (frequency, phase, segment length, template), filled on demand, so windows that are never used are never
  embedded; datasets sharing a timeline (ETTh1 and ETTh2) share entries, since the text depends on the
  timestamps alone;
- the shared training loop hands the model calendar features (``x_mark``), not timestamps. The timeline of
  the training data (first timestamp, number of rows, frequency; a regular grid, checked when the model is
  bound to its data) is recorded in the config, and a window's first row is found by matching its calendar
  features against the timeline's. That is exact while no two rows of the timeline share their calendar
  features (hourly: hour, weekday, day of month, day of year repeat only after 5 or more years); a timeline
  where they repeat is refused with a message to train without timestamps.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from arcast_core.dropout import Dropout  # nn.Dropout with a cheaper CPU mask
from arcast_core.files import atomic_write, binary_writer, exclusive_lock
from forecasting.data import DataFacts
from forecasting.llm_backbone import (
    DEFAULT_BACKBONE,
    Backbone,
    cache_root,
    run_decoder,
    shared_backbone,
    write_random_backbone,
)
from forecasting.models.base import ForecastModel, ModelSpec, TinySetup
from serving.time_features import freq_step, time_features

log = logging.getLogger(__name__)

TEMPLATE = "This is Time Series from {start} to {end}"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
NORM_EPS = 1e-5  # the official code's variance epsilon
Activation = Literal["tanh", "relu", "gelu"]
Rollout = Literal["growing", "sliding"]
ROLLOUTS: tuple[Rollout, ...] = ("growing", "sliding")


@dataclass
class AutoTimesConfig:
    """AutoTimes' settings, defaults as the official ETTh1 script (linear maps, timestamps on).

    context_length: the lookback the model is trained at (a multiple of ``segment``); segment: values per
    token (96). backbone: a spec for ``forecasting.llm_backbone.load_backbone``. mlp_hidden_layers: 0 for
    linear segment embedding/projection, else the number of hidden layers (of ``mlp_hidden_dim``) in each (the
    official ``MLP`` class builds ``hidden_layers - 2`` middle layers, so its ``--mlp_hidden_layers 2`` is 1 here).
    timestamps: add the timestamp text embeddings ("mix_embeds"). freq / time_start / time_rows: the training
    data's timeline (a regular grid), set when the model is bound to its data. rollout: how ``forecast`` goes
    past one segment by default (and what an export serves by default): ``sliding`` (the official loop: fixed
    window, re-normalised every segment) or ``growing`` (KV cache, the context grows); see the module. None
    picks ``sliding``, or ``train_rollout`` where ``train_segments`` > 1.
    train_segments: segments past the lookback in each training window (the data's horizon is this many
    segments). 1 is the paper's next-segment training; k > 1 extends every window k - 1 segments past the
    lookback, trained as ``train_rollout`` rolls out; validation then scores that rollout over k segments.
    train_rollout (k > 1 only): ``growing`` teacher-forces the positions after the lookback with the lookback's
    statistics, exactly as the growing rollout sees a k-segment forecast; ``sliding`` scores the lookback's
    positions as at k = 1, then k - 1 segments of the sliding rollout fed with the model's own predictions, so
    training sees the errors the served sliding rollout compounds (the gradient runs through the whole rollout).
    """

    context_length: int = 672
    segment: int = 96
    backbone: str = DEFAULT_BACKBONE
    mlp_hidden_layers: int = 0
    mlp_hidden_dim: int = 256
    mlp_activation: Activation = "tanh"
    dropout: float = 0.1
    timestamps: bool = True
    freq: str = "1h"
    time_start: str | None = None  # ISO timestamp of the timeline's first row
    time_rows: int = 0
    template: str = TEMPLATE
    rollout: Rollout | None = None
    train_segments: int = 1
    train_rollout: Rollout = "growing"  # what configs written before it was an option trained

    def __post_init__(self) -> None:
        if self.train_segments < 1:
            raise ValueError(f"train_segments must be at least 1, got {self.train_segments}")
        check_rollout(self.train_rollout)
        if self.rollout is None:
            self.rollout = self.train_rollout if self.train_segments > 1 else "sliding"
        check_rollout(self.rollout)
        if self.segment < 1 or self.context_length < self.segment or self.context_length % self.segment:
            raise ValueError(
                f"the lookback ({self.context_length}) must be a positive multiple of the segment ({self.segment})"
            )
        if self.mlp_hidden_layers < 0 or self.mlp_hidden_dim < 1:
            raise ValueError("mlp_hidden_layers must be >= 0 and mlp_hidden_dim >= 1")
        if self.mlp_activation not in ("tanh", "relu", "gelu"):
            raise ValueError(f"mlp_activation must be tanh, relu or gelu, got {self.mlp_activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if "{start}" not in self.template or "{end}" not in self.template:
            raise ValueError("the timestamp template needs {start} and {end}")
        freq_step(self.freq)  # raises for an unknown frequency
        if self.timestamps and (self.time_start is None or self.time_rows < 1):
            raise ValueError(
                "timestamp embeddings need the training data's timeline (time_start, time_rows): bind the model "
                "to its data (build_model does), or set timestamps=False"
            )

    @property
    def n_segments(self) -> int:
        return self.context_length // self.segment


def check_rollout(rollout: str) -> Rollout:
    """``rollout`` if it is one AutoTimes knows; ValueError otherwise."""
    if rollout not in ROLLOUTS:
        raise ValueError(f"rollout must be one of {', '.join(ROLLOUTS)}, got {rollout!r}")
    return cast(Rollout, rollout)


# --- timestamps ----------------------------------------------------------------------------------------------


def segment_texts(starts: np.ndarray, freq: str, segment: int, template: str = TEMPLATE) -> list[str]:
    """The text of each segment starting at ``starts`` (datetime64): its first and last timestamp."""
    starts = np.asarray(starts, dtype="datetime64[s]").ravel()
    ends = starts + (segment - 1) * freq_step(freq).astype("timedelta64[s]")
    return [
        template.format(start=s.item().strftime(TIME_FORMAT), end=e.item().strftime(TIME_FORMAT))
        for s, e in zip(starts, ends, strict=True)
    ]


def regular_timeline(timestamps: np.ndarray, freq: str) -> tuple[str, int]:
    """(ISO start, rows) of ``timestamps`` if they form a regular grid at ``freq``; ValueError otherwise."""
    stamps = np.asarray(timestamps, dtype="datetime64[us]")
    if len(stamps) < 2:
        raise ValueError("a timeline needs at least two timestamps")
    step = freq_step(freq).astype("timedelta64[us]")
    gaps = np.flatnonzero(np.diff(stamps) != step)
    if len(gaps):
        raise ValueError(
            f"timestamp embeddings need a regular {freq} grid, but row {gaps[0] + 1} ({stamps[gaps[0] + 1]}) "
            f"follows {stamps[gaps[0]]}: fill the gaps or set timestamps=False"
        )
    return str(stamps[0].astype("datetime64[s]")), len(stamps)


class TimelineIndex:
    """Maps a window's calendar features (the data layer's ``x_mark``) back to its row in the timeline."""

    def __init__(self, start: str, rows: int, freq: str) -> None:
        step = freq_step(freq).astype("timedelta64[us]")
        stamps = np.datetime64(start, "us") + np.arange(rows) * step
        self.marks = time_features(stamps, freq)
        index: dict[bytes, int] = {}
        repeated: set[bytes] = set()
        for row, key in enumerate(map(bytes, self.marks)):
            if key in index:
                repeated.add(key)
            index[key] = row
        if repeated:
            raise ValueError(
                f"the timeline from {start} ({rows} rows at {freq}) repeats its calendar features, so windows "
                "cannot be placed on it: train with timestamps=False"
            )
        self._index = index

    def rows(self, x_mark: np.ndarray) -> np.ndarray:
        """(B,) timeline rows of the first step of each window (B, L, F); ValueError for an unknown window."""
        first = np.ascontiguousarray(x_mark[:, 0], dtype=np.float32)
        rows = np.array([self._index.get(bytes(key), -1) for key in first], dtype=np.int64)
        if (rows < 0).any():
            bad = int(np.flatnonzero(rows < 0)[0])
            raise ValueError(
                f"window {bad}: its calendar features match no row of the model's timeline; timestamp "
                "embeddings need windows of the data the model was bound to"
            )
        length = x_mark.shape[1]
        last = np.minimum(rows + length - 1, len(self.marks) - 1)
        if not np.array_equal(self.marks[last], np.asarray(x_mark[:, -1], dtype=np.float32)):
            raise ValueError("windows' calendar features are not consecutive rows of the model's timeline")
        return rows


class TimestampEmbeddings:
    """Raw (un-normalised) text embeddings of the segments starting at each row of a regular time grid.

    Rows are grid indices relative to ``start``. Entries are computed on demand by ``embed`` and kept in
    chunk files of ``CHUNK`` rows under ``folder`` (each rewritten atomically when it gains rows), so a second
    run, or another model on the same backbone and grid, reads them instead of running the LLM. Runs at the same
    time (two trainings, parallel tuning trials) take turns per chunk: each computes only the rows that no other
    has written by then, and never writes a chunk without the rows another wrote.
    """

    CHUNK = 2048

    def __init__(
        self,
        folder: Path,
        start: str,
        freq: str,
        segment: int,
        template: str,
        dim: int,
        embed: Callable[[list[str]], np.ndarray],
    ) -> None:
        self.folder, self.freq, self.segment, self.template, self.dim = folder, freq, segment, template, dim
        self.start = np.datetime64(start, "s")
        self._embed = embed
        self._chunks: dict[int, np.ndarray] = {}  # chunk -> (CHUNK, dim + 1): values and a "computed" flag
        self.computed = 0  # texts embedded by this object (0 on a full cache hit)

    def _path(self, chunk: int) -> Path:
        return self.folder / f"chunk{chunk:+06d}.npy"

    def _chunk(self, chunk: int) -> np.ndarray:
        if chunk not in self._chunks:
            self._chunks[chunk] = self._read(chunk)
        return self._chunks[chunk]

    def _read(self, chunk: int) -> np.ndarray:
        """The chunk as on disk; all rows not computed where there is no readable file of this shape."""
        path = self._path(chunk)
        data = None
        if path.is_file():
            try:
                data = np.load(path)
            except (OSError, ValueError, EOFError):
                log.warning("unreadable timestamp cache file %s: recomputing it", path)
        if data is None or data.shape != (self.CHUNK, self.dim + 1):
            data = np.zeros((self.CHUNK, self.dim + 1), dtype=np.float32)
        return data

    def texts(self, rows: np.ndarray) -> list[str]:
        step = freq_step(self.freq).astype("timedelta64[s]")
        return segment_texts(self.start + np.asarray(rows) * step, self.freq, self.segment, self.template)

    def get(self, rows: np.ndarray) -> np.ndarray:
        """(*rows.shape, dim) float32 embeddings of the segments starting at grid ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.ravel()
        chunks, offsets = np.divmod(flat, self.CHUNK)
        for chunk in np.unique(chunks):
            data = self._chunk(int(chunk))
            wanted = np.unique(offsets[chunks == chunk])
            if not (data[wanted, -1] == 0).any():
                continue
            with exclusive_lock(self._path(int(chunk)).with_suffix(".lock")):
                disk = self._read(int(chunk))  # rows other runs wrote since this one read the chunk (its own kept)
                data[:] = np.where((disk[:, -1:] > 0) & (data[:, -1:] == 0), disk, data)
                missing = wanted[data[wanted, -1] == 0]
                if len(missing):
                    data[missing, :-1] = self._embed(self.texts(int(chunk) * self.CHUNK + missing))
                    data[missing, -1] = 1.0
                    self.computed += len(missing)
                    save = binary_writer(lambda handle, data=data: np.save(handle, data, allow_pickle=False))
                    atomic_write(self._path(int(chunk)), save)
        out = np.empty((len(flat), self.dim), dtype=np.float32)
        for chunk in np.unique(chunks):
            mask = chunks == chunk
            out[mask] = self._chunks[int(chunk)][offsets[mask], :-1]
        return out.reshape(*rows.shape, self.dim)


def embed_texts(backbone: Backbone, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(len(texts), hidden) final hidden state of each text's last token, as the official preprocessing."""
    device = next(backbone.model.parameters()).device
    ids = backbone.tokenizer(list(texts))["input_ids"]
    out = np.empty((len(texts), backbone.hidden_size), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(ids):
        by_length.setdefault(len(seq), []).append(i)  # equal lengths batch without padding or masks
    with torch.no_grad():
        for members in by_length.values():
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                tokens = torch.tensor([ids[i] for i in chunk], dtype=torch.long, device=device)
                hidden = backbone.decoder(input_ids=tokens).last_hidden_state[:, -1]
                out[chunk] = hidden.float().cpu().numpy()
    return out


# --- the model -----------------------------------------------------------------------------------------------


def _activation(name: str) -> nn.Module:
    return {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}[name]()


def segment_map(f_in: int, f_out: int, cfg: AutoTimesConfig) -> nn.Module:
    """Linear, or an MLP with ``mlp_hidden_layers`` hidden layers (activation and dropout after each)."""
    if cfg.mlp_hidden_layers == 0:
        return nn.Linear(f_in, f_out)
    layers: list[nn.Module] = []
    width = f_in
    for _ in range(cfg.mlp_hidden_layers):
        layers += [nn.Linear(width, cfg.mlp_hidden_dim), _activation(cfg.mlp_activation), Dropout(cfg.dropout)]
        width = cfg.mlp_hidden_dim
    return nn.Sequential(*layers, nn.Linear(width, f_out))


def normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-series normalisation over time (dim 1): (x - mean) / sqrt(var + 1e-5), with mean and std (B, 1, C)."""
    mean = x.mean(dim=1, keepdim=True).detach()
    std = torch.sqrt(torch.var(x - mean, dim=1, keepdim=True, unbiased=False) + NORM_EPS).detach()
    return (x - mean) / std, mean, std


def to_segments(z: torch.Tensor, segment: int) -> torch.Tensor:
    """(B, L, C) -> (B*C, L / segment, segment): channel independence, one token per segment (b major)."""
    b, length, c = z.shape
    return z.permute(0, 2, 1).reshape(b * c, length // segment, segment)


def from_segments(segments: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*C, S, segment) -> (B, S * segment, C)."""
    n, s, seg = segments.shape
    return segments.reshape(batch, n // batch, s * seg).permute(0, 2, 1)


class AutoTimes(ForecastModel):
    kind = "autotimes"
    rollout_kind = "kv_cache"
    graph_inputs = ("context",)

    def __init__(self, config: AutoTimesConfig, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.config = cfg = config
        self.backbone = backbone or shared_backbone(cfg.backbone)
        self.llm = self.backbone.model  # frozen: kept out of state_dict() and of the optimiser's work
        self.llm.requires_grad_(False)
        hidden = self.backbone.hidden_size
        self.encoder = segment_map(cfg.segment, hidden, cfg)
        self.decoder = segment_map(hidden, cfg.segment, cfg)
        self.add_scale = nn.Parameter(torch.ones(())) if cfg.timestamps else None
        self._timeline: TimelineIndex | None = None
        self._stamp_cache: TimestampEmbeddings | None = None
        self.register_state_dict_post_hook(_drop_llm_keys)
        self.register_load_state_dict_post_hook(_ignore_llm_keys)
        share = self.trainable_share()
        log.info(
            "autotimes on %s: %d of %d parameters train (%.3f%%)",
            self.backbone.identity,
            share["trainable"],
            share["total"],
            100 * share["share"],
        )

    # -- facts ---------------------------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def step(self) -> int:
        return self.config.segment

    @property
    def body(self) -> nn.Module:
        """The LLM without its head (LlamaModel for LlamaForCausalLM)."""
        return self.llm.base_model

    def trainable_share(self) -> dict[str, float]:
        """Trainable and total parameters (LLM included) and their ratio."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "total": total, "share": trainable / total}

    def kv_layout(self) -> dict[str, int]:
        """The KV cache's shape per layer: (N, kv_heads, length, head_dim), for ``n_layers`` layers."""
        c = self.llm.config
        heads = int(c.num_attention_heads)
        return {
            "n_layers": int(c.num_hidden_layers),
            "kv_heads": int(getattr(c, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(c, "head_dim", None) or c.hidden_size // heads),
            "hidden_size": int(c.hidden_size),
        }

    def train(self, mode: bool = True) -> AutoTimes:
        super().train(mode)
        self.llm.eval()  # frozen, and deterministic (no dropout) even while the head trains
        return self

    # -- timestamps ----------------------------------------------------------------------------------------

    @property
    def timestamp_cache(self) -> TimestampEmbeddings:
        """The on-demand cache of this backbone's text embeddings on the model's time grid."""
        if self._stamp_cache is None:
            cfg = self.config
            if cfg.time_start is None:
                raise ValueError("this model has no timeline (time_start)")
            template_id = hashlib.sha256(cfg.template.encode()).hexdigest()[:8]
            start = np.datetime64(cfg.time_start, "s").item().strftime("%Y%m%dT%H%M%S")
            grid = f"{cfg.freq}-seg{cfg.segment}-{start}-{template_id}"
            folder = cache_root() / "timestamps" / self.backbone.identity / grid
            self._stamp_cache = TimestampEmbeddings(
                folder,
                cfg.time_start,
                cfg.freq,
                cfg.segment,
                cfg.template,
                self.backbone.hidden_size,
                lambda texts: embed_texts(self.backbone, texts),
            )
        return self._stamp_cache

    def timeline_rows(self, x_mark: torch.Tensor | np.ndarray | None) -> np.ndarray:
        """(B,) rows of the model's timeline where each window starts, found from its calendar features."""
        if x_mark is None:
            raise ValueError("this AutoTimes model uses timestamp embeddings: the windows' x_mark is needed")
        if self._timeline is None:
            cfg = self.config
            assert cfg.time_start is not None
            self._timeline = TimelineIndex(cfg.time_start, cfg.time_rows, cfg.freq)
        marks = x_mark.detach().cpu().numpy() if isinstance(x_mark, torch.Tensor) else np.asarray(x_mark)
        return self._timeline.rows(marks)

    def timestamp_table(self, rows: int) -> np.ndarray:
        """(rows, hidden) L2-normalised text embeddings for the segments starting at grid rows 0..rows-1."""
        table = self.timestamp_cache.get(np.arange(rows))
        return table / np.linalg.norm(table, axis=1, keepdims=True)

    def time_embeddings(self, rows: np.ndarray, count: int) -> torch.Tensor:
        """(B, count, hidden) normalised text embeddings of ``count`` segments from each of ``rows`` (B,)."""
        grid = np.asarray(rows, dtype=np.int64)[:, None] + self.config.segment * np.arange(count)
        weight = next(self.encoder.parameters())
        table = torch.from_numpy(self.timestamp_cache.get(grid)).to(device=weight.device, dtype=weight.dtype)
        return table / table.norm(dim=-1, keepdim=True)

    # -- the network ---------------------------------------------------------------------------------------

    def encode(self, segments: torch.Tensor, time: torch.Tensor | None) -> torch.Tensor:
        """Segment tokens (N, S, segment) and their normalised timestamp embeddings (N, S, d) -> (N, S, d)."""
        embeds = self.encoder(segments)
        if not self.config.timestamps:
            return embeds
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        if time is None:  # prompt tokens: no timestamp
            return embeds
        assert self.add_scale is not None
        return embeds + self.add_scale * time

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(hidden)

    def _time(self, rows: np.ndarray | None, x_mark: Any, count: int, channels: int) -> torch.Tensor | None:
        if not self.config.timestamps:
            return None
        rows = self.timeline_rows(x_mark) if rows is None else rows
        return self.time_embeddings(rows, count).repeat_interleave(channels, dim=0)

    def forecast(
        self,
        x: torch.Tensor,
        n_segments: int,
        x_mark: torch.Tensor | None = None,
        *,
        rows: np.ndarray | None = None,
        use_cache: bool = True,
        prompt: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
        rollout: Rollout | None = None,
    ) -> torch.Tensor:
        """(B, L, C) scaled lookback -> (B, n_segments * segment, C) scaled forecast, rolled out segment by segment.

        ``rollout``: ``growing`` or ``sliding`` (default: the config's; see the module docstring). ``rows``: grid
        rows of each window's first step (else found from ``x_mark``); only used with timestamps. ``use_cache``
        (growing): prefill once and decode one token per segment with the KV cache; False recomputes the whole
        sequence at every step (the reference the cache is checked against); the sliding rollout never reuses a
        cache. ``prompt`` (B, P, C), P a multiple of the segment: in-context examples placed before the lookback
        (before every window, sliding). ``teacher`` (B, >= (n - 1) * segment, C) scaled values: fed back in
        place of the predictions (teacher forcing), to compare single steps of two implementations without their
        differences compounding.
        """
        seg = self.config.segment
        b, length, c = x.shape
        if length % seg or length == 0:
            raise ValueError(f"the lookback ({length}) must be a positive multiple of the segment ({seg})")
        if n_segments < 1:
            raise ValueError(f"n_segments must be at least 1, got {n_segments}")
        mode = check_rollout(rollout or self.config.rollout)
        s = length // seg
        time = self._time(rows, x_mark, s + n_segments - 1, c)
        prompt_embeds = None
        if prompt is not None:
            if prompt.shape[0] != b or prompt.shape[2] != c or prompt.shape[1] % seg or prompt.shape[1] == 0:
                raise ValueError(f"prompt must be ({b}, k * {seg}, {c}), got {tuple(prompt.shape)}")
            prompt_embeds = self.encode(to_segments(normalize(prompt)[0], seg), None)
        if mode == "sliding":
            return self._sliding(x, n_segments, time, prompt_embeds, teacher)
        z, mean, std = normalize(x)
        embeds = self.encode(to_segments(z, seg), None if time is None else time[:, :s])
        if prompt_embeds is not None:
            embeds = torch.cat([prompt_embeds, embeds], dim=1)
        forced = None if teacher is None else to_segments((teacher - mean) / std, seg)

        def fed_back(k: int) -> torch.Tensor:  # the segment fed in after prediction k: its own, or the teacher's
            return outs[k][:, None] if forced is None else forced[:, k : k + 1]

        outs: list[torch.Tensor] = []
        if use_cache:
            hidden, past = run_decoder(self.body, embeds, None, True)
            outs.append(self.decode(hidden[:, -1]))
            for k in range(1, n_segments):
                step_time = None if time is None else time[:, s + k - 1 : s + k]
                hidden, past = run_decoder(self.body, self.encode(fed_back(k - 1), step_time), past, True)
                outs.append(self.decode(hidden[:, -1]))
        else:
            sequence = embeds
            for k in range(n_segments):
                hidden, _ = run_decoder(self.body, sequence, None, False)
                outs.append(self.decode(hidden[:, -1]))
                if k + 1 < n_segments:
                    step_time = None if time is None else time[:, s + k : s + k + 1]
                    sequence = torch.cat([sequence, self.encode(fed_back(k), step_time)], dim=1)
        pred = from_segments(torch.stack(outs, dim=1), b)
        return pred * std + mean

    def _sliding(
        self,
        x: torch.Tensor,
        n_segments: int,
        time: torch.Tensor | None,
        prompt_embeds: torch.Tensor | None,
        teacher: torch.Tensor | None,
    ) -> torch.Tensor:
        """The official rollout: a fixed window, re-normalised and run in full (no cache) for every segment.

        Window k holds segments k..k+S-1 of lookback || forecast (or the teacher's values in place of the
        forecast), so its tokens carry the timestamp embeddings ``time[:, k : k + S]``.
        """
        seg = self.config.segment
        b, length, _ = x.shape
        s = length // seg
        window, outs = x, []
        for k in range(n_segments):
            z, mean, std = normalize(window)
            embeds = self.encode(to_segments(z, seg), None if time is None else time[:, k : k + s])
            if prompt_embeds is not None:
                embeds = torch.cat([prompt_embeds, embeds], dim=1)
            hidden, _ = run_decoder(self.body, embeds, None, False)
            out = from_segments(self.decode(hidden[:, -1:]), b) * std + mean  # (B, segment, C) scaled
            outs.append(out)
            if k + 1 < n_segments:
                fed = out if teacher is None else teacher[:, k * seg : (k + 1) * seg].to(out.dtype)
                window = torch.cat([window[:, seg:], fed], dim=1)
        return torch.cat(outs, dim=1)

    def forward(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, y_mark: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The next segment (B, segment, C) after the lookback x (B, L, C)."""
        return self.forecast(x, 1, x_mark)

    def predict_every_position(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, beyond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L, C) scaled lookback -> (B, L, C): after each segment k, the model's prediction of segment k + 1.

        One causal pass over the lookback's S tokens (normalised over the whole lookback): position k sees
        segments 1..k only; the last S - 1 predicted segments are targets inside the lookback, the last one is
        the forecast. ``beyond`` (B, E * segment, C): known values after the lookback, appended as E more tokens
        with the lookback's statistics (teacher forcing of the growing rollout); the output is then
        (B, L + E * segment, C).
        """
        seg = self.config.segment
        b, length, c = x.shape
        if length % seg or length == 0:
            raise ValueError(f"the lookback ({length}) must be a positive multiple of the segment ({seg})")
        z, mean, std = normalize(x)
        if beyond is not None and beyond.shape[1]:
            z = torch.cat([z, (beyond - mean) / std], dim=1)
        time = self._time(None, x_mark, z.shape[1] // seg, c)
        hidden, _ = run_decoder(self.body, self.encode(to_segments(z, seg), time), None, False)
        return from_segments(self.decode(hidden), b) * std + mean

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The rollout trained over the ``train_segments`` segments a training window carries (validation's)."""
        k = self.config.train_segments
        return self.forecast(batch["x"], k, batch.get("x_mark"), rollout=self.config.train_rollout if k > 1 else None)

    def loss(self, batch: dict[str, torch.Tensor], progress: float) -> torch.Tensor:
        """MSE on every position: inputs segments 1..S+k-1 of x || y (growing: the truth; sliding: past the
        lookback, the model's own rollout), targets segments 2..S+k."""
        x, y = batch["x"], batch["y"]
        seg, k = self.config.segment, self.config.train_segments
        if y.shape[1] != k * seg:
            raise ValueError(
                f"AutoTimes trains on windows whose horizon is train_segments x segment ({k} x {seg}), got {y.shape[1]}"
            )
        target = torch.cat([x[:, seg:], y], dim=1)
        if k == 1 or self.config.train_rollout == "growing":
            return F.mse_loss(self.predict_every_position(x, batch.get("x_mark"), y[:, : (k - 1) * seg]), target)
        return F.mse_loss(self._sliding_every_position(x, k, batch.get("x_mark")), target)

    def _sliding_every_position(self, x: torch.Tensor, k: int, x_mark: torch.Tensor | None) -> torch.Tensor:
        """(B, L, C) -> (B, L + (k - 1) * segment, C): the lookback's predictions on every position (as at k = 1),
        then k - 1 more segments of the sliding rollout, each window holding the model's earlier predictions.

        The first window's last position is the rollout's first segment, so it is not computed twice."""
        seg = self.config.segment
        first = self.predict_every_position(x, x_mark)
        window = torch.cat([x[:, seg:], first[:, -seg:]], dim=1)
        time = self._time(None, x_mark, x.shape[1] // seg + k - 1, x.shape[2])
        rest = self._sliding(window, k - 1, None if time is None else time[:, 1:], None, None)
        return torch.cat([first, rest], dim=1)


def _drop_llm_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """The frozen LLM is loaded from its backbone spec, never saved with the run's weights."""
    for key in [k for k in state_dict if k.startswith(prefix + "llm.")]:
        del state_dict[key]


def _ignore_llm_keys(module: nn.Module, incompatible: Any) -> None:
    """Loading a run's weights leaves the LLM as loaded from its backbone: its keys are not missing."""
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if ".llm." not in f".{k}"]


# --- the exported step ---------------------------------------------------------------------------------------


class KVStepGraph(nn.Module):
    """One rollout step for export: normalised segment tokens after a KV cache -> the next segment and new cache.

    Inputs: ``segments`` (N, S, segment), with timestamps also ``time_embeds`` (N, S, hidden) (normalised;
    the graph applies the mixing scale), then ``past_key_i`` / ``past_value_i`` (N, kv_heads, P, head_dim)
    for every layer. An empty past (P = 0) is the prefill; S = 1 after it is one decode step. Outputs:
    ``next`` (N, 1, segment) for the last position (shaped to be fed straight back as the next step's
    ``segments``) and ``present_key_i`` / ``present_value_i`` (P + S long).
    """

    def __init__(self, model: AutoTimes) -> None:
        super().__init__()
        self.model = model

    def forward(self, segments: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.model.config.timestamps:
            time, past = rest[0], rest[1:]
        else:
            time, past = None, rest
        hidden, present = run_decoder(self.model.body, self.model.encode(segments, time), list(past), True)
        return (self.model.decode(hidden[:, -1:]), *present)


def _bind(params: dict[str, Any], facts: DataFacts) -> AutoTimesConfig:
    """Lookback -> context_length, horizon -> train_segments x segment, plus the data's timeline."""
    freq = params.get("freq") or facts.freq
    k = int(params.get("train_segments", 1))
    if k < 1 or facts.config.horizon % k:
        raise ValueError(f"the horizon ({facts.config.horizon}) must be train_segments ({k}) segments")
    segment = facts.config.horizon // k
    bound: dict[str, Any] = {**params, "context_length": facts.config.lookback, "segment": segment}
    bound["freq"] = freq
    if bound.get("timestamps", True) and not bound.get("time_start"):
        bound["time_start"], bound["time_rows"] = regular_timeline(facts.timestamps(), freq)
    return AutoTimesConfig(**bound)


def _search_space(trial: Any) -> dict[str, dict[str, Any]]:
    """The protocol fixes lookback 672 and segment 96 (one-for-all); tune the maps, timestamps and the rate."""
    layers = trial.suggest_categorical("mlp_hidden_layers", [0, 1, 2])
    model: dict[str, Any] = {
        "mlp_hidden_layers": layers,
        "timestamps": trial.suggest_categorical("timestamps", [True, False]),
    }
    if layers:
        model["mlp_hidden_dim"] = trial.suggest_categorical("mlp_hidden_dim", [128, 256, 512])
        model["dropout"] = trial.suggest_float("dropout", 0.0, 0.3)
    return {"model": model, "train": {"lr": trial.suggest_float("lr", 1e-4, 5e-3, log=True)}}


SPEC = ModelSpec(
    AutoTimes,
    AutoTimesConfig,
    _bind,
    _search_space,
    # A random LLM of SmolLM2's architecture, scaled down, stands in for the real backbone (offline, seconds).
    tiny=TinySetup(
        data={"features": "M", "lookback": 96, "horizon": 24},
        model={},
        assets=lambda folder: {"backbone": str(write_random_backbone(folder))},
    ),
)
