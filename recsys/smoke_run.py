"""A small generator trained in seconds, for checks that need a real exported recommender but not a good one.

The GPU script's provider parity and the test suite both export it: collaborative codes from random item vectors
(residual k-means, 16 x 16 x 16), a 2-layer decoder of width 32, one epoch on a popular-items slice of Beauty.
It is peaked enough after that epoch that ties between beams are rare, which parity checks need.
"""

from __future__ import annotations

import numpy as np

from recsys.prorec_training import (
    GeneratorShape,
    GeneratorTrainConfig,
    PRORecRun,
    popular_items_slice,
    sequences_fingerprint,
    train_generator,
)
from recsys.quantizer import QuantizerConfig
from recsys.semantic_ids import ItemEmbeddings, build_semantic_ids
from recsys.split import LeaveOneOutSplit, leave_one_out

SMOKE_SLICE = {"top_items": 500, "max_users": 4000}


def smoke_slice(sequences: dict[int, list[int]]) -> tuple[dict[int, list[int]], LeaveOneOutSplit]:
    """The popular-items slice of ``sequences`` (``SMOKE_SLICE``) and its leave-one-out split: what the smoke run
    trains on."""
    sliced = popular_items_slice(sequences, **SMOKE_SLICE)
    return sliced, leave_one_out(sliced, max_history=20)


def train_smoke_run(
    sequences: dict[int, list[int]], dataset: str = "beauty", seed: int = 0
) -> tuple[LeaveOneOutSplit, PRORecRun]:
    """The slice of ``sequences`` split leave-one-out, and the generator trained on it (titles are placeholders)."""
    sliced, split = smoke_slice(sequences)
    rng = np.random.default_rng(seed)
    embeddings = ItemEmbeddings(collaborative=rng.normal(size=(split.num_items, 16)).astype(np.float32))
    ids, _ = build_semantic_ids("collab", embeddings, QuantizerConfig(method="rkmeans", level_sizes=(16, 16, 16)))
    shape = GeneratorShape(d_model=32, heads=4, d_ff=64, encoder_layers=1, decoder_layers=2, encoder_unit="token")
    fit = train_generator(split, ids, shape, GeneratorTrainConfig(epochs=1, eval_users=200, seed=seed, progress=False))
    info = {
        "dataset": dataset,
        "variant": "collab",
        "data": {"dataset": dataset, "slice": SMOKE_SLICE},
        "data_fingerprint": sequences_fingerprint(sliced),
        "config": {"train": {"beam_width": 20}},
        "metrics": {"validation_sample": fit.best_validation},
    }
    titles = ["", *(f"item {raw}" for raw in split.item_map.raw_ids[1:])]
    return split, PRORecRun(fit.model, ids, split.item_map.raw_ids.copy(), embeddings, info, titles)
