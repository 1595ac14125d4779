"""Leave-one-out split on real Beauty lines and the dense item-id map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.data import InteractionData, load_sequences
from recsys.split import PADDING_ID, ItemIdMap, leave_one_out


def test_split_of_real_beauty_lines(amazon_data_dir: Path, tmp_path: Path) -> None:
    # The first two lines of the real file, read through the loader.
    lines = (amazon_data_dir / "amazon_beauty" / "sequential_data.txt").read_text().splitlines()[:2]
    assert lines == ["1 1 2 3 4 5", "2 6 7 8 9 10 4 11"]
    path = tmp_path / "two_users.txt"
    path.write_text("\n".join(lines) + "\n")
    split = leave_one_out(load_sequences(path), max_history=20)

    raw_of = split.item_map.raw_ids
    assert split.num_items == 11 and raw_of[PADDING_ID] == -1
    assert raw_of[1:].tolist() == list(range(1, 12))  # raw ids 1..11 are already dense: identity map

    assert [s.tolist() for s in split.train_sequences] == [[1, 2, 3], [6, 7, 8, 9, 10]]
    assert split.validation.targets.tolist() == [4, 4]
    assert split.test.targets.tolist() == [5, 11]
    assert split.validation.history_lists() == [[1, 2, 3], [6, 7, 8, 9, 10]]
    assert split.test.history_lists() == [[1, 2, 3, 4], [6, 7, 8, 9, 10, 4]]
    # Left padding: the most recent item is always in the last column.
    assert split.test.histories.shape == (2, 20)
    assert split.test.histories[0].tolist() == [0] * 16 + [1, 2, 3, 4]


def test_histories_truncate_to_last_20_items_on_full_beauty(beauty: InteractionData) -> None:
    split = leave_one_out(beauty.sequences, max_history=20)
    assert split.num_items == 12101 and len(split.test) == 22363
    longest_user = max(beauty.sequences, key=lambda u: len(beauty.sequences[u]))
    row = int(np.flatnonzero(split.user_ids == longest_user)[0])
    raw = beauty.sequences[longest_user]
    assert len(raw) > 22
    to_raw = split.item_map.to_raw
    assert to_raw(split.test.histories[row]).tolist() == raw[-21:-1]
    assert to_raw(split.validation.histories[row]).tolist() == raw[-22:-2]
    assert to_raw(split.train_sequences[row]).tolist() == raw[:-2]  # training keeps everything
    assert split.item_map.to_raw(split.test.targets[row : row + 1]).tolist() == [raw[-1]]
    # For every user the validation target is the last item of the test history.
    assert np.array_equal(split.test.histories[:, -1], split.validation.targets)
    assert np.all(split.test.histories[:, -4:] != PADDING_ID)  # 5-core: at least 4 items before the target


def test_sparse_raw_ids_are_remapped_densely() -> None:
    split = leave_one_out({7: [100, 5, 42, 5], 9: [42, 8, 100]}, max_history=3)
    assert split.item_map.raw_ids.tolist() == [-1, 5, 8, 42, 100]
    assert split.item_map.dense_of_raw() == {5: 1, 8: 2, 42: 3, 100: 4}
    assert split.test.targets.tolist() == [1, 4]
    assert split.test.histories.tolist() == [[4, 1, 3], [0, 3, 2]]
    assert split.item_map.to_dense([100, 8]).tolist() == [4, 2]
    with pytest.raises(KeyError, match="raw item id 6"):
        split.item_map.to_dense([6])
    with pytest.raises(ValueError, match="dense ids"):
        split.item_map.to_raw(np.array([0]))


def test_users_with_fewer_than_three_items_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"fewer than 3 items, e\.g\. user 2"):
        leave_one_out({1: [1, 2, 3], 2: [4, 5]})


def test_item_map_roundtrip() -> None:
    item_map = ItemIdMap.from_raw_ids([30, 10, 20, 10])
    assert item_map.num_items == 3
    assert item_map.to_raw(item_map.to_dense([20, 30, 10])).tolist() == [20, 30, 10]
