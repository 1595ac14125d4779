"""The generative recommender: an encoder-decoder transformer over semantic-ID tokens, and its beam search.

Tokens: 0 = padding, 1 = decoder start (BOS), then one token per (level, code): ``2 + offsets[level] + code``, so
the same code at two levels is two tokens. A history of items is the concatenation of their code tokens (each item
``L`` tokens), left-padded so the most recent item always ends the sequence; the decoder reads BOS and the first
``L - 1`` codes of the next item and predicts its ``L`` codes, level ``l``'s distribution being a softmax over that
level's codes only (the other levels' tokens can never be right there).

The layers are written out (pre-LN, T5-like, tied input/output token embeddings) rather than taken from
``torch.nn.Transformer`` so that the decoder has an explicit one-token step with a self-attention KV cache:
``decode_step`` is exactly what the exported decoder graph runs. Shapes in a step: ``(B, W)`` tokens for ``W``
beams of ``B`` users; the self-attention cache is per beam ``(B, W, H, P, hd)``; the cross-attention keys/values
are per user ``(B, H, S, hd)`` and the ``W`` beams are the query axis, so they are never copied per beam.

Stage 2 of PRORec (in-modality distillation) lives here too (:meth:`Generator.distillation_loss`): small heads
pull the decoder's final state (the generated item) and the encoder's per-item states (history items) towards
the items' semantic and collaborative embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arcast_core.diverse_beam import diverse_order, rank_final
from arcast_core.dropout import Dropout  # nn.Dropout with a cheaper CPU mask
from arcast_core.trie import PrefixTrie
from recsys.alignment import info_nce

PAD_TOKEN = 0
BOS_TOKEN = 1
FIRST_CODE_TOKEN = 2
NEG_INF = float("-inf")
EncoderUnit = Literal["token", "item"]


@dataclass(frozen=True)
class GeneratorConfig:
    level_sizes: tuple[int, ...]
    max_history: int = 20
    d_model: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.1
    semantic_dim: int = 0  # width of the semantic embeddings distilled into the model (0: no heads)
    collaborative_dim: int = 0  # likewise for the collaborative embeddings
    # "token": every code token is an encoder position (TIGER). "item": an item's code-token embeddings are summed
    # into one position, so the encoder attends over items: 4x fewer positions, for CPU budgets.
    encoder_unit: EncoderUnit = "token"
    # > 0: a user token (TIGER's hashed user id, ``user_buckets`` of them) before the history in the encoder.
    # Training and the torch search only: the exported graphs take no user input yet.
    user_buckets: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.encoder_unit not in ("token", "item"):
            raise ValueError(f"encoder_unit must be 'token' or 'item', got {self.encoder_unit!r}")
        if len(self.level_sizes) < 1 or min(self.level_sizes) < 1:
            raise ValueError(f"level_sizes must be positive, got {self.level_sizes}")

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Token id of code 0 at each level."""
        return tuple(FIRST_CODE_TOKEN + int(x) for x in np.cumsum((0, *self.level_sizes[:-1])))

    @property
    def vocab_size(self) -> int:
        return FIRST_CODE_TOKEN + sum(self.level_sizes)

    @property
    def max_tokens(self) -> int:
        return self.max_history * self.levels

    @property
    def encoder_positions(self) -> int:
        return self.max_tokens if self.encoder_unit == "token" else self.max_history

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> GeneratorConfig:
        return cls(**{**payload, "level_sizes": tuple(payload["level_sizes"])})


