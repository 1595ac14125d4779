"""Diverse beam search's selection step (Vijayakumar et al., 2018), shared by the torch and onnxruntime searches.

The beams are split into groups of ``GROUP_BEAMS``; at every level the groups choose in turn, each among the
continuations of its own beams, by their score minus ``penalty`` times the number of earlier groups that chose the
same code at this level (the paper's Hamming diversity). A continuation an earlier group took is not taken twice.
Scores stay the plain summed log-probabilities; only the choice is penalised. At the first level every group
extends the one start beam, so the groups begin on different first codes as the penalty grows.

numpy only: the serving side imports it without torch.
"""

from __future__ import annotations

import numpy as np

GROUP_BEAMS = 2  # beams per group; the number of groups follows from the beam width, never from k


def groups_for(beam_width: int) -> int:
    return max(1, -(-beam_width // GROUP_BEAMS))


def diverse_order(flat: np.ndarray, size: int, beam_width: int, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``flat`` (B, P * size: P current beams' continuations over ``size`` codes, -inf where not
    allowed) of the continuations that survive, group by group, and their (unpenalised) scores, -inf for a group
    left without an allowed continuation: both (B, width), width <= ``beam_width``.

    Group g owns beams [g * GROUP_BEAMS, (g + 1) * GROUP_BEAMS) of the current ones; a group with none of its own
    (the first level, or fewer live beams than groups) chooses among every beam's continuations.
    """
    flat = np.asarray(flat, dtype=np.float32)
    batch, n = flat.shape
    beams = n // size
    rows = np.arange(batch)[:, None]
    counts = np.zeros((batch, size), dtype=np.float32)
    taken = np.zeros((batch, n), dtype=bool)
    chosen, scores = [], []
    left = beam_width
    for g in range(groups_for(beam_width)):
        want = min(GROUP_BEAMS, left)
        left -= want
        own = np.arange(g * GROUP_BEAMS, min((g + 1) * GROUP_BEAMS, beams))
        parents = own if len(own) else np.arange(beams)
        cols = (parents[:, None] * size + np.arange(size)).reshape(-1)
        candidates = flat[:, cols] - penalty * counts[:, cols % size]
        candidates[taken[:, cols]] = -np.inf
        want = min(want, len(cols))
        picked = cols[np.argsort(-candidates, axis=1, kind="stable")[:, :want]]
        live = np.isfinite(np.take_along_axis(flat, picked, axis=1)) & ~taken[rows, picked]
        np.add.at(counts, (np.broadcast_to(rows, picked.shape), picked % size), live.astype(np.float32))
        taken[rows, picked] = True
        chosen.append(picked)
        scores.append(np.where(live, np.take_along_axis(flat, picked, axis=1), -np.inf).astype(np.float32))
        if left == 0:
            break
    return np.concatenate(chosen, axis=1), np.concatenate(scores, axis=1)


def rank_final(scores: np.ndarray) -> np.ndarray:
    """Order of the final beams, best summed log-probability first (ties in beam order): (B, W)."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")
