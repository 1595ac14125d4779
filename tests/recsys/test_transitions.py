"""The item-to-item transitions baseline: counts from training only, scores against a plain-loop reference, ties by
popularity, the decay chosen on validation, and on real Beauty users it beats popularity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from recsys.data import InteractionData
from recsys.popularity import evaluate_popularity
from recsys.split import PADDING_ID, LeaveOneOutSplit, leave_one_out
from recsys.transitions import DECAYS, TransitionModel, evaluate_transitions, fit_transitions


def reference_scores(split: LeaveOneOutSplit, histories: np.ndarray, decay: float) -> np.ndarray:
    """The transition part of the scores, by plain loops over the training sequences."""
    size = split.num_items + 1
    counts = np.zeros((size, size))
    for seq in split.train_sequences:
        for a, b in itertools.pairwise(seq):
            counts[a, b] += 1
    out = np.zeros((len(histories), size))
    for u, row in enumerate(histories):
        items = [int(i) for i in row if i != PADDING_ID]
        for k, item in enumerate(reversed(items)):  # k = 0: the most recent
            out[u] += decay**k * counts[item]
    return out


@pytest.fixture(scope="module")
def small_split() -> LeaveOneOutSplit:
    rng = np.random.default_rng(0)
    sequences = {user: rng.integers(100, 130, rng.integers(3, 12)).tolist() for user in range(60)}
    return leave_one_out(sequences, max_history=6)


@pytest.mark.parametrize("decay", [0.0, 0.6, 1.0])
def test_scores_are_decayed_transition_counts_with_popularity_only_breaking_ties(
    small_split: LeaveOneOutSplit, decay: float
) -> None:
    model = TransitionModel.fit(small_split, decay)
    histories = small_split.test.histories
    scores = model.scores(histories)
    expected = reference_scores(small_split, histories, decay)
    assert np.isneginf(scores[:, PADDING_ID]).all()
    longest = int((histories != PADDING_ID).sum(axis=1).max())
    smallest_weight = decay ** (longest - 1) if decay else 1.0
    tie_break = scores[:, 1:] - expected[:, 1:]
    assert np.all(tie_break >= 0) and np.all(tie_break < 0.5 * smallest_weight)  # never one whole count
    # The tie-break is popularity: among items with equal transition scores, the more popular ranks higher.
    popularity = np.bincount(np.concatenate(small_split.train_sequences), minlength=small_split.num_items + 1)
    for u in range(len(histories)):
        tied = np.flatnonzero(expected[u, 1:] == 0) + 1
        order = tied[np.argsort(-scores[u, tied], kind="stable")]
        assert np.all(np.diff(popularity[order]) <= 0)


def test_counts_come_from_training_sequences_only() -> None:
    # User 1's validation and test transitions (7 -> 8 -> 9) appear nowhere in training.
    split = leave_one_out({1: [5, 6, 7, 8, 9], 2: [5, 6, 5, 6, 5]}, max_history=4)
    model = TransitionModel.fit(split)
    dense = split.item_map.dense_of_raw()
    scores = model.scores(split.test.histories)  # neither a transition count nor popularity for 8 and 9
    assert scores[:, dense[9]].max() == 0 and scores[:, dense[8]].max() == 0
    assert model.popularity[dense[8]] == 0 and model.popularity[dense[9]] == 0
    assert model.popularity[dense[5]] == 3  # 5, 6, 7 of user 1 and 5, 6, 5 of user 2


def test_the_decay_is_the_one_that_scores_best_on_validation(small_split: LeaveOneOutSplit) -> None:
    model, chosen = fit_transitions(small_split)
    scores = {float(d): m["ndcg@10"] for d, m in chosen["validation"].items()}
    assert set(scores) == set(DECAYS)
    assert model.decay == chosen["decay"] == max(DECAYS, key=lambda d: scores[d])


def test_on_real_beauty_users_transitions_beat_popularity(beauty: InteractionData) -> None:
    sequences = dict(list(beauty.sequences.items())[:6000])
    split = leave_one_out(sequences)
    metrics, chosen = evaluate_transitions(split, split.test)
    popularity = evaluate_popularity(split, split.test)
    assert chosen["decay"] in DECAYS
    assert metrics["ndcg@10"] > 2 * popularity["ndcg@10"]
    assert metrics["recall@10"] > popularity["recall@10"]