def user_buckets(user_ids: np.ndarray, buckets: int) -> np.ndarray:
    """TIGER's hashed user token: each user id to one of ``buckets`` (a fixed multiplicative hash)."""
    mixed = (np.asarray(user_ids, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    return (mixed % np.uint64(buckets)).astype(np.int64)


def token_table(codes: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    """(n_items + 1, L) token ids of every dense item id (row 0, padding, is all PAD) from codes (n_items, L)."""
    codes = np.asarray(codes, dtype=np.int64)
    table = np.full((len(codes) + 1, config.levels), PAD_TOKEN, dtype=np.int64)
    table[1:] = codes + np.asarray(config.offsets)
    return table


def history_tokens(histories: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Left-padded dense-id histories (B, H) -> left-padded tokens (B, H' * L), leading all-padding items dropped."""
    histories = np.asarray(histories, dtype=np.int64)
    used = np.flatnonzero((histories != 0).any(axis=0))
    start = int(used[0]) if len(used) else histories.shape[1] - 1
    return tokens[histories[:, start:]].reshape(len(histories), -1)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., L, d) -> (..., heads, L, d / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, L, hd) -> (..., L, heads * hd)."""
    return x.transpose(-3, -2).flatten(-2)


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = self.key_value(x).chunk(2, dim=-1)
        return _heads(key, self.heads), _heads(value, self.heads)

    def forward(
        self, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor | None
    ) -> torch.Tensor:
        query = _heads(self.query(x), self.heads)
        scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
        if allowed is not None:
            scores = scores.masked_fill(~allowed, NEG_INF)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return self.out(_merge(weights @ value))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(nn.Linear(d_model, d_ff), nn.GELU(), Dropout(dropout), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model)
        self.attn = Attention(config.d_model, config.heads, config.dropout)
        self.ffn_norm = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.dropout)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.dropout(self.attn(h, *self.attn.keys_values(h), allowed))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(config.d_model)
        self.self_attn = Attention(config.d_model, config.heads, config.dropout)
        self.cross_norm = nn.LayerNorm(config.d_model)
        self.cross_attn = Attention(config.d_model, config.heads, config.dropout)
        self.ffn_norm = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.dropout)
        self.dropout = Dropout(config.dropout)

    def _cross_and_ffn(
        self, x: torch.Tensor, cross_key: torch.Tensor, cross_value: torch.Tensor, memory_allowed: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.dropout(self.cross_attn(self.cross_norm(x), cross_key, cross_value, memory_allowed))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))

    def forward(
        self,
        x: torch.Tensor,
        cross_key: torch.Tensor,
        cross_value: torch.Tensor,
        memory_allowed: torch.Tensor,
        causal: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher-forced: ``x`` (B, T, d) with a causal (T, T) mask."""
        h = self.self_norm(x)
        x = x + self.dropout(self.self_attn(h, *self.self_attn.keys_values(h), causal))
        return self._cross_and_ffn(x, cross_key, cross_value, memory_allowed)

    def step(
        self,
        x: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        cross_key: torch.Tensor,
        cross_value: torch.Tensor,
        memory_allowed: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new token per beam: ``x`` (B, W, d), cache (B, W, H, P, hd) -> (x, cache one position longer)."""
        h = self.self_norm(x).unsqueeze(-2)  # each beam is its own length-1 query
        key, value = self.self_attn.keys_values(h)
        key, value = torch.cat([past_key, key], dim=-2), torch.cat([past_value, value], dim=-2)
        x = x + self.self_attn(h, key, value, None).squeeze(-2)  # the newest token may see every cached one
        return self._cross_and_ffn(x, cross_key, cross_value, memory_allowed), key, value


CrossCache = list[tuple[torch.Tensor, torch.Tensor]]


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.token_embedding = nn.Embedding(config.vocab_size, d, padding_idx=PAD_TOKEN)
        self.encoder_position = nn.Embedding(config.encoder_positions, d)
        self.decoder_position = nn.Embedding(config.levels, d)
        self.user_embedding = nn.Embedding(config.user_buckets, d) if config.user_buckets else None
        self.embedding_dropout = Dropout(config.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.decoder_norm = nn.LayerNorm(d)
        # Stage-2 heads (training only, never exported): decoder's item state / encoder's history-item states.
        self.distill_heads = nn.ModuleDict()
        for name, dim in (("semantic", config.semantic_dim), ("collaborative", config.collaborative_dim)):
            if dim:
                self.distill_heads[f"decoder_{name}"] = nn.Linear(d, dim)
                self.distill_heads[f"encoder_{name}"] = nn.Linear(d, dim)
        self.register_buffer(
            "causal", torch.tril(torch.ones(config.levels, config.levels, dtype=torch.bool)), persistent=False
        )
        self.apply(_init_weights)

    def serving_parameters(self) -> int:
        """Parameters of the exported encoder + decoder (the distillation heads are training-only)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("distill_heads"))

    # --- encoder -----------------------------------------------------------------------------------------------

    def encode(self, tokens: torch.Tensor, users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) left-padded history tokens (S = items * L <= max_tokens) -> memory (B, M, d) and its mask (B, M).

        M = S for token-level encoders, S / L (one position per item) for item-level ones; one more in front with
        a user token (``users``: (B,) bucket ids, required when ``user_buckets`` is set).
        """
        if self.config.encoder_unit == "item":
            items = tokens.unflatten(1, (-1, self.config.levels))
            keep = items[..., 0] != PAD_TOKEN
            x = self.token_embedding(items).sum(dim=2)  # padding tokens embed to zero
        else:
            keep = tokens != PAD_TOKEN
            x = self.token_embedding(tokens)
        length, limit = x.shape[1], self.config.encoder_positions
        positions = torch.arange(limit - length, limit, device=tokens.device)
        x = x + self.encoder_position(positions)
        if self.user_embedding is not None:
            if users is None:
                raise ValueError("this generator has a user token: encode needs the users' bucket ids")
            x = torch.cat([self.user_embedding(users)[:, None], x], dim=1)
            keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
        x = self.embedding_dropout(x)
        allowed = keep[:, None, None, :]
        for layer in self.encoder_layers:
            x = layer(x, allowed)
        return self.encoder_norm(x), keep

    def cross_keys_values(self, memory: torch.Tensor) -> CrossCache:
        """Each decoder layer's cross-attention keys/values (B, H, S, hd): computed once per request."""
        return [layer.cross_attn.keys_values(memory) for layer in self.decoder_layers]

    # --- decoder -----------------------------------------------------------------------------------------------

    def decoder_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """Target codes (B, L) -> decoder input tokens (B, L): BOS then the first L - 1 codes as tokens."""
        offsets = torch.as_tensor(self.config.offsets[:-1], device=codes.device)
        bos = torch.full_like(codes[:, :1], BOS_TOKEN)
        return torch.cat([bos, codes[:, :-1] + offsets], dim=1)

    def decode(self, cross: CrossCache, keep: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder states (B, L, d); position l predicts level l's code."""
        positions = torch.arange(self.config.levels, device=codes.device)
        x = self.embedding_dropout(self.token_embedding(self.decoder_inputs(codes)) + self.decoder_position(positions))
        allowed = keep[:, None, None, :]
        for layer, (key, value) in zip(self.decoder_layers, cross, strict=True):
            x = layer(x, key, value, allowed, self.causal)
        return self.decoder_norm(x)

    def decode_step(
        self,
        tokens: torch.Tensor,
        keep: torch.Tensor,
        cross: CrossCache,
        past: CrossCache,
    ) -> tuple[torch.Tensor, CrossCache]:
        """One decoder step for W beams per user: tokens (B, W) -> logits over the whole vocabulary (B, W, V).

        The step's position is the cache length P (0 for BOS), read from ``past``'s shape.
        """
        position = past[0][0].shape[-2]
        x = self.token_embedding(tokens) + self.decoder_position.weight[position]
        allowed = keep[:, None, None, :]
        present = []
        for layer, (key, value), (past_key, past_value) in zip(self.decoder_layers, cross, past, strict=True):
            x, new_key, new_value = layer.step(x, past_key, past_value, key, value, allowed)
            present.append((new_key, new_value))
        return self.decoder_norm(x) @ self.token_embedding.weight.T, present

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        start = self.config.offsets[level]
        return hidden @ self.token_embedding.weight[start : start + self.config.level_sizes[level]].T

    def empty_cache(self, batch: int, beams: int, device: torch.device | None = None) -> CrossCache:
        shape = (batch, beams, self.config.heads, 0, self.config.head_dim)
        return [(torch.zeros(shape, device=device), torch.zeros(shape, device=device)) for _ in self.decoder_layers]

    # --- losses ------------------------------------------------------------------------------------------------

    def code_loss(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each level's code under that level's softmax."""
        levels = range(codes.shape[1])
        return torch.stack([F.cross_entropy(self.level_logits(hidden[:, i], i), codes[:, i]) for i in levels]).mean()

    def distillation_loss(
        self,
        memory: torch.Tensor,
        hidden: torch.Tensor,
        history_items: torch.Tensor,
        target_items: torch.Tensor,
        targets: DistillationTargets,
    ) -> dict[str, torch.Tensor]:
        """Stage 2: InfoNCE of the decoder's final state against the target items' embeddings (other targets in the
        batch as negatives) and cosine distance of each history item's mean encoder state to its embeddings.

        ``memory`` from :meth:`encode` of the left-padded ``history_items`` (B, items).
        """
        parts: dict[str, torch.Tensor] = {}
        if self.config.user_buckets:
            memory = memory[:, 1:]  # the user token's state
        item_states = memory  # an item-level encoder has one state per item; a token-level one, L of them
        if self.config.encoder_unit == "token":
            item_states = memory.unflatten(1, (-1, self.config.levels)).mean(dim=2)
        real = history_items != 0
        for name, table in (("semantic", targets.semantic), ("collaborative", targets.collaborative)):
            if table is None or f"decoder_{name}" not in self.distill_heads:
                continue
            decoded = self.distill_heads[f"decoder_{name}"](hidden[:, -1])
            parts[f"decoder_{name}"] = info_nce(decoded, table[target_items], targets.temperature, target_items)
            encoded = self.distill_heads[f"encoder_{name}"](item_states[real])
            parts[f"encoder_{name}"] = 1 - F.cosine_similarity(encoded, table[history_items[real]], dim=-1).mean()
        return parts


@dataclass(frozen=True)
class DistillationTargets:
    """Per dense item id (row 0 = padding) embeddings the generator is pulled towards; unit rows are best."""

    semantic: torch.Tensor | None
    collaborative: torch.Tensor | None
    temperature: float = 0.1


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


# --- constrained beam search (torch) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BeamResult:
    """Per user, best first: dense item ids (0 where fewer items were reachable), log-probability scores, codes."""

    items: np.ndarray  # (B, k)
    scores: np.ndarray  # (B, k) float32, -inf where items is 0
    codes: np.ndarray  # (B, k, L)


@torch.no_grad()
def beam_search(
    model: Generator,
    tokens: torch.Tensor,
    trie: PrefixTrie,
    beam_width: int,
    k: int,
    excluded: Sequence[np.ndarray] | None = None,
    diversity: float = 0.0,
    users: torch.Tensor | None = None,
) -> BeamResult:
    """Top-``k`` real items for each history (B, S) by beam search over codes, pruned by ``trie``.

    Every step keeps the ``beam_width`` best (beam, code) continuations by summed log-probability, ordered by score
    then by (beam, code) index, a rule the onnxruntime search in ``serving/runners/constrained_beam.py`` reproduces
    exactly.
    ``excluded[b]``: dense ids user ``b`` must not get. ``diversity`` > 0: diverse beam search
    (``arcast_core.diverse_beam``, as the served search), the final beams ranked by summed log-probability.
    """
    if not 1 <= k <= beam_width:
        raise ValueError(f"need 1 <= k <= beam_width, got k={k}, beam_width={beam_width}")
    model.eval()
    config = model.config
    device = tokens.device
    batch = tokens.shape[0]
    memory, keep = model.encode(tokens, users)
    cross = model.cross_keys_values(memory)
    past = model.empty_cache(batch, 1, device)
    step_tokens = torch.full((batch, 1), BOS_TOKEN, dtype=torch.long, device=device)
    nodes = np.zeros((batch, 1), dtype=np.int64)
    scores = torch.zeros(batch, 1, device=device)
    codes = np.zeros((batch, 1, 0), dtype=np.int64)
    rows = np.arange(batch)[:, None]
    for level, size in enumerate(config.level_sizes):
        logits, present = model.decode_step(step_tokens, keep, cross, past)
        start = config.offsets[level]
        log_probs = torch.log_softmax(logits[..., start : start + size], dim=-1)
        child, ok = trie.allowed(level, nodes, excluded)
        ok &= np.isfinite(scores.cpu().numpy())[..., None]  # a dead beam has no continuation
        candidates = (scores[..., None] + log_probs).masked_fill(~torch.from_numpy(ok).to(device), NEG_INF)
        flat = candidates.reshape(batch, -1)
        if diversity > 0:
            order_np, chosen = diverse_order(flat.cpu().numpy(), size, beam_width, diversity)
            scores = torch.from_numpy(chosen).to(device)
        else:
            width = min(beam_width, flat.shape[1])
            order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :width]
            scores = flat.gather(1, order)
            order_np = order.cpu().numpy()
        parent, code = order_np // size, order_np % size
        nodes = child[rows, parent, code]
        nodes[~np.isfinite(scores.cpu().numpy())] = 0  # any valid index: its beam is masked from now on
        codes = np.concatenate([codes[rows, parent], code[..., None]], axis=2)
        parent_t = torch.from_numpy(parent).to(device)
        past = [(key[rows, parent_t], value[rows, parent_t]) for key, value in present]
        step_tokens = torch.from_numpy(code + start).to(device)
    if diversity > 0:  # the groups' beams, best first
        rank = rank_final(scores.cpu().numpy())
        scores = torch.from_numpy(np.take_along_axis(scores.cpu().numpy(), rank, axis=1)).to(device)
        nodes, codes = nodes[rows, rank], codes[rows, rank]
    final = scores[:, :k].cpu().numpy().astype(np.float32)
    items = np.where(np.isfinite(final), nodes[:, :k], 0)
    return BeamResult(items=items, scores=final, codes=codes[:, :k])


def recommend(
    model: Generator,
    histories: np.ndarray,
    token_lookup: np.ndarray,
    trie: PrefixTrie,
    k: int,
    beam_width: int,
    exclude_history: bool = False,
    batch_size: int = 256,
    diversity: float = 0.0,
    user_ids: np.ndarray | None = None,
) -> BeamResult:
    """Beam search over left-padded dense-id ``histories`` (n, H) in batches of similar length, in input order.

    ``user_ids`` (n,): the users' raw ids, for a generator with a user token."""
    device = next(model.parameters()).device
    histories = np.asarray(histories)
    order = np.argsort((histories != 0).sum(axis=1), kind="stable")  # short histories together: less padding
    parts = []
    for start in range(0, len(order), batch_size):
        chunk = histories[order[start : start + batch_size]]
        tokens = torch.from_numpy(history_tokens(chunk, token_lookup)).to(device)
        excluded = [row[row != 0] for row in chunk] if exclude_history else None
        users = None
        if model.config.user_buckets:
            if user_ids is None:
                raise ValueError("this generator has a user token: recommend needs user_ids")
            bucket = user_buckets(np.asarray(user_ids)[order[start : start + batch_size]], model.config.user_buckets)
            users = torch.from_numpy(bucket).to(device)
        parts.append(beam_search(model, tokens, trie, beam_width, k, excluded, diversity, users))
    inverse = np.argsort(order)
    return BeamResult(
        items=np.concatenate([p.items for p in parts])[inverse],
        scores=np.concatenate([p.scores for p in parts])[inverse],
        codes=np.concatenate([p.codes for p in parts])[inverse],
    )
