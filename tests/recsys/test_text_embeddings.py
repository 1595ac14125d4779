"""all-MiniLM-L6-v2 title embeddings: shape, normalisation, meaning, and the on-disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import recsys.text_embeddings as te
from recsys.data import load_beauty_titles

TITLES = [
    "Maybelline Color Sensational Lipstick, Red Revival",
    "Revlon Super Lustrous Lipstick, Certainly Red",
    "Conair 1875 Watt Ionic Hair Dryer",
    "Neutrogena Ultra Sheer Sunscreen SPF 55",
    "OPI Nail Lacquer, Big Apple Red",
]


def test_embeddings_shape_norm_and_meaning(tmp_path: Path) -> None:
    result = te.embed_texts(TITLES, cache_dir=tmp_path)
    vectors = result.vectors
    assert vectors.shape == (5, te.EMBEDDING_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    # Two red lipsticks are closer to each other than a lipstick is to a hair dryer.
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    assert not result.from_cache
    assert result.cache_path.parent == tmp_path / "text_embeddings"
    assert result.cache_path.name.startswith("sentence-transformers__all-MiniLM-L6-v2-")


def test_second_call_is_a_cache_hit_without_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = te.embed_texts(TITLES, cache_dir=tmp_path)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not run on a cache hit")

    monkeypatch.setattr(te, "encode_texts", no_model)
    second = te.embed_texts(TITLES, cache_dir=tmp_path)
    assert second.from_cache and second.cache_path == first.cache_path
    np.testing.assert_array_equal(second.vectors, first.vectors)
    # Any change to the texts (here the order) is a different key, hence a miss.
    with pytest.raises(AssertionError, match="must not run"):
        te.embed_texts(TITLES[::-1], cache_dir=tmp_path)


def test_corrupt_cache_file_is_recomputed(tmp_path: Path) -> None:
    path = te.cache_path_for(TITLES[:2], tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a numpy file")
    result = te.embed_texts(TITLES[:2], cache_dir=tmp_path)
    assert not result.from_cache and result.vectors.shape == (2, te.EMBEDDING_DIM)
    assert np.load(path).shape == (2, te.EMBEDDING_DIM)


def test_cache_dir_defaults_to_cwd_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(te.CACHE_DIR_ENV, raising=False)
    assert te.default_cache_dir() == Path(".arcast-cache")
    monkeypatch.setenv(te.CACHE_DIR_ENV, str(tmp_path))
    assert te.default_cache_dir() == tmp_path


def test_empty_text_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        te.embed_texts(["ok", "  "], cache_dir=tmp_path)


def test_real_beauty_titles_including_placeholders(amazon_data_dir: Path, tmp_path: Path) -> None:
    titles = load_beauty_titles(amazon_data_dir)
    items = [1, 2, 3, *titles.missing_title_item_ids[:2]]
    result = te.embed_item_titles(titles.texts, items, cache_dir=tmp_path)
    assert result.vectors.shape == (5, te.EMBEDDING_DIM)
    assert np.isfinite(result.vectors).all()
    with pytest.raises(KeyError, match="no title"):
        te.embed_item_titles(titles.texts, [999_999], cache_dir=tmp_path)
