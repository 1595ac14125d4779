"""A recommender that scores every item at once (rollout kind ``item_scores``; SASRec) on onnxruntime.

numpy and onnxruntime only, no torch: the artifact carries

- ``scorer``: ``history`` (B, S) left-padded dense item ids, S = ``max_history`` -> ``scores`` (B, n_items + 1),
  the log-probability of each item being the next one (column 0, the padding id, is -inf);
- side tables: ``item_ids.npy`` (dense id -> raw item id) and ``titles.json`` when known.

Ranking: excluded items (the history unless asked otherwise, and the request's ``exclude``) are set to -inf and the
``k`` best remain, ties in dense-id order. There is no beam: a request's ``beam_width`` does not apply, and
``diversity`` (diverse beam search) is refused by the service.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from serving.artifact import Artifact
from serving.manifest import RolloutSpec
from serving.runners.base import NonFiniteOutput, RunnerInfo, Task
from serving.runners.recommender import MAX_K, ItemCatalogue, SearchResult, TableFile, UserQuery, left_padded
from serving.sessions import create_session

# Users per onnxruntime run: its output is users x (n_items + 1) float32 (48 KB per user at Beauty's 12k items), plus
# the rollout's ``cells_per_user`` of working memory.
SCORE_CELLS_PER_RUN = 1 << 25
SELECT_BLOCK = 64  # items per block in the top-k selection (top_k_allowed)


@dataclass(frozen=True)
class ScoreTables:
    """The raw id of each dense id, when known each item's title, and when given the order that breaks ties."""

    item_ids: TableFile
    titles: TableFile | None = None
    # (n_items + 1,) int64: each dense id's place among equal scores (lower first), e.g. by popularity for a model
    # whose own tie-break is below float32's resolution; without it ties go in dense-id order.
    tie_order: TableFile | None = None


@dataclass(frozen=True)
class ItemScoresRollout(RolloutSpec):
    """The catalogue's size, the history the scorer reads and the default k."""

    n_items: int
    max_history: int
    top_k: int
    side_tables: ScoreTables
    # Working cells one user's run holds beside its scores (a graph that gathers per history item, as the
    # transitions one does); users per run are bounded by both. 0: the scores alone (SASRec).
    cells_per_user: int = 0
    # The scorer takes histories of any width up to max_history, and is sent the batch's longest (its work grows
    # with the width). False: always max_history wide (SASRec's graph is exported at that width; manifests written
    # before the field).
    narrow_history: bool = False


