"""Leave-one-out split and the dense item-id space shared by every model.

Protocol (TIGER / PRORec tables, shared/ANCHORS.md): per user, the last item is the test target, the second last
the validation target, the rest is training. Evaluation histories keep the last ``max_history`` (20) items.

Item ids are remapped to a dense ``1..N`` range so that they index embedding tables directly; ``0`` is padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PADDING_ID = 0
DEFAULT_MAX_HISTORY = 20


@dataclass(frozen=True)
class ItemIdMap:
    """Raw item id <-> dense id. ``raw_ids[d]`` is the raw id of dense id ``d``; ``raw_ids[0]`` is -1 (padding)."""

    raw_ids: np.ndarray

    @classmethod
    def from_raw_ids(cls, raw_ids: set[int] | list[int]) -> ItemIdMap:
        # Sorted raw order makes the mapping deterministic (and the identity when raw ids are already 1..N).
        return cls(raw_ids=np.array([-1, *sorted(set(raw_ids))], dtype=np.int64))

    @property
    def num_items(self) -> int:
        """Number of real items N (dense ids 1..N)."""
        return len(self.raw_ids) - 1

    def dense_of_raw(self) -> dict[int, int]:
        return {int(raw): dense for dense, raw in enumerate(self.raw_ids) if dense != PADDING_ID}

    def to_dense(self, raw_items: list[int]) -> np.ndarray:
        lookup = self.dense_of_raw()
        try:
            return np.array([lookup[i] for i in raw_items], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"raw item id {err.args[0]} is not in the item map") from None

    def to_raw(self, dense_items: np.ndarray) -> np.ndarray:
        dense_items = np.asarray(dense_items)
        if np.any(dense_items <= PADDING_ID) or np.any(dense_items > self.num_items):
            raise ValueError(f"dense ids must lie in 1..{self.num_items}")
        return self.raw_ids[dense_items]


@dataclass(frozen=True)
class EvalExamples:
    """One evaluation target per user.

    ``histories`` is ``(users, max_history)`` of dense ids, left-padded with 0 so the most recent item is always in
    the last column; ``targets`` the dense id to predict.
    """

    user_ids: np.ndarray
    histories: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def history_lists(self) -> list[list[int]]:
        """Histories without padding, oldest first (for models that take variable-length input)."""
        return [[int(i) for i in row if i != PADDING_ID] for row in self.histories]


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Training sequences (full, untruncated: models choose their own windows) plus validation and test examples."""

    item_map: ItemIdMap
    user_ids: np.ndarray
    train_sequences: list[np.ndarray]
    validation: EvalExamples
    test: EvalExamples
    max_history: int

    @property
    def num_items(self) -> int:
        return self.item_map.num_items


def left_pad(rows: list[np.ndarray], width: int) -> np.ndarray:
    """Keep each row's last ``width`` entries and left-pad with 0 to a ``(len(rows), width)`` array."""
    out = np.full((len(rows), width), PADDING_ID, dtype=np.int64)
    for r, row in enumerate(rows):
        tail = row[-width:]
        if len(tail):
            out[r, width - len(tail) :] = tail
    return out


def leave_one_out(sequences: dict[int, list[int]], max_history: int = DEFAULT_MAX_HISTORY) -> LeaveOneOutSplit:
    """Split raw-id sequences ``{user: items}``; every user needs at least 3 items (1 train, 1 validation, 1 test)."""
    if max_history < 1:
        raise ValueError(f"max_history must be positive, got {max_history}")
    short = [user for user, items in sequences.items() if len(items) < 3]
    if short:
        raise ValueError(f"{len(short)} user(s) have fewer than 3 items, e.g. user {short[0]}; leave-one-out needs 3")
    item_map = ItemIdMap.from_raw_ids({i for items in sequences.values() for i in items})
    lookup = item_map.dense_of_raw()
    users = np.array(list(sequences), dtype=np.int64)
    dense = [np.array([lookup[i] for i in sequences[int(u)]], dtype=np.int64) for u in users]
    validation = EvalExamples(
        user_ids=users,
        histories=left_pad([seq[:-2] for seq in dense], max_history),
        targets=np.array([seq[-2] for seq in dense], dtype=np.int64),
    )
    test = EvalExamples(
        user_ids=users,
        histories=left_pad([seq[:-1] for seq in dense], max_history),
        targets=np.array([seq[-1] for seq in dense], dtype=np.int64),
    )
    return LeaveOneOutSplit(
        item_map=item_map,
        user_ids=users,
        train_sequences=[seq[:-2] for seq in dense],
        validation=validation,
        test=test,
        max_history=max_history,
    )
