"""Diverse beam search's selection step: groups in turn, a penalty per earlier group on the same code."""

from __future__ import annotations

import numpy as np

from arcast_core.diverse_beam import GROUP_BEAMS, diverse_order, groups_for, rank_final


def test_without_penalty_the_first_level_keeps_the_best_codes() -> None:
    flat = np.log(np.array([[0.4, 0.3, 0.2, 0.1]], dtype=np.float32))  # one start beam, four codes
    order, scores = diverse_order(flat, 4, beam_width=4, penalty=0.0)
    assert groups_for(4) == 2 and GROUP_BEAMS == 2
    assert order.tolist() == [[0, 1, 2, 3]] and np.allclose(scores, flat)


def test_the_penalty_moves_later_groups_to_other_codes() -> None:
    # Two live beams per group, three codes; every beam prefers code 0, then code 1.
    probs = np.array([0.7, 0.2, 0.1], dtype=np.float32)
    flat = np.log(np.tile(probs, 4))[None, :]  # beams 0-1 are group 0, beams 2-3 group 1
    plain, _ = diverse_order(flat, 3, beam_width=4, penalty=0.0)
    assert (plain % 3).tolist() == [[0, 0, 0, 0]]  # every group takes code 0
    diverse, scores = diverse_order(flat, 3, beam_width=4, penalty=5.0)
    assert (diverse[0, :2] % 3).tolist() == [0, 0] and set((diverse[0, 2:] % 3).tolist()) == {1}
    assert (diverse[0, 2:] // 3).tolist() == [2, 3]  # group 1 extends its own beams
    assert np.allclose(scores, flat[0, diverse[0]])  # scores stay the plain log-probabilities
    assert rank_final(scores).tolist() == [[0, 1, 2, 3]]


def test_a_continuation_is_never_taken_twice_and_dead_ends_stay_dead() -> None:
    flat = np.array([[0.0, -1.0, -np.inf]], dtype=np.float32)  # one start beam, two allowed codes
    order, scores = diverse_order(flat, 3, beam_width=4, penalty=1.0)
    assert sorted(order[0, np.isfinite(scores[0])].tolist()) == [0, 1]  # two real beams, no duplicates
    assert np.isinf(scores[0]).sum() == 2