def top_k_allowed(
    scores: np.ndarray, k: int, excluded: Sequence[np.ndarray] | None = None, tie_order: np.ndarray | None = None
) -> SearchResult:
    """The ``k`` best of (B, n_items + 1) scores, excluded dense ids and column 0 never returned, ties by
    ``tie_order`` (each dense id's place, lower first), else by dense id.

    Where fewer than ``k`` items are allowed the rest is item 0 with score -inf (as a beam search answers)."""
    scores = np.asarray(scores)
    users, columns = scores.shape
    blocks = -(-columns // SELECT_BLOCK)
    padded = np.full((users, blocks * SELECT_BLOCK), -np.inf, dtype=np.float32)  # the copy the masking needs
    padded[:, :columns] = scores
    padded[:, 0] = -np.inf
    for row, dense in enumerate(excluded or ()):
        padded[row, dense] = -np.inf
    k = min(k, columns - 1)
    # The k-th best score without a selection over every item (argpartition costs ~0.1 ms per 12k-item row here):
    # the k blocks with the highest maxima hold k items at least that high, so the k-th score is at least the k-th
    # highest block maximum, tau, and every item at or above the k-th score lies in a block whose maximum reaches
    # tau. Selecting among those blocks' items gives the exact k-th score.
    block_max = padded.reshape(users, blocks, SELECT_BLOCK).max(axis=2)
    tau = np.partition(block_max, blocks - k, axis=1)[:, blocks - k] if blocks >= k else np.full(users, -np.inf)
    items = np.zeros((users, k), dtype=np.int64)
    values = np.zeros((users, k), dtype=np.float32)
    for row, line in enumerate(padded[:, :columns]):
        near = np.flatnonzero(block_max[row] >= tau[row])
        pool = (near[:, None] * SELECT_BLOCK + np.arange(SELECT_BLOCK)).ravel()
        pool = pool[pool < columns]
        pooled = line[pool]
        kth = np.partition(pooled, len(pooled) - k)[len(pooled) - k]
        # every item at or above the k-th score, by (score descending, dense id): ties at the k-th place do not
        # depend on how the selection split them
        candidates = pool[pooled >= kth]
        keys = (
            (candidates, -line[candidates])
            if tie_order is None
            else (candidates, tie_order[candidates], -line[candidates])
        )
        order = candidates[np.lexsort(keys)[:k]]
        items[row], values[row] = order, line[order]
    items[~np.isfinite(values)] = 0
    return SearchResult(items, values, np.zeros((len(scores), k, 0), dtype=np.int64))


@dataclass
class ItemScoresModel(ItemCatalogue):
    """A loaded ``item_scores`` artifact: ``recommend`` turns raw-id histories into raw-id recommendations."""

    rollout_kind: ClassVar[str] = "item_scores"
    rollout_spec: ClassVar[type[RolloutSpec]] = ItemScoresRollout
    task: ClassVar[Task] = "recommend"
    beam_search: ClassVar[bool] = False
    artifact: Artifact
    scorer: ort.InferenceSession
    item_ids: np.ndarray  # (n_items + 1,) raw id per dense id, [0] = -1
    titles: list[str] | None
    tie_order: np.ndarray | None = None  # (n_items + 1,) each dense id's place among equal scores

    @classmethod
    def load(
        cls, artifact: Artifact, providers: Sequence[str] | None = None, intra_op_threads: int | None = None
    ) -> ItemScoresModel:
        rollout = artifact.manifest.rollout
        if not isinstance(rollout, ItemScoresRollout):
            raise ValueError(f"{artifact.path}: rollout kind {rollout.kind!r} is not {cls.rollout_kind}")
        tables = rollout.side_tables
        item_ids = np.load(artifact.path / tables.item_ids.file, allow_pickle=False)
        if item_ids.shape != (rollout.n_items + 1,):
            raise ValueError(f"{artifact.path}: item_ids has shape {item_ids.shape}, not ({rollout.n_items + 1},)")
        if not np.all(np.diff(item_ids[1:]) > 0):
            raise ValueError(f"{artifact.path}: item_ids must be strictly increasing after the padding row")
        titles = None
        if tables.titles is not None:
            titles = json.loads((artifact.path / tables.titles.file).read_text())
        tie_order = None
        if tables.tie_order is not None:
            tie_order = np.load(artifact.path / tables.tie_order.file, allow_pickle=False)
            if tie_order.shape != item_ids.shape or tie_order.dtype.kind not in "iu":
                raise ValueError(f"{artifact.path}: tie_order must be {item_ids.shape} integers, not {tie_order.shape}")
        session = create_session(artifact.graph_path("scorer"), providers, intra_op_threads)
        return cls(artifact, session, item_ids, titles, tie_order)

    @property
    def spec(self) -> ItemScoresRollout:
        rollout = self.artifact.manifest.rollout
        assert isinstance(rollout, ItemScoresRollout)
        return rollout

    @property
    def max_history(self) -> int:
        return self.spec.max_history

    @property
    def default_k(self) -> int:
        return self.spec.top_k

    @property
    def default_beam_width(self) -> int:
        return 0

    @property
    def code_levels(self) -> int:
        return 0

    @property
    def session(self) -> ort.InferenceSession:
        return self.scorer

    def describe(self) -> RunnerInfo:
        return RunnerInfo(rollout_kind=self.rollout_kind, providers=tuple(self.scorer.get_providers()))

    def users_per_run(self, beam_width: int) -> int:
        return max(1, SCORE_CELLS_PER_RUN // (self.spec.n_items + 1 + self.spec.cells_per_user))

    def smoke_check(self) -> None:
        """One ranking from a one-item history; NonFiniteOutput when the graph answers NaN."""
        self.search_dense(np.ones((1, 1), dtype=np.int64), 1)

    def search_queries(
        self, queries: Sequence[UserQuery], k: int | None = None, beam_width: int | None = None, diversity: float = 0.0
    ) -> SearchResult:
        """The top ``k`` of every allowed item for prepared queries (``beam_width`` does not apply)."""
        k = self.default_k if k is None else k
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k: {k} is outside 1..{MAX_K}")
        if not len(queries):
            raise ValueError("queries: no users given")
        if diversity:
            raise ValueError("diversity: this model ranks every item by one score; it has no beams to diversify")
        width = self.max_history
        if self.spec.narrow_history:  # the batch's longest history (one column at least)
            width = max(1, min(max(len(q.history) for q in queries), self.max_history))
        padded = left_padded(queries, self.max_history, width=width)
        return self.search_dense(padded, k, excluded=[q.excluded for q in queries])

    def scores(self, histories: np.ndarray) -> np.ndarray:
        """(B, S) left-padded dense ids (S <= max_history) -> (B, n_items + 1) log-probabilities as the graph gives."""
        histories = np.asarray(histories, dtype=np.int64)[:, -self.max_history :]
        if histories.shape[1] < self.max_history and not self.spec.narrow_history:  # the graph's fixed width
            histories = np.pad(histories, ((0, 0), (self.max_history - histories.shape[1], 0)))
        scores = np.asarray(self.scorer.run(["scores"], {"history": histories})[0])
        if np.isnan(scores).any() or np.isposinf(scores).any():
            raise NonFiniteOutput(f"{self.artifact.path}: the scorer answered non-finite scores")
        return scores

    def search_dense(
        self, histories: np.ndarray, k: int, beam_width: int = 0, excluded: Sequence[np.ndarray] | None = None
    ) -> SearchResult:
        """Top ``k`` for (B, S) left-padded dense-id histories; the signature of the beam search's, which
        evaluation calls (``beam_width`` does not apply)."""
        return top_k_allowed(self.scores(histories), k, excluded, self.tie_order)
