"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A causal Transformer encoder over the item history; the hidden state at each position is scored against the
(shared) item embedding table to predict the next item. Blocks follow the paper's reference code: layer norm on
the attention query, residual attention, layer norm, point-wise feed-forward with residual, final layer norm.

Two training losses:
- ``"bce"``: binary cross-entropy with one sampled negative per position, as in the paper and the SASRec rows of
  the TIGER / PRORec tables.
- ``"ce"``: softmax cross-entropy over all items, known to be much stronger on Beauty (shared/ANCHORS.md).

Inputs are left-padded with item 0 so the most recent item is always at the last position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from arcast_core.dropout import Dropout  # nn.Dropout with a cheaper CPU mask

PADDING_ID = 0
Loss = Literal["ce", "bce"]


@dataclass(frozen=True)
class SASRecConfig:
    num_items: int
    max_len: int = 20
    hidden: int = 64
    num_layers: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    loss: Loss = "ce"

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError("num_items must be positive")
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by num_heads ({self.num_heads})")
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', got {self.loss!r}")


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, query: torch.Tensor, context: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = query.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)

        key, value = self.key_value(context).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(
            heads(self.query(query)),
            heads(key),
            heads(value),
            attn_mask=allowed[:, None],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(attended.transpose(1, 2).reshape(batch, length, hidden))


class SASRecBlock(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        self.attn = CausalSelfAttention(config.hidden, config.num_heads, config.dropout)
        self.ffn_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden),
            Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        query = self.attn_norm(x)
        x = query + self.attn(query, x, allowed)
        x = self.ffn_norm(x)
        x = x + self.ffn(x)
        return x * keep  # padding positions stay zero so they never feed later layers


class SASRec(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(config.num_items + 1, config.hidden, padding_idx=PADDING_ID)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden)
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        self.register_buffer(
            "causal", torch.tril(torch.ones(config.max_len, config.max_len, dtype=torch.bool)), persistent=False
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """``(batch, L)`` left-padded item ids with L <= max_len -> ``(batch, L, hidden)`` hidden states."""
        length = items.shape[1]
        if length > self.config.max_len:
            items = items[:, -self.config.max_len :]
            length = self.config.max_len
        keep = (items != PADDING_ID).unsqueeze(-1).float()
        positions = torch.arange(self.config.max_len - length, self.config.max_len, device=items.device)
        x = self.item_embedding(items) * math.sqrt(self.config.hidden) + self.position_embedding(positions)
        x = self.embedding_dropout(x) * keep
        # Causal attention to real items only; the diagonal stays allowed so padding rows never see an empty row.
        causal = self.causal[-length:, -length:]
        allowed = causal & (items != PADDING_ID)[:, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=items.device)
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.final_norm(x)

    def score_all(self, histories: torch.Tensor) -> torch.Tensor:
        """Scores of every item as the next one after each history: ``(batch, num_items + 1)``, column 0 = -inf."""
        last = self.encode(histories)[:, -1]
        scores = last @ self.item_embedding.weight.T
        scores[:, PADDING_ID] = -torch.inf
        return scores

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Next-item loss over the non-padding target positions of ``(batch, L)`` input/target windows."""
        hidden = self.encode(inputs)
        mask = targets != PADDING_ID
        hidden, positives = hidden[mask], targets[mask]  # only real positions: saves the big logits matrix on padding
        if self.config.loss == "ce":
            logits = hidden @ self.item_embedding.weight.T
            logits[:, PADDING_ID] = -torch.inf
            return F.cross_entropy(logits, positives)
        negatives = sample_negatives(inputs, targets, self.config.num_items, generator)[mask]
        pos_logits = (hidden * self.item_embedding(positives)).sum(-1)
        neg_logits = (hidden * self.item_embedding(negatives)).sum(-1)
        return F.binary_cross_entropy_with_logits(
            torch.cat([pos_logits, neg_logits]),
            torch.cat([torch.ones_like(pos_logits), torch.zeros_like(neg_logits)]),
        )


def sample_negatives(
    inputs: torch.Tensor, targets: torch.Tensor, num_items: int, generator: torch.Generator | None, max_rounds: int = 10
) -> torch.Tensor:
    """One uniform negative per position, not among the items of that row's window.

    The reference code excludes the user's whole training history; the window is that history whenever it fits in
    ``max_len + 1`` items (nearly every Beauty user), and otherwise its recent part.

    ``generator`` (a CPU generator, or None for the global one) makes the draws reproducible on any device.
    Rejection sampling: with windows of ~20 items out of thousands, nearly every draw is accepted at once; a draw
    still clashing after ``max_rounds`` is kept (only conceivable with a tiny catalogue).
    """
    seen = torch.cat([inputs, targets], dim=1)

    def draw(shape: torch.Size) -> torch.Tensor:
        return torch.randint(1, num_items + 1, shape, generator=generator).to(targets.device)

    negatives = draw(targets.shape)
    for _ in range(max_rounds):
        clash = (negatives[:, :, None] == seen[:, None, :]).any(-1)
        if not clash.any():
            break
        negatives[clash] = draw(torch.Size([int(clash.sum())]))
    return negatives
