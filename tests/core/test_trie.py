"""The prefix trie (arcast_core, read by serving too): only real items are reachable, exclusions prune exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from arcast_core.trie import PrefixTrie
from recsys.generator import Generator, GeneratorConfig, beam_search, history_tokens, token_table
from recsys.quantizer import append_dedup_code


def random_codes(n: int, sizes: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Unique codes with many shared prefixes (small codebooks), as a quantiser produces them."""
    rng = np.random.default_rng(seed)
    return append_dedup_code(rng.integers(0, sizes, size=(n, len(sizes))))


def reachable(trie: PrefixTrie, excluded: np.ndarray | None = None) -> set[int]:
    """Every item an exhaustive walk through the allowed children reaches."""
    nodes = np.zeros((1, 1), dtype=np.int64)
    for depth in range(trie.levels):
        child, ok = trie.allowed(depth, nodes, None if excluded is None else [excluded])
        nodes = child[ok][None, :]
    return set(nodes.ravel().tolist())


def test_walk_reaches_exactly_the_items() -> None:
    codes = random_codes(300, (4, 5, 6))
    trie = PrefixTrie.from_codes(codes)
    assert reachable(trie) == set(range(1, 301))
    np.testing.assert_array_equal(trie.items_of(codes), np.arange(1, 301))
    assert trie.items_of(np.array([[9, 0, 0, 0], [0, 0, 0, 99]])).tolist() == [-1, -1]  # no such code tuples


def test_duplicate_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="not unique"):
        PrefixTrie.from_codes(np.array([[0, 1], [0, 1]]))
    with pytest.raises(ValueError, match="lie in"):
        PrefixTrie.from_codes(np.array([[0, 5]]), level_sizes=(2, 2))


def test_exclusion_prunes_whole_prefixes_and_counts_repeats_once() -> None:
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    trie = PrefixTrie.from_codes(codes)
    # Items 1 and 2 are the only ones under prefix (0, 0): excluding both closes that branch one level early.
    _, ok = trie.allowed(1, np.array([[trie.children[0][0, 0]]]), [np.array([1, 2, 2, 1])])
    assert ok[0, 0].tolist() == [False, True]
    _, ok = trie.allowed(0, np.zeros((1, 1), np.int64), [np.array([4])])
    assert ok[0, 0].tolist() == [True, False]  # item 4 was all of prefix (1,)
    # An item listed twice (a repeated purchase) must not hide its sibling.
    assert reachable(trie, np.array([1, 1, 1])) == {2, 3, 4}
    assert reachable(trie, np.array([0, 99, 3])) == {1, 2, 4}  # padding and unknown ids are ignored


def test_random_exclusions_match_set_difference() -> None:
    codes = random_codes(200, (3, 4, 5), seed=1)
    trie = PrefixTrie.from_codes(codes)
    rng = np.random.default_rng(2)
    for _ in range(20):
        excluded = rng.integers(1, 201, size=rng.integers(0, 150))
        assert reachable(trie, excluded) == set(range(1, 201)) - set(excluded.tolist())


def test_a_saved_trie_reads_back_identically(tmp_path: Path) -> None:  # the file the served artifact carries
    codes = random_codes(400, (6, 6, 6), seed=3)
    trie = PrefixTrie.from_codes(codes)
    trie.save(tmp_path / "trie.npz")
    again = PrefixTrie.load(tmp_path / "trie.npz")
    rng = np.random.default_rng(4)
    nodes = np.zeros((3, 1), np.int64)
    excluded = [rng.integers(1, 401, 30) for _ in range(3)]
    for depth in range(trie.levels):
        expected = trie.allowed(depth, nodes, excluded)
        got = again.allowed(depth, nodes, excluded)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        child, ok = expected
        # Continue from up to 4 allowed children of every user.
        nodes = np.stack([child[g][ok[g]][:4] for g in range(3)])


@pytest.mark.parametrize("exclude", [False, True])
def test_beam_search_only_returns_real_unexcluded_items(exclude: bool) -> None:
    codes = random_codes(150, (5, 5, 5), seed=5)
    trie = PrefixTrie.from_codes(codes)
    torch.manual_seed(0)
    config = GeneratorConfig(level_sizes=tuple(int(s) for s in codes.max(0) + 1), d_model=16, heads=2, d_ff=32)
    model = Generator(config).eval()
    rng = np.random.default_rng(6)
    histories = rng.integers(0, 151, size=(8, 20))
    histories[:, -1] = rng.integers(1, 151, size=8)
    excluded = [h[h != 0] for h in histories] if exclude else None
    tokens = torch.from_numpy(history_tokens(histories, token_table(codes, config)))
    result = beam_search(model, tokens, trie, beam_width=30, k=30, excluded=excluded)
    for b in range(8):
        items = result.items[b]
        assert set(items.tolist()) <= set(range(1, 151)) and len(set(items.tolist())) == 30
        np.testing.assert_array_equal(result.codes[b], codes[items - 1])  # each code tuple is that item's
        assert np.all(np.diff(result.scores[b]) <= 0)
        if exclude:
            assert not set(items.tolist()) & set(excluded[b].tolist())  # type: ignore[index]


def test_beam_search_returns_fewer_items_when_fewer_are_allowed() -> None:
    codes = random_codes(6, (2, 2, 2), seed=7)
    trie = PrefixTrie.from_codes(codes)
    torch.manual_seed(0)
    config = GeneratorConfig(level_sizes=tuple(int(s) for s in codes.max(0) + 1), d_model=16, heads=2, d_ff=32)
    model = Generator(config).eval()
    tokens = torch.from_numpy(history_tokens(np.array([[1, 2]]), token_table(codes, config)))
    result = beam_search(model, tokens, trie, beam_width=10, k=10, excluded=[np.array([1, 2])])
    assert sorted(result.items[0][:4].tolist()) == [3, 4, 5, 6]
    assert result.items[0][4:].tolist() == [0] * 6 and np.isneginf(result.scores[0][4:]).all()
