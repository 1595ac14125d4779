"""Constrained beam search of a generative recommender (rollout kind ``constrained_beam``) on onnxruntime.

numpy and onnxruntime only, no torch: the artifact carries

- ``encoder``: history tokens (B, S) -> ``memory_mask`` (B, M) and each decoder layer's cross-attention keys and
  values (B, H, M, hd), computed once per request;
- ``decoder``: one step for W beams per user, ``tokens`` (B, W) + the memory mask + cross keys/values + the
  self-attention cache ``past_key_i``/``past_value_i`` (B, W, H, P, hd) -> ``logits`` (B, W, vocab) and the
  cache one position longer (``present_*``);
- side tables: ``codes.npy`` (dense item id -> its L codes, row 0 padding), ``item_ids.npy`` (dense id -> raw
  item id), ``trie.npz`` (the prefix trie of every item's codes, written by ``arcast_core.trie``), ``titles.json``.

Search: the decoder starts from BOS; at level l every live beam's continuations are scored by the beam's score plus
the log-softmax over level l's codes, codes that lead to no (allowed) item are removed with the trie, and the
``beam_width`` best continuations survive, ties broken by (beam, code) order. After the last level each beam is
one real item; the first ``k`` are returned. This is step for step the torch search in ``recsys/generator.py``.

What every recommender shares (raw ids, queries, the answer, batching) is in ``serving/runners/recommender.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import onnxruntime as ort

from arcast_core.diverse_beam import diverse_order, rank_final
from arcast_core.trie import PrefixTrie
from serving.artifact import Artifact
from serving.manifest import RolloutSpec
from serving.runners.base import NonFiniteOutput, RunnerInfo, Task
from serving.runners.recommender import MAX_K, ItemCatalogue, SearchResult, TableFile, UserQuery, left_padded
from serving.sessions import create_session

MAX_BEAM_WIDTH = MAX_K  # a request's beam width bound: cost grows linearly with it
MAX_DIVERSITY = 100.0  # diverse beam search's penalty bound (log-probability units; beyond it nothing changes)
# Users x beam width per onnxruntime search: a search's memory grows with its beams (about 50 KB each for the
# demo's model: logits, caches and candidate scores), so long requests run in chunks of this many.
BEAMS_PER_RUN = 4096


@dataclass(frozen=True)
class SideTables:
    """The search's tables beside the graphs: codes per dense id, raw ids, the prefix trie, titles when known."""

    codes: TableFile
    item_ids: TableFile
    trie: TableFile
    titles: TableFile | None = None


@dataclass(frozen=True)
class ConstrainedBeamRollout(RolloutSpec):
    """The semantic-ID code levels, the decoder's cache layout and the search's defaults (``n_items`` and
    ``side_tables`` sit at the manifest's top level in format version 1)."""

    top_level: ClassVar[tuple[str, ...]] = ("n_items", "side_tables")
    level_sizes: tuple[int, ...]
    token_offsets: tuple[int, ...]
    bos_token: int
    max_history: int
    decoder_layers: int
    heads: int
    head_dim: int
    beam_width: int
    top_k: int
    n_items: int
    side_tables: SideTables


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


