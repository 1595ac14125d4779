"""Which item embedding each variant quantises into semantic IDs (the ablations of one harness).

- ``tiger``: the title embedding alone (TIGER).
- ``collab``: the collaborative embedding alone (a plain SASRec's item table).
- ``concat``: raw title and raw, unaligned collaborative embeddings side by side. Nothing balances the two: the
  384 title dimensions outweigh SASRec's few dozen in every distance the quantiser computes ("semantic
  domination"), so the codes follow the text.
- ``prorec``: the stage-1 aligned collaborative embedding and the title embedding, each scaled to unit length, then
  concatenated. Unit length gives both halves the same weight in the quantiser's distances whatever their widths
  (fixing the imbalance of ``concat``) and needs no further training, unlike a learned fusion that would have to
  be fitted against some target; the alignment has already made the collaborative half agree with the text, so
  the halves reinforce rather than fight each other.

Only ``prorec`` distils the embeddings into the generator (stage 2); the others are their papers' plain recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from recsys.quantizer import QuantizerConfig, SemanticIds, quantise

Variant = Literal["tiger", "collab", "concat", "prorec"]
VARIANTS: tuple[str, ...] = get_args(Variant)
# The embeddings each variant needs: "semantic" (titles), "collaborative" (plain SASRec), "aligned" (stage 1).
NEEDS: dict[str, tuple[str, ...]] = {
    "tiger": ("semantic",),
    "collab": ("collaborative",),
    "concat": ("semantic", "collaborative"),
    "prorec": ("semantic", "aligned"),
}


@dataclass(frozen=True)
class ItemEmbeddings:
    """Row i of each matrix belongs to dense item id i + 1; absent matrices are None."""

    semantic: np.ndarray | None = None
    collaborative: np.ndarray | None = None
    aligned: np.ndarray | None = None

    def require(self, variant: str) -> None:
        missing = [name for name in NEEDS[check_variant(variant)] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"variant {variant!r} needs the {' and '.join(missing)} embeddings")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return variant


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def variant_embedding(variant: str, embeddings: ItemEmbeddings) -> np.ndarray:
    """The (n_items, dim) matrix the variant quantises."""
    embeddings.require(variant)
    e = embeddings
    if variant == "tiger":
        return np.asarray(e.semantic, dtype=np.float32)
    if variant == "collab":
        return np.asarray(e.collaborative, dtype=np.float32)
    if variant == "concat":
        return np.hstack([e.semantic, e.collaborative]).astype(np.float32)
    return np.hstack([unit_rows(e.aligned), unit_rows(e.semantic)])  # type: ignore[arg-type]


def distillation_embeddings(variant: str, embeddings: ItemEmbeddings) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(semantic, collaborative) embeddings stage 2 pulls the generator towards; (None, None) but for prorec."""
    if variant != "prorec":
        return None, None
    embeddings.require(variant)
    return unit_rows(embeddings.semantic), unit_rows(embeddings.aligned)  # type: ignore[arg-type]


def build_semantic_ids(
    variant: str, embeddings: ItemEmbeddings, config: QuantizerConfig
) -> tuple[SemanticIds, dict[str, object]]:
    """Unique codes of every item for ``variant`` and the quantiser's report (usage, collisions)."""
    ids, report = quantise(variant_embedding(variant, embeddings), config)
    return ids, {"variant": variant, **report}
