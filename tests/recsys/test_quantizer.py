"""Semantic IDs: collision accounting, unique codes after the dedup code, and both quantisers on real embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arcast_core.trie import PrefixTrie
from recsys.quantizer import (
    RQVAE,
    QuantizerConfig,
    RQVAEConfig,
    SemanticIds,
    append_dedup_code,
    code_stats,
    quantise,
    residual_kmeans,
)


def test_dedup_code_numbers_items_within_each_collision_group() -> None:
    codes = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 4], [0, 0, 0], [1, 2, 3]])
    full = append_dedup_code(codes)
    assert full[:, 3].tolist() == [0, 1, 0, 0, 2]  # the third item with (1, 2, 3) gets 2
    assert len(np.unique(full, axis=0)) == 5


def test_collision_accounting() -> None:
    codes = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 4], [0, 0, 0], [1, 2, 3]])
    stats = code_stats(codes, (2, 4, 5))
    assert stats.unique_prefixes == 3
    assert stats.collision_rate == pytest.approx(0.4)  # 2 of 5 items repeat a code tuple already taken
    assert stats.colliding_items == pytest.approx(0.6)  # 3 of 5 items are in a group of two or more
    assert stats.max_group == 3
    assert stats.codebook_usage == pytest.approx((1.0, 0.5, 0.6))
    assert stats.perplexity[0] == pytest.approx(np.exp(-(0.2 * np.log(0.2) + 0.8 * np.log(0.8))))
    ids = SemanticIds.from_codes(codes, (2, 4, 5))
    assert ids.level_sizes == (2, 4, 5, 3)  # the dedup level is as large as the largest group
    no_collision = code_stats(np.arange(6).reshape(3, 2), (6, 6))
    assert no_collision.collision_rate == 0 and no_collision.max_group == 1


@pytest.fixture(scope="module")
def title_like_embeddings() -> np.ndarray:
    """800 items on a curved 6-dimensional manifold in 32 dimensions plus noise: structure to quantise."""
    rng = np.random.default_rng(0)
    z, w = rng.normal(size=(800, 6)), rng.normal(size=(6, 32))
    return (np.tanh(z @ w / 2) + 0.05 * rng.normal(size=(800, 32))).astype(np.float32)


@pytest.mark.parametrize("method", ["rkmeans", "rqvae"])
def test_every_item_gets_a_unique_code(title_like_embeddings: np.ndarray, method: str) -> None:
    config = QuantizerConfig(
        method=method,
        level_sizes=(16, 16, 16),
        rqvae=RQVAEConfig(hidden=(64,), latent_dim=16, steps=None, epochs=40, batch_size=128),
    )
    ids, report = quantise(title_like_embeddings, config)
    assert ids.codes.shape == (800, 4)
    assert len(np.unique(ids.codes, axis=0)) == 800
    PrefixTrie.from_codes(ids.codes, ids.level_sizes)  # the trie accepts them: unique and within the sizes
    # Collision rate agrees with the dedup column: items with a non-zero extra code are the repeats.
    assert report["collision_rate"] == pytest.approx(np.mean(ids.codes[:, 3] > 0))
    assert report["codebook_usage"][0] >= 0.75  # k-means initialisation (and re-seeding) keeps codes alive
    # The first code is a coarse cluster: items sharing it are much closer than items in general.
    x = title_like_embeddings
    spread = ((x - x.mean(0)) ** 2).sum(1).mean()
    first = ids.codes[:, 0]
    within = np.mean([((x[first == c] - x[first == c].mean(0)) ** 2).sum(1).mean() for c in np.unique(first)])
    assert within < 0.75 * spread, (within, spread)
    if method == "rqvae":
        assert report["final_loss"] < report["first_loss"]


def test_rqvae_codebooks_start_from_kmeans(title_like_embeddings: np.ndarray) -> None:
    torch.manual_seed(0)
    x = torch.from_numpy(title_like_embeddings)
    model = RQVAE(32, RQVAEConfig(level_sizes=(16, 8), hidden=(64,), latent_dim=16))
    before = model.encoder(x).detach()
    random_error = (model.quantise(before)[0] - before).pow(2).sum(1).mean()
    model.init_codebooks(x, seed=0)
    init_error = (model.quantise(before)[0] - before).pow(2).sum(1).mean()
    assert init_error < 0.5 * random_error


def test_residual_kmeans_levels_explain_more_and_more(title_like_embeddings: np.ndarray) -> None:
    codes, books = residual_kmeans(title_like_embeddings, (8, 8, 8))
    residual = title_like_embeddings.copy()
    errors = []
    for level, book in enumerate(books):
        residual = residual - book[codes[:, level]]
        errors.append(float((residual**2).sum(1).mean()))
    assert errors[0] > errors[1] > errors[2]


def test_rqvae_vq_terms_sum_over_latent_dimensions(title_like_embeddings: np.ndarray) -> None:
    """The reference weighting: codebook + beta * commitment summed over the latent dimensions, as the
    reconstruction is over the input ones; the earlier recipe averaged them (latent_dim times weaker)."""
    x = torch.from_numpy(title_like_embeddings)
    losses = {}
    for reduction in ("sum", "mean"):
        torch.manual_seed(0)
        model = RQVAE(32, RQVAEConfig(level_sizes=(16, 8), hidden=(64,), latent_dim=16, vq_reduction=reduction))
        z = model.encoder(x)
        losses[reduction] = model.quantise(z)[3].detach()
    assert float(losses["sum"]) == pytest.approx(16 * float(losses["mean"]), rel=1e-5)
    with pytest.raises(ValueError, match="vq_reduction"):
        RQVAEConfig(vq_reduction="max")  # type: ignore[arg-type]


def test_rqvae_trains_for_its_steps_and_reports_how_well_codes_describe_items(
    title_like_embeddings: np.ndarray,
) -> None:
    rq = RQVAEConfig(hidden=(64,), latent_dim=16, steps=300, batch_size=128)
    assert rq.epochs_for(800) == 43  # 7 batches a pass: 43 passes cover 300 steps
    ids, report = quantise(title_like_embeddings, QuantizerConfig("rqvae", (16, 16, 16), rq))
    assert report["steps"] == 43 * 7 and report["vq_reduction"] == "sum"
    assert 0 < report["relative_reconstruction_error"] < 1  # better than every item at the mean
    assert 0 < report["relative_latent_error"] < 1
    assert len(report["codebook_usage"]) == 3 and report["collision_rate"] == ids.stats.collision_rate
    _, kmeans_report = quantise(title_like_embeddings, QuantizerConfig("rkmeans", (16, 16, 16)))
    assert 0 < kmeans_report["relative_reconstruction_error"] < 1
