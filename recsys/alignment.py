"""PRORec stage 1: cross-modality alignment of collaborative item embeddings with semantic (title) embeddings.

A SASRec learns next-item prediction (its item embedding table is the collaborative embedding) and, in the same
loss, an InfoNCE term that makes each item's collaborative embedding pick out its own title embedding among the
other items of the batch. Only the semantic side goes through a projection (a small MLP from MiniLM's 384
dimensions to SASRec's width): the collaborative vectors themselves must carry the semantics, since they are what
gets quantised; a projection on their side could absorb the alignment and leave them unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arcast_core.runtime import seed_everything
from arcast_core.training import TrainConfig
from recsys.models.sasrec import PADDING_ID, SASRec, SASRecConfig
from recsys.split import LeaveOneOutSplit
from recsys.training import TrainResult, train_sasrec

NEG_INF = float("-inf")


@dataclass(frozen=True)
class AlignmentConfig:
    weight: float = 0.5  # of the InfoNCE term against the next-item cross-entropy
    temperature: float = 0.1
    max_items: int = 2048  # items per batch in the contrastive term (a random subset beyond that)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float, ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between matched rows of ``queries`` and ``keys`` (cosine similarity / temperature).

    Rows with equal ``ids`` (the same item twice in a batch) are not used as each other's negatives.
    """
    q, k = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    logits = q @ k.T / temperature
    same = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)
    logits = logits.masked_fill(same, NEG_INF)
    labels = torch.arange(len(ids), device=ids.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class AlignedSASRec(SASRec):
    """SASRec whose loss adds ``weight * InfoNCE(collaborative embedding, projected title embedding)``."""

    def __init__(self, config: SASRecConfig, semantic: np.ndarray, alignment: AlignmentConfig) -> None:
        super().__init__(config)
        if semantic.shape[0] != config.num_items:
            raise ValueError(f"{semantic.shape[0]} semantic rows for {config.num_items} items")
        self.alignment = alignment
        table = torch.zeros(config.num_items + 1, semantic.shape[1])
        table[1:] = torch.as_tensor(semantic, dtype=torch.float32)
        self.register_buffer("semantic", table, persistent=False)
        width = semantic.shape[1]
        self.semantic_projection = nn.Sequential(
            nn.Linear(width, 2 * config.hidden), nn.GELU(), nn.Linear(2 * config.hidden, config.hidden)
        )
        self.last_terms: dict[str, float] = {}

    def alignment_loss(self, items: torch.Tensor) -> torch.Tensor:
        return info_nce(
            self.item_embedding(items),
            self.semantic_projection(self.semantic[items]),
            self.alignment.temperature,
            items,
        )

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        next_item = super().loss(inputs, targets, generator)
        items = torch.unique(torch.cat([inputs, targets], dim=1))
        items = items[items != PADDING_ID]
        if len(items) > self.alignment.max_items:
            pick = torch.randperm(len(items), generator=generator)[: self.alignment.max_items]
            items = items[pick.to(items.device)]
        aligned = self.alignment_loss(items)
        self.last_terms = {"next_item": float(next_item.detach()), "alignment": float(aligned.detach())}
        return next_item + self.alignment.weight * aligned


def train_aligned_sasrec(
    split: LeaveOneOutSplit,
    semantic: np.ndarray,
    model_config: SASRecConfig,
    train_config: TrainConfig,
    alignment: AlignmentConfig,
) -> TrainResult:
    """Stage 1: SASRec + alignment, selected on validation NDCG@10 of next-item prediction (as plain SASRec)."""
    seed_everything(train_config.seed)  # the model's initialisation, like train_sasrec's own
    model = AlignedSASRec(model_config, semantic, alignment)
    return train_sasrec(split, model_config, train_config, model=model)


def collaborative_embeddings(model: SASRec) -> np.ndarray:
    """The item embedding table without the padding row: (num_items, hidden), row i = dense id i + 1."""
    return model.item_embedding.weight.detach()[1:].cpu().numpy().astype(np.float32)


@torch.no_grad()
def alignment_report(
    collaborative: np.ndarray, semantic: np.ndarray, sample: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Model-free check of how much the collaborative space agrees with the semantic one, on a sample of items.

    ``neighbour_overlap@10``: mean share of an item's 10 nearest neighbours (cosine) in the collaborative space that
    are also among its 10 nearest in the title space; comparable between aligned and plain embeddings, as no
    projection is involved. ``cka``: linear centred kernel alignment of the two spaces over the sample.
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(collaborative), size=min(sample, len(collaborative)), replace=False)
    c = _unit(collaborative[pick])
    s = _unit(semantic[pick])

    def neighbours(x: np.ndarray) -> np.ndarray:
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :10]

    nc, ns = neighbours(c), neighbours(s)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nc, ns, strict=True)])
    cc, sc = c - c.mean(0), s - s.mean(0)
    cross = np.linalg.norm(cc.T @ sc) ** 2
    cka = cross / (np.linalg.norm(cc.T @ cc) * np.linalg.norm(sc.T @ sc))
    return {"neighbour_overlap@10": float(overlap), "cka": float(cka), "items": len(pick)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