@dataclass
class ConstrainedBeamModel(ItemCatalogue):
    """A loaded ``constrained_beam`` artifact: ``recommend`` turns raw-id histories into raw-id recommendations."""

    rollout_kind: ClassVar[str] = "constrained_beam"
    rollout_spec: ClassVar[type[RolloutSpec]] = ConstrainedBeamRollout
    task: ClassVar[Task] = "recommend"
    beam_search: ClassVar[bool] = True
    artifact: Artifact
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    trie: PrefixTrie
    tokens: np.ndarray  # (n_items + 1, L) token ids per dense id, row 0 padding
    item_ids: np.ndarray  # (n_items + 1,) raw id per dense id, [0] = -1
    titles: list[str] | None
    beams_per_run: int = BEAMS_PER_RUN  # users x beam width per onnxruntime search (its memory grows with them)

    @classmethod
    def load(
        cls, artifact: Artifact, providers: Sequence[str] | None = None, intra_op_threads: int | None = None
    ) -> ConstrainedBeamModel:
        rollout = artifact.manifest.rollout
        if not isinstance(rollout, ConstrainedBeamRollout):
            raise ValueError(f"{artifact.path}: rollout kind {rollout.kind!r} is not {cls.rollout_kind}")
        tables = rollout.side_tables
        codes = np.load(artifact.path / tables.codes.file, allow_pickle=False)
        item_ids = np.load(artifact.path / tables.item_ids.file, allow_pickle=False)
        trie = PrefixTrie.load(artifact.path / tables.trie.file)
        n_items, levels = rollout.n_items, len(rollout.level_sizes)
        if codes.shape != (n_items + 1, levels) or item_ids.shape != (n_items + 1,) or trie.n_items != n_items:
            raise ValueError(f"{artifact.path}: side tables do not match n_items={n_items} and {levels} levels")
        if not np.all(np.diff(item_ids[1:]) > 0):
            raise ValueError(f"{artifact.path}: item_ids must be strictly increasing after the padding row")
        tokens = np.zeros_like(codes)
        tokens[1:] = codes[1:] + np.asarray(rollout.token_offsets, dtype=np.int64)
        titles = None
        if tables.titles is not None:
            titles = json.loads((artifact.path / tables.titles.file).read_text())
        return cls(
            artifact,
            create_session(artifact.graph_path("encoder"), providers, intra_op_threads),
            create_session(artifact.graph_path("decoder"), providers, intra_op_threads),
            trie,
            tokens,
            item_ids,
            titles,
        )

    # --- facts from the manifest -------------------------------------------------------------------------------

    @property
    def spec(self) -> ConstrainedBeamRollout:
        rollout = self.artifact.manifest.rollout
        assert isinstance(rollout, ConstrainedBeamRollout)
        return rollout

    @property
    def n_items(self) -> int:
        return self.spec.n_items

    @property
    def max_history(self) -> int:
        return self.spec.max_history

    @property
    def default_beam_width(self) -> int:
        return self.spec.beam_width

    @property
    def default_k(self) -> int:
        return self.spec.top_k

    @property
    def code_levels(self) -> int:
        return int(self.tokens.shape[1])

    def users_per_run(self, beam_width: int) -> int:
        return max(1, self.beams_per_run // beam_width)

    def describe(self) -> RunnerInfo:
        return RunnerInfo(rollout_kind=self.rollout_kind, providers=tuple(self.session.get_providers()))

    @property
    def session(self) -> ort.InferenceSession:
        """The encoder's session: what the server reports providers from (the decoder runs on the same ones)."""
        return self.encoder

    def smoke_check(self) -> None:
        """One search from a one-item history; NonFiniteOutput when the decoder answers NaN, so a broken graph is
        never served (search_dense checks every level's logits)."""
        self.search_dense(np.ones((1, 1), dtype=np.int64), 1, min(self.default_beam_width, MAX_BEAM_WIDTH))

    def search_queries(
        self,
        queries: Sequence[UserQuery],
        k: int | None = None,
        beam_width: int | None = None,
        diversity: float = 0.0,
    ) -> SearchResult:
        """Beam search for prepared queries: the last ``max_history`` items of each history, left-padded."""
        k = self.default_k if k is None else k
        beam_width = max(self.default_beam_width, k) if beam_width is None else beam_width
        if not 1 <= beam_width <= MAX_BEAM_WIDTH:
            raise ValueError(f"beam_width: {beam_width} is outside 1..{MAX_BEAM_WIDTH}")
        if not 1 <= k <= beam_width:
            raise ValueError(f"k: {k} is outside 1..beam_width ({beam_width})")
        if not len(queries):
            raise ValueError("queries: no users given")
        if not 0 <= diversity <= MAX_DIVERSITY:  # also refuses NaN
            raise ValueError(f"diversity: {diversity} is outside 0..{MAX_DIVERSITY}")
        padded = left_padded(queries, self.max_history)
        return self.search_dense(padded, k, beam_width, [q.excluded for q in queries], diversity=diversity)

    # --- the search itself -------------------------------------------------------------------------------------

    def search_dense(
        self,
        histories: np.ndarray,
        k: int,
        beam_width: int,
        excluded: Sequence[np.ndarray] | None = None,
        steps: StepsFactory | None = None,
        diversity: float = 0.0,
    ) -> SearchResult:
        """Beam search for (B, H) left-padded dense-id histories (every row with at least one item).

        ``steps`` makes the decoder's per-level runs (default :class:`CachedSteps`, the served way). ``diversity``
        > 0: diverse beam search (``arcast_core.diverse_beam``), the final beams ranked by their summed log-prob.
        """
        rollout = self.spec
        histories = np.asarray(histories, dtype=np.int64)
        used = np.flatnonzero((histories != 0).any(axis=0))
        tokens = self.tokens[histories[:, int(used[0]) :]].reshape(len(histories), -1)
        names = [o.name for o in self.encoder.get_outputs()]
        encoded = dict(zip(names, self.encoder.run(None, {"history": tokens}), strict=True))
        decoder = (steps or CachedSteps)(self, encoded)
        batch = len(histories)
        step_tokens = np.full((batch, 1), rollout.bos_token, dtype=np.int64)
        nodes = np.zeros((batch, 1), dtype=np.int64)
        scores = np.zeros((batch, 1), dtype=np.float32)
        codes = np.zeros((batch, 1, 0), dtype=np.int64)
        rows = np.arange(batch)[:, None]
        for level, size in enumerate(rollout.level_sizes):
            start = rollout.token_offsets[level]
            logits = decoder.logits(step_tokens)[..., start : start + size]
            if np.isnan(logits).any() or np.isposinf(logits).any():
                raise NonFiniteOutput(f"{self.artifact.path}: the decoder answered non-finite logits at level {level}")
            log_probs = log_softmax(logits)
            child, ok = self.trie.allowed(level, nodes, excluded)
            ok &= np.isfinite(scores)[..., None]  # a dead beam has no continuation
            flat = np.where(ok, scores[..., None] + log_probs, -np.inf).astype(np.float32).reshape(batch, -1)
            if diversity > 0:
                order, scores = diverse_order(flat, size, beam_width, diversity)
            else:
                width = min(beam_width, flat.shape[1])
                order = np.argsort(-flat, axis=1, kind="stable")[:, :width]  # best first, ties in (beam, code) order
                scores = np.take_along_axis(flat, order, axis=1)
            parent, code = order // size, order % size
            nodes = child[rows, parent, code]
            nodes[~np.isfinite(scores)] = 0
            codes = np.concatenate([codes[rows, parent], code[..., None]], axis=2)
            decoder.survive(rows, parent)
            step_tokens = (code + start).astype(np.int64)
        if diversity > 0:  # the groups' beams, best first
            rank = rank_final(scores)
            scores, nodes, codes = scores[rows, rank], nodes[rows, rank], codes[rows, rank]
        final = scores[:, :k]
        items = np.where(np.isfinite(final), nodes[:, :k], 0)
        return SearchResult(items=items, scores=final, codes=codes[:, :k])


class DecoderSteps(Protocol):
    """How the search gets each level's logits from the decoder."""

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """The newest token of every beam (B, W) -> next-token logits over the whole vocabulary (B, W, V)."""
        ...

    def survive(self, rows: np.ndarray, parent: np.ndarray) -> None:
        """The beams kept for the next level: beam j of user b continues beam ``parent[b, j]``."""
        ...


StepsFactory = Callable[[ConstrainedBeamModel, dict[str, np.ndarray]], DecoderSteps]


class CachedSteps:
    """The served way: one decoder-step run per level, each beam's self-attention keys/values carried over."""

    def __init__(self, model: ConstrainedBeamModel, encoded: dict[str, np.ndarray]) -> None:
        rollout = model.spec
        self._session, self._layers = model.decoder, rollout.decoder_layers
        self._outputs = [o.name for o in self._session.get_outputs()]
        batch = len(encoded["memory_mask"])
        empty = np.zeros((batch, 1, rollout.heads, 0, rollout.head_dim), dtype=np.float32)
        self._feeds = dict(encoded)
        for i in range(self._layers):
            self._feeds[f"past_key_{i}"] = self._feeds[f"past_value_{i}"] = empty
        self._present: dict[str, np.ndarray] = {}

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        self._feeds["tokens"] = tokens
        self._present = dict(zip(self._outputs, self._session.run(None, self._feeds), strict=True))
        return self._present["logits"]

    def survive(self, rows: np.ndarray, parent: np.ndarray) -> None:
        for i in range(self._layers):
            self._feeds[f"past_key_{i}"] = self._present[f"present_key_{i}"][rows, parent]
            self._feeds[f"past_value_{i}"] = self._present[f"present_value_{i}"][rows, parent]
