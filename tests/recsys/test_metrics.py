"""Recall@K / NDCG@K on cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.metrics import (
    MISS,
    metrics_from_ranks,
    target_ranks_from_ranked_lists,
    target_ranks_from_scores,
)

# Column d scores dense item d; column 0 is padding and must never be ranked, even with the highest score.
SCORES = np.array([[99.0, 0.1, 0.5, 0.3, 0.9, 0.2]])


def test_rank_from_scores_counts_higher_items_only_among_real_items() -> None:
    # Item 3 (0.3) is beaten by item 4 (0.9) and item 2 (0.5): 0-based rank 2.
    assert target_ranks_from_scores(SCORES, np.array([3])).tolist() == [2]
    assert target_ranks_from_scores(SCORES, np.array([4])).tolist() == [0]
    assert target_ranks_from_scores(SCORES, np.array([1])).tolist() == [4]


def test_metrics_from_rank_two() -> None:
    metrics = metrics_from_ranks(np.array([2]), ks=(1, 2, 3, 5))
    assert metrics["recall@1"] == 0.0 and metrics["recall@2"] == 0.0
    assert metrics["recall@3"] == 1.0 and metrics["recall@5"] == 1.0
    assert metrics["ndcg@3"] == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert metrics["ndcg@2"] == 0.0


def test_metrics_average_over_users() -> None:
    ranks = np.array([0, 1, 4, MISS])
    metrics = metrics_from_ranks(ranks, ks=(1, 5, 10))
    assert metrics["recall@1"] == pytest.approx(0.25)
    assert metrics["recall@5"] == pytest.approx(0.75)
    assert metrics["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert metrics["ndcg@10"] == metrics["ndcg@5"]
    assert set(metrics_from_ranks(ranks)) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}


def test_ties_count_against_the_target() -> None:
    # A constant scorer must not look perfect: with 5 items all tied, the target ranks last (4).
    constant = np.zeros((1, 6))
    assert target_ranks_from_scores(constant, np.array([2])).tolist() == [4]


def test_history_is_not_masked_by_default_and_masked_on_request() -> None:
    history = np.array([[0, 0, 4, 2]])  # left-padded
    assert target_ranks_from_scores(SCORES, np.array([3]), history).tolist() == [2]
    assert target_ranks_from_scores(SCORES, np.array([3]), history, exclude_history=True).tolist() == [0]
    # A target that is itself in the history cannot be recommended once history is masked: a miss.
    assert target_ranks_from_scores(SCORES, np.array([4]), history, exclude_history=True).tolist() == [MISS]


def test_scores_accept_tensors_and_reject_bad_targets() -> None:
    assert target_ranks_from_scores(torch.tensor(SCORES), torch.tensor([2])).tolist() == [1]
    with pytest.raises(ValueError, match="dense item ids"):
        target_ranks_from_scores(SCORES, np.array([0]))
    with pytest.raises(ValueError, match="dense item ids"):
        target_ranks_from_scores(SCORES, np.array([6]))
    with pytest.raises(ValueError, match="NaN"):
        target_ranks_from_scores(np.array([[0.0, np.nan, 1.0]]), np.array([1]))


def test_ranked_lists_positions_and_misses() -> None:
    ranked = np.array([[3, 1, 2], [5, 6, 7], [9, 8, 0]])  # 0 pads a list with fewer candidates
    ranks = target_ranks_from_ranked_lists(ranked, [1, 4, 8], max_k=3)
    assert ranks.tolist() == [1, MISS, 1]
    metrics = metrics_from_ranks(ranks, ks=(3,))
    assert metrics["recall@3"] == pytest.approx(2 / 3)
    assert metrics["ndcg@3"] == pytest.approx(2 / 3 / math.log2(3))


def test_ranked_lists_reject_short_lists_and_duplicates() -> None:
    with pytest.raises(ValueError, match="fewer than max_k"):
        target_ranks_from_ranked_lists([[1, 2]], [1], max_k=3)
    with pytest.raises(ValueError, match="duplicate"):
        target_ranks_from_ranked_lists([[1, 2, 1]], [1], max_k=3)


def test_ranked_lists_history_masking() -> None:
    ranked = [[4, 2, 3, 1]]
    assert target_ranks_from_ranked_lists(ranked, [3], max_k=2).tolist() == [2]
    assert target_ranks_from_ranked_lists(ranked, [3], max_k=2, histories=[[4, 2]], exclude_history=True).tolist() == [
        0
    ]
    assert target_ranks_from_ranked_lists(ranked, [4], 2, histories=[[4]], exclude_history=True).tolist() == [MISS]


def test_score_matrix_and_ranked_list_paths_agree() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(64, 101))
    targets = rng.integers(1, 101, size=64)
    masked = scores.copy()
    masked[:, 0] = -np.inf
    top = np.argsort(-masked, axis=1)[:, :20]
    from_scores = np.minimum(target_ranks_from_scores(scores, targets), 20)
    from_lists = np.minimum(target_ranks_from_ranked_lists(top, targets, max_k=20), 20)
    assert from_scores.tolist() == from_lists.tolist()
    assert metrics_from_ranks(from_scores) == metrics_from_ranks(from_lists)


def test_float64_scores_keep_differences_below_float32_resolution() -> None:
    # Item 2 beats item 1 by 1e-12 (a tie-break term): in float32 they tie and the target would count second.
    scores = np.array([[-np.inf, 1.0, 1.0 + 1e-12, 0.5]])
    assert target_ranks_from_scores(scores, np.array([2])).tolist() == [0]
    assert target_ranks_from_scores(scores.astype(np.float32), np.array([2])).tolist() == [1]  # pessimistic tie
