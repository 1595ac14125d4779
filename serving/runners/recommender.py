"""What every recommender runner shares: raw <-> dense item ids, one user's query, the answer, and how the dynamic
batcher merges recommendation requests.

A recommender runner (``constrained_beam``: a generator's beam search over semantic IDs; ``item_scores``: one
score per item, e.g. SASRec) subclasses ``ItemCatalogue`` and implements ``search_queries``; the service, the
batch jobs and the exporters' checks use only what is here.

Items are raw ids (the dataset's own) in requests and answers; a history item the model does not know is an error,
an unknown item in ``exclude`` is ignored (it can never be recommended anyway).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from serving.batching import BatchKind, Piece, run_in_chunks

MAX_K = 512  # a request's k (and beam width) bound: cost grows linearly with it


@dataclass(frozen=True)
class TableFile:
    """A side table beside the graphs (manifest: ``{"file": ...}``)."""

    file: str


@dataclass(frozen=True)
class SearchResult:
    """Per user, best first: dense ids (0 where fewer items were reachable), scores (-inf there), codes (each
    item's semantic ID; zero columns for a model without codes)."""

    items: np.ndarray  # (B, k) int64
    scores: np.ndarray  # (B, k) float32
    codes: np.ndarray  # (B, k, L) int64


@dataclass(frozen=True)
class UserQuery:
    """One user's search input in dense ids: the whole history (oldest first) and the items never to return."""

    history: np.ndarray
    excluded: np.ndarray


@dataclass(frozen=True)
class RecommendJob:
    """One request's users with its k and beam width: the unit the dynamic batcher merges."""

    queries: list[UserQuery]
    k: int
    beam_width: int
    deadline: float | None = None  # time.monotonic() after which the rest of its work is dropped
    diversity: float = 0.0  # diverse beam search's penalty (0: plain beam search)


def left_padded(queries: Sequence[UserQuery], max_history: int, width: int | None = None) -> np.ndarray:
    """The last ``max_history`` items of each history as (B, width) dense ids, left-padded with 0 (width: the
    longest history kept, unless given)."""
    width = width or min(max(len(q.history) for q in queries), max_history)
    padded = np.zeros((len(queries), width), dtype=np.int64)
    for i, q in enumerate(queries):
        tail = q.history[-width:]
        padded[i, width - len(tail) :] = tail
    return padded


class ItemCatalogue:
    """The raw-id side of a recommender runner. Subclasses set ``item_ids`` (raw id per dense id, [0] = -1, strictly
    increasing after it), ``titles`` (or None), the defaults below, and implement ``search_queries``."""

    rollout_kind: ClassVar[str]
    beam_search: ClassVar[bool]  # whether beam_width and diversity mean anything to this kind
    item_ids: np.ndarray
    titles: list[str] | None

    @property
    def default_k(self) -> int:
        raise NotImplementedError

    @property
    def default_beam_width(self) -> int:
        """0 for a kind without beam search (it ranks every item)."""
        raise NotImplementedError

    @property
    def code_levels(self) -> int:
        """Codes per returned item (0: the kind has no semantic IDs)."""
        raise NotImplementedError

    def search_queries(
        self, queries: Sequence[UserQuery], k: int | None = None, beam_width: int | None = None, diversity: float = 0.0
    ) -> SearchResult:
        raise NotImplementedError

    def users_per_run(self, beam_width: int) -> int:
        """How many users one onnxruntime search takes at most (its memory grows with them)."""
        raise NotImplementedError

    def check_reach(self, reach: int) -> None:
        if not 0 < reach <= MAX_K:
            raise ValueError(f"k: {reach} is outside 1..{MAX_K}")

    @functools.cached_property
    def known_ids(self) -> frozenset[int]:
        """Every raw item id the model can take in a history or return."""
        return frozenset(self.item_ids[1:].tolist())

    def dense_ids(self, raw: Sequence[int], strict: bool, field: str) -> np.ndarray:
        """Raw item ids -> dense ids; unknown ids raise (``strict``) or are dropped."""
        values = np.asarray(list(raw), dtype=np.int64) if len(raw) else np.zeros(0, np.int64)
        known = self.item_ids[1:]
        pos = np.searchsorted(known, values)
        found = (pos < len(known)) & (known[np.minimum(pos, len(known) - 1)] == values)
        if strict and not found.all():
            bad = int(np.flatnonzero(~found)[0])
            raise ValueError(f"{field}[{bad}]: unknown item id {int(values[bad])}")
        return pos[found] + 1

    def query(
        self, history: Sequence[int], exclude: Iterable[int] = (), exclude_seen: bool = True, field: str = "history"
    ) -> UserQuery:
        """One user's raw ids -> dense ids; an unknown history item raises, an unknown excluded item is ignored."""
        if not len(history):
            raise ValueError(f"{field}: empty history (at least one item is needed)")
        dense = self.dense_ids(history, strict=True, field=field)
        parts = [dense] if exclude_seen else []  # the whole history, also what is older than max_history
        exclude = sorted(set(exclude))
        if exclude:
            parts.append(self.dense_ids(exclude, strict=False, field="exclude"))
        return UserQuery(dense, np.concatenate(parts) if parts else np.zeros(0, np.int64))

    def search(
        self,
        histories: list[list[int]],
        k: int | None = None,
        beam_width: int | None = None,
        exclude: list[set[int]] | None = None,
        exclude_seen: bool = True,
        diversity: float = 0.0,
    ) -> SearchResult:
        """As :meth:`recommend`, as arrays of dense ids (``item_ids`` maps them to raw ids) with their codes."""
        if not len(histories):
            raise ValueError("histories: no users given")
        if exclude is not None and len(exclude) != len(histories):
            raise ValueError(f"exclude: {len(exclude)} sets for {len(histories)} histories")
        queries = [
            self.query(history, exclude[i] if exclude is not None else (), exclude_seen, f"histories[{i}]")
            for i, history in enumerate(histories)
        ]
        return self.search_queries(queries, k, beam_width, diversity)

    def recommend(
        self,
        histories: list[list[int]],
        k: int | None = None,
        beam_width: int | None = None,
        exclude: list[set[int]] | None = None,
        exclude_seen: bool = True,
        diversity: float = 0.0,
    ) -> list[list[tuple[int, float]]]:
        """Top-``k`` (raw item id, score) for each raw-id history, best first (scores: log-probabilities).

        ``exclude[i]``: raw ids user ``i`` must not get; ``exclude_seen``: nor the items of their history. A list is
        shorter than ``k`` only when fewer allowed items exist.
        """
        result = self.search(histories, k, beam_width, exclude, exclude_seen, diversity)
        out = []
        for items, scores in zip(result.items, result.scores, strict=True):
            out.append([(int(self.item_ids[d]), float(s)) for d, s in zip(items, scores, strict=True) if d != 0])
        return out

    def batches(self, slots: AbstractContextManager[object] | None = None) -> BatchKind[RecommendJob, SearchResult]:
        """How the dynamic batcher merges recommendation requests: one search per beam width, at the largest k.

        A user's top-k does not depend on who else is in the batch (left padding is masked, positions count from the
        right) and the first k of a top-K search are the top-k, so merging is exact. Searches run at most
        ``users_per_run`` users at a time, each inside one of the server's ``slots``, deadlines checked between them.
        """
        slots = slots or nullcontext()

        def run_chunk(pieces: list[Piece[RecommendJob]]) -> list[SearchResult]:
            queries = [q for p in pieces for q in p.job.queries[p.rows]]
            with slots:
                job = pieces[0].job
                merged = self.search_queries(queries, max(p.job.k for p in pieces), job.beam_width, job.diversity)
            out, start = [], 0
            for p in pieces:
                rows, top = slice(start, start + p.rows.stop - p.rows.start), slice(0, p.job.k)
                out.append(SearchResult(merged.items[rows, top], merged.scores[rows, top], merged.codes[rows, top]))
                start = rows.stop
            return out

        def join(parts: list[SearchResult]) -> SearchResult:
            if len(parts) == 1:
                return parts[0]
            return SearchResult(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("items", "scores", "codes")))

        def run(jobs: list[RecommendJob]) -> list[SearchResult | BaseException]:
            per_run = self.users_per_run(jobs[0].beam_width)
            return run_in_chunks(jobs, lambda job: len(job.queries), per_run, lambda job: job.deadline, run_chunk, join)

        return BatchKind(run, rows=lambda job: len(job.queries), key=lambda job: (job.beam_width, job.diversity))
