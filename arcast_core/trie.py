"""A prefix trie over the items' semantic IDs, as plain numpy arrays (no torch).

Constrained beam search asks it one question per step: from these trie nodes, which next codes still lead to a
real item (optionally one that is not excluded)? Arrays per depth ``d`` (0 = root, ``L`` levels):

- ``children[d]``: ``(nodes at depth d, level_sizes[d])`` int32, the child reached by each code, -1 where no item
  has that prefix. At the last depth the "child" is the item's dense id itself.
- ``counts[d]``: ``(nodes at depth d,)`` how many items lie under each node.
- ``paths``: ``(n_items + 1, L)`` the node each item passes at every depth (row 0, padding, is -1): with it, the
  items excluded for one user are subtracted from the counts of their own nodes only, so a prefix whose items are
  all excluded is pruned as early as possible instead of wasting a beam.

Saved as one ``.npz`` (``save``/``load``); the serving side reads the same file
(``serving/runners/constrained_beam.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRIE_FORMAT = 1


@dataclass(frozen=True)
class PrefixTrie:
    level_sizes: tuple[int, ...]
    children: tuple[np.ndarray, ...]
    counts: tuple[np.ndarray, ...]
    codes: np.ndarray  # (n_items + 1, L): codes of dense id d in row d; row 0 is -1
    paths: np.ndarray  # (n_items + 1, L)

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    @property
    def n_items(self) -> int:
        return len(self.codes) - 1

    @classmethod
    def from_codes(cls, codes: np.ndarray, level_sizes: Sequence[int] | None = None) -> PrefixTrie:
        """Trie of items 1..N whose codes are the rows of ``codes`` (N, L); every row must be unique."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or len(codes) == 0:
            raise ValueError(f"codes must be a non-empty (n_items, levels) array, got shape {codes.shape}")
        sizes = tuple(int(s) for s in (level_sizes if level_sizes is not None else codes.max(axis=0) + 1))
        if len(sizes) != codes.shape[1]:
            raise ValueError(f"{len(sizes)} level sizes for codes with {codes.shape[1]} levels")
        if codes.min() < 0 or np.any(codes >= np.asarray(sizes)):
            raise ValueError(f"codes must lie in 0..size-1 per level (sizes {sizes})")
        if len(np.unique(codes, axis=0)) != len(codes):
            raise ValueError("codes are not unique: two items share a code tuple (append a dedup code first)")
        n, levels = codes.shape
        items = np.arange(1, n + 1, dtype=np.int64)
        nodes = np.zeros(n, dtype=np.int64)  # every item starts at the root
        paths = np.full((n + 1, levels), -1, dtype=np.int64)
        children, counts = [], []
        n_nodes = 1
        for depth in range(levels):
            paths[1:, depth] = nodes
            counts.append(np.bincount(nodes, minlength=n_nodes).astype(np.int32))
            if depth + 1 < levels:
                _, child = np.unique(codes[:, : depth + 1], axis=0, return_inverse=True)
                child = child.reshape(-1)
            else:
                child = items
            table = np.full((n_nodes, sizes[depth]), -1, dtype=np.int32)
            table[nodes, codes[:, depth]] = child
            children.append(table)
            nodes, n_nodes = child, int(child.max()) + 1
        full_codes = np.vstack([np.full((1, levels), -1, dtype=np.int64), codes])
        return cls(sizes, tuple(children), tuple(counts), full_codes, paths)

    def allowed(
        self, depth: int, nodes: np.ndarray, excluded: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Children and whether each leads to an allowed item, for ``nodes`` (G, W): W beams of each of G users.

        Returns ``(child, ok)``, both ``(G, W, level_sizes[depth])``. ``excluded[g]``: dense item ids that user
        ``g``'s beams must not reach (e.g. the history); ids outside 1..n_items are ignored.
        """
        nodes = np.asarray(nodes, dtype=np.int64)
        if nodes.ndim != 2:
            raise ValueError(f"nodes must be (users, beams), got shape {nodes.shape}")
        child = self.children[depth][nodes]
        exists = child >= 0
        if depth + 1 < self.levels:
            remaining = np.where(exists, self.counts[depth + 1][np.maximum(child, 0)], 0).astype(np.int64)
        else:
            remaining = exists.astype(np.int64)
        if excluded is not None:
            if len(excluded) != len(nodes):
                raise ValueError(f"{len(excluded)} exclusion lists for {len(nodes)} users")
            users, items = _pairs(excluded, self.n_items)
            # (pair, beam): the excluded item lies below that beam's node, so its code's count drops by one.
            under = self.paths[items, depth][:, None] == nodes[users]
            pair, beam = np.nonzero(under)
            np.subtract.at(remaining, (users[pair], beam, self.codes[items[pair], depth]), 1)
        return child, remaining > 0

    def items_of(self, codes: np.ndarray) -> np.ndarray:
        """Dense ids of full code tuples ``(M, L)``; -1 for a tuple that is no item."""
        codes = np.asarray(codes, dtype=np.int64)
        node = np.zeros(len(codes), dtype=np.int64)
        for depth in range(self.levels):
            ok = (node >= 0) & (codes[:, depth] >= 0) & (codes[:, depth] < self.level_sizes[depth])
            code = np.clip(codes[:, depth], 0, self.level_sizes[depth] - 1)
            node = np.where(ok, self.children[depth][np.maximum(node, 0), code], -1)
        return node

    def save(self, path: Path | str) -> None:
        arrays = {f"children_{d}": c for d, c in enumerate(self.children)}
        arrays.update({f"counts_{d}": c for d, c in enumerate(self.counts)})
        with open(path, "wb") as handle:  # a file handle: np.savez would otherwise append ".npz" to the name
            np.savez(
                handle,
                format=np.int64(TRIE_FORMAT),
                level_sizes=np.asarray(self.level_sizes, dtype=np.int64),
                codes=self.codes,
                paths=self.paths,
                **arrays,
            )

    @classmethod
    def load(cls, path: Path | str) -> PrefixTrie:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != TRIE_FORMAT:
                raise ValueError(f"{path}: trie format {int(data['format'])} is not {TRIE_FORMAT}")
            sizes = tuple(int(s) for s in data["level_sizes"])
            children = tuple(data[f"children_{d}"] for d in range(len(sizes)))
            counts = tuple(data[f"counts_{d}"] for d in range(len(sizes)))
            return cls(sizes, children, counts, data["codes"], data["paths"])


def _pairs(excluded: Sequence[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (row, item) pairs of per-row exclusions, dropping padding and ids outside 1..n_items.

    Unique because an item listed twice (a repeated purchase) must be subtracted from its node's count only once.
    """
    lengths = np.fromiter((len(e) for e in excluded), dtype=np.int64, count=len(excluded))
    if not lengths.sum():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(excluded), dtype=np.int64), lengths)
    items = np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1) for e in excluded])
    keep = (items >= 1) & (items <= n_items)
    key = np.unique(rows[keep] * (n_items + 1) + items[keep])
    return key // (n_items + 1), key % (n_items + 1)
