"""Informer (Zhou et al., AAAI 2021): ProbSparse self-attention, self-attention distilling, generative decoder.

Follows the paper and its official code (zhouhaoyi/Informer2020) layer by layer:

- embedding: value token embedding (Conv1d, kernel 3, circular padding) + sinusoidal position + a linear
  embedding of the calendar features ("timeF"), then dropout;
- encoder: ``e_layers`` attention layers (ProbSparse or full self-attention, 1x1-conv feed-forward, post-norm)
  with a distilling layer (Conv1d + BatchNorm + ELU + MaxPool stride 2) between them, which halves the
  sequence each time; a tuple ``e_layers`` builds the paper's Informer† "stack of replicas" instead: encoder i
  has ``e_layers[i]`` layers and sees the last L/2^i inputs, and their outputs are concatenated;
- decoder: input = the last ``label_len`` known values + zeros for the horizon; masked ProbSparse
  self-attention (with the official "mix" of heads) + full cross-attention; the whole horizon in one pass.

ProbSparse attention: each query's sparsity measurement M(q, K) = max_j(q k_j) - sum_j(q k_j) / L_K is
estimated on ``sample_k = c * ceil(ln L_K)`` keys, only the ``n_top = c * ceil(ln L_Q)`` queries with the
largest M attend; the others ("lazy" queries) output mean(V) (cumsum(V) in the masked case, as the official
code does).

Determinism: the official code draws the sampled keys with ``torch.randint`` on every call, so an eval or an
exported graph would depend on chance. Here training keeps that random draw (a different key subset per query
and per call, from torch's seeded generator), while eval uses a fixed, evenly spaced key subset shared by all
queries: the centres of ``sample_k`` equal strata of the keys, ``j_k = floor((2k + 1) L_K / (2 sample_k))``.
It is a stratified sample of the same size, computed from static shapes only, so the eval graph is a plain
gather + matmul + topk + scatter with no randomness and no data-dependent control flow (ONNX friendly). When
``sample_k = L_K`` it is every key, i.e. the exact measurement. ``eval_sampling="random"`` restores the
official behaviour in eval (for comparisons; not exportable deterministically).

Deviations from the official code, all documented: the position table is sized to the longest sequence the
model sees instead of 5000 rows (it is a non-persistent buffer, so weights do not change); ``sample_k`` and
``n_top`` are at least 1 (the official code breaks on a sequence of length 1); only the "timeF" time
embedding exists, because the data layer produces the scaled calendar features, not integer calendar fields.

Causality of the decoder: the masked self-attention never lets a selected query attend to later positions and
lazy queries take cumsum(V), so with full attention (or ProbSparse where ``n_top`` covers every query) an
output never depends on later decoder positions' marks. Two facts of the original design limit this: the value
token embedding is a kernel-3 circular convolution (each position sees its neighbours), and ProbSparse's top-u
query selection is a competition across all positions. Neither leaks future targets: the decoder's horizon
inputs are zeros and its marks are known calendar features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from arcast_core.dropout import Dropout  # nn.Dropout with a cheaper CPU mask
from forecasting.data import DataFacts
from forecasting.models.base import ForecastModel, ModelSpec, TinySetup
from forecasting.time_features import feature_names

EvalSampling = Literal["even", "random"]
REVIN_EPS = 1e-5  # keeps a flat window's spread above zero


@dataclass
class InformerConfig:
    """Informer's settings, with the paper's defaults (ETT experiments).

    seq_len / label_len / pred_len: encoder input length, known values fed to the decoder, horizon.
    enc_in / dec_in / c_out: channels in and out (equal here: multivariate or univariate forecasting).
    freq: the data frequency, which fixes the calendar features ("1h": hour, weekday, day, yearday).
    e_layers: an int for one encoder (Informer); a tuple for the stack of replicas (Informer†, official (3, 2, 1)).
    factor: ProbSparse sampling factor c. attn: "prob" (ProbSparse) or "full" for the self-attentions.
    mix: mix the heads of the decoder's self-attention (the official layout). output_attention: keep the
    encoder's attention maps (see ``Informer.forward_with_attention``).
    eval_sampling: "even" (deterministic, default) or "random" (the official draw, also in eval).
    revin: instance normalisation (Kim et al., ICLR 2022, as later papers add to Informer; not in the paper):
    each window is standardised per channel by its own lookback mean and std, the decoder's known values with
    the same statistics, and the forecast mapped back. Off by default, so the faithful model is unchanged.
    """

    seq_len: int = 96
    label_len: int = 48
    pred_len: int = 24
    enc_in: int = 7
    dec_in: int = 7
    c_out: int = 7
    freq: str = "1h"
    d_model: int = 512
    n_heads: int = 8
    e_layers: int | tuple[int, ...] = 2
    d_layers: int = 1
    d_ff: int = 2048
    factor: int = 5
    dropout: float = 0.05
    attn: Literal["prob", "full"] = "prob"
    embed: Literal["timeF"] = "timeF"
    activation: Literal["gelu", "relu"] = "gelu"
    output_attention: bool = False
    distil: bool = True
    mix: bool = True
    eval_sampling: EvalSampling = "even"
    revin: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.e_layers, list | tuple):
            self.e_layers = tuple(int(n) for n in self.e_layers)
            if not self.e_layers or min(self.e_layers) < 1:
                raise ValueError(f"e_layers must be positive, got {self.e_layers}")
        elif self.e_layers < 1:
            raise ValueError(f"e_layers must be positive, got {self.e_layers}")
        if min(self.seq_len, self.pred_len, self.d_layers, self.factor, self.n_heads) < 1:
            raise ValueError("seq_len, pred_len, d_layers, factor and n_heads must be positive")
        if not 0 <= self.label_len <= self.seq_len:
            raise ValueError(f"label_len must be in 0..seq_len ({self.seq_len}), got {self.label_len}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not self.enc_in == self.dec_in == self.c_out:
            raise ValueError("enc_in, dec_in and c_out must be equal (the decoder is fed the encoder's channels)")
        if isinstance(self.e_layers, tuple) and self.seq_len // 2 ** (len(self.e_layers) - 1) < 1:
            raise ValueError(f"seq_len {self.seq_len} is too short for a stack of {len(self.e_layers)} encoders")
        choices = {
            "attn": ("prob", "full"),
            "embed": ("timeF",),
            "activation": ("gelu", "relu"),
            "eval_sampling": ("even", "random"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        feature_names(self.freq)  # raises for an unknown frequency


# --- embedding -------------------------------------------------------------------------------------------


class TokenEmbedding(nn.Module):
    def __init__(self, c_in: int, d_model: int) -> None:
        super().__init__()
        self.tokenConv = nn.Conv1d(c_in, d_model, kernel_size=3, padding=1, padding_mode="circular")
        nn.init.kaiming_normal_(self.tokenConv.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokenConv(x.permute(0, 2, 1)).transpose(1, 2)


def sinusoidal_table(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model): sin on even, cos on odd dimensions (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)[:, : d_model // 2]
    return table


class DataEmbedding(nn.Module):
    """Value (token) + position + calendar ("timeF": a linear map of the scaled calendar features)."""

    def __init__(self, c_in: int, d_model: int, n_marks: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.value_embedding = TokenEmbedding(c_in, d_model)
        self.register_buffer("position", sinusoidal_table(max_len, d_model).unsqueeze(0), persistent=False)
        self.temporal_embedding = nn.Linear(n_marks, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor) -> torch.Tensor:
        out = self.value_embedding(x) + self.position[:, : x.shape[1]] + self.temporal_embedding(x_mark)
        return self.dropout(out)


# --- attention -------------------------------------------------------------------------------------------


def prob_sizes(factor: int, l_q: int, l_k: int) -> tuple[int, int]:
    """(sample_k, n_top) = (c * ceil(ln L_K), c * ceil(ln L_Q)), each capped at the length and at least 1."""
    sample_k = min(max(factor * math.ceil(math.log(l_k)), 1), l_k)
    n_top = min(max(factor * math.ceil(math.log(l_q)), 1), l_q)
    return sample_k, n_top


def even_key_index(l_k: int, sample_k: int) -> list[int]:
    """The centres of ``sample_k`` equal strata of ``l_k`` keys: every key when sample_k == l_k."""
    return [(2 * k + 1) * l_k // (2 * sample_k) for k in range(sample_k)]


class FullAttention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V, optionally causal. Inputs (B, L, H, E); output (B, L, H, D)."""

    def __init__(self, mask_flag: bool, attention_dropout: float = 0.1, output_attention: bool = False) -> None:
        super().__init__()
        self.mask_flag = mask_flag
        self.output_attention = output_attention
        self.dropout = Dropout(attention_dropout)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        l_q, l_k, e = queries.shape[1], keys.shape[1], queries.shape[3]
        scores = torch.einsum("blhe,bshe->bhls", queries, keys)
        if self.mask_flag:
            future = torch.ones(l_q, l_k, dtype=torch.bool, device=queries.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        attn = self.dropout(torch.softmax(scores / math.sqrt(e), dim=-1))
        out = torch.einsum("bhls,bshd->blhd", attn, values)
        return out.contiguous(), (attn if self.output_attention else None)


class ProbAttention(nn.Module):
    """ProbSparse self-attention. Inputs (B, L, H, E); output (B, L_Q, H, D).

    The official code keeps an attention dropout module but never applies it; so does this one (none at all).
    """

    def __init__(
        self, mask_flag: bool, factor: int = 5, output_attention: bool = False, eval_sampling: EvalSampling = "even"
    ) -> None:
        super().__init__()
        self.mask_flag = mask_flag
        self.factor = factor
        self.output_attention = output_attention
        self.eval_sampling = eval_sampling

    def _sampled_scores(self, q: torch.Tensor, k: torch.Tensor, sample_k: int) -> torch.Tensor:
        """(B, H, L_Q, sample_k) scores of every query against its sampled keys."""
        l_q, l_k = q.shape[2], k.shape[2]
        if self.training or self.eval_sampling == "random":  # the official draw: per query, with replacement
            index = torch.randint(l_k, (l_q, sample_k), device=q.device)
            k_sample = k[:, :, index, :]  # (B, H, L_Q, s, E): query i's own sampled keys
            return torch.matmul(q.unsqueeze(-2), k_sample.transpose(-2, -1)).squeeze(-2)
        index = torch.tensor(even_key_index(l_k, sample_k), dtype=torch.long, device=q.device)
        return torch.matmul(q, k.index_select(2, index).transpose(-2, -1))

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)  # (B, H, L, E)
        l_q, l_k, e, d = q.shape[2], k.shape[2], q.shape[3], v.shape[3]
        sample_k, n_top = prob_sizes(self.factor, l_q, l_k)

        sampled = self._sampled_scores(q, k, sample_k)
        sparsity = sampled.max(dim=-1).values - sampled.sum(dim=-1) / l_k  # M(q, K), as the official code
        top = sparsity.topk(n_top, dim=-1, sorted=False).indices  # (B, H, u)
        q_reduce = torch.gather(q, 2, top.unsqueeze(-1).expand(-1, -1, -1, e))
        scores = torch.matmul(q_reduce, k.transpose(-2, -1)) / math.sqrt(e)  # (B, H, u, L_K)

        if self.mask_flag:
            if l_q != l_k:
                raise ValueError("masked ProbSparse attention is self-attention: L_Q must equal L_K")
            context = v.cumsum(dim=-2)
            future = torch.arange(l_k, device=q.device).view(1, 1, 1, l_k) > top.unsqueeze(-1)
            scores = scores.masked_fill(future, float("-inf"))
        else:
            context = v.mean(dim=-2, keepdim=True).expand(-1, -1, l_q, -1)
        attn = torch.softmax(scores, dim=-1)
        context = context.scatter(2, top.unsqueeze(-1).expand(-1, -1, -1, d), torch.matmul(attn, v))
        maps = None
        if self.output_attention:
            maps = torch.full((q.shape[0], q.shape[1], l_q, l_k), 1.0 / l_k, dtype=attn.dtype, device=attn.device)
            maps = maps.scatter(2, top.unsqueeze(-1).expand(-1, -1, -1, l_k), attn)
        return context.transpose(1, 2).contiguous(), maps


class AttentionLayer(nn.Module):
    """Projections to heads, the inner attention, the output projection (with the official "mix" option)."""

    def __init__(self, attention: nn.Module, d_model: int, n_heads: int, mix: bool = False) -> None:
        super().__init__()
        d_head = d_model // n_heads
        self.inner_attention = attention
        self.query_projection = nn.Linear(d_model, d_head * n_heads)
        self.key_projection = nn.Linear(d_model, d_head * n_heads)
        self.value_projection = nn.Linear(d_model, d_head * n_heads)
        self.out_projection = nn.Linear(d_head * n_heads, d_model)
        self.n_heads = n_heads
        self.mix = mix

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, l_q, _ = queries.shape
        l_k, h = keys.shape[1], self.n_heads
        q = self.query_projection(queries).view(b, l_q, h, -1)
        k = self.key_projection(keys).view(b, l_k, h, -1)
        v = self.value_projection(values).view(b, l_k, h, -1)
        out, attn = self.inner_attention(q, k, v)
        if self.mix:  # the official layout: (B, H, L, D) memory read back as (B, L, H * D)
            out = out.transpose(2, 1).contiguous()
        return self.out_projection(out.reshape(b, l_q, -1)), attn


# --- encoder and decoder ---------------------------------------------------------------------------------


class ConvLayer(nn.Module):
    """Self-attention distilling: Conv1d (k 3, circular) + BatchNorm + ELU + MaxPool(3, stride 2): L -> ceil(L/2)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.downConv = nn.Conv1d(c_in, c_in, kernel_size=3, padding=1, padding_mode="circular")
        self.norm = nn.BatchNorm1d(c_in)
        self.activation = nn.ELU()
        self.maxPool = nn.MaxPool1d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm(self.downConv(x.permute(0, 2, 1))))
        return self.maxPool(x).transpose(1, 2)


def _activation(name: str):
    return F.relu if name == "relu" else F.gelu


class EncoderLayer(nn.Module):
    def __init__(self, attention: AttentionLayer, d_model: int, d_ff: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.attention = attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.activation = _activation(activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        new_x, attn = self.attention(x, x, x)
        x = y = self.norm1(x + self.dropout(new_x))
        y = self.dropout(self.activation(self.conv1(y.transpose(-1, 1))))
        y = self.dropout(self.conv2(y).transpose(-1, 1))
        return self.norm2(x + y), attn


class Encoder(nn.Module):
    def __init__(self, attn_layers: list[EncoderLayer], conv_layers: list[ConvLayer] | None, d_model: int) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList(attn_layers)
        self.conv_layers = nn.ModuleList(conv_layers) if conv_layers is not None else None
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        attns = []
        if self.conv_layers is not None:
            for attn_layer, conv_layer in zip(self.attn_layers, self.conv_layers, strict=False):
                x, attn = attn_layer(x)
                x = conv_layer(x)
                attns.append(attn)
            x, attn = self.attn_layers[-1](x)
            attns.append(attn)
        else:
            for attn_layer in self.attn_layers:
                x, attn = attn_layer(x)
                attns.append(attn)
        return self.norm(x), attns


class EncoderStack(nn.Module):
    """Informer†: encoder i sees the last L / 2^i inputs; the outputs are concatenated along time."""

    def __init__(self, encoders: list[Encoder]) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        outs, attns = [], []
        for i, encoder in enumerate(self.encoders):
            out, attn = encoder(x[:, x.shape[1] - x.shape[1] // 2**i :])
            outs.append(out)
            attns.extend(attn)
        return torch.cat(outs, dim=-2), attns


class DecoderLayer(nn.Module):
    def __init__(
        self,
        self_attention: AttentionLayer,
        cross_attention: AttentionLayer,
        d_model: int,
        d_ff: int,
        dropout: float,
        activation: str,
    ) -> None:
        super().__init__()
        self.self_attention = self_attention
        self.cross_attention = cross_attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.activation = _activation(activation)

    def forward(self, x: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.self_attention(x, x, x)[0]))
        x = y = self.norm2(x + self.dropout(self.cross_attention(x, cross, cross)[0]))
        y = self.dropout(self.activation(self.conv1(y.transpose(-1, 1))))
        y = self.dropout(self.conv2(y).transpose(-1, 1))
        return self.norm3(x + y)


class Decoder(nn.Module):
    def __init__(self, layers: list[DecoderLayer], d_model: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, cross)
        return self.norm(x)


# --- the model -------------------------------------------------------------------------------------------


class Informer(ForecastModel):
    kind = "informer"
    graph_inputs = ("context", "context_marks", "target_marks")

    def __init__(self, config: InformerConfig) -> None:
        super().__init__()
        self.config = cfg = config
        n_marks = len(feature_names(cfg.freq))
        max_len = max(cfg.seq_len, cfg.label_len + cfg.pred_len)
        self.enc_embedding = DataEmbedding(cfg.enc_in, cfg.d_model, n_marks, max_len, cfg.dropout)
        self.dec_embedding = DataEmbedding(cfg.dec_in, cfg.d_model, n_marks, max_len, cfg.dropout)

        def self_attention(mask_flag: bool, output_attention: bool) -> nn.Module:
            if cfg.attn == "prob":
                return ProbAttention(mask_flag, cfg.factor, output_attention, cfg.eval_sampling)
            return FullAttention(mask_flag, cfg.dropout, output_attention)

        def encoder(n_layers: int) -> Encoder:
            layers = [
                EncoderLayer(
                    AttentionLayer(self_attention(False, cfg.output_attention), cfg.d_model, cfg.n_heads, mix=False),
                    cfg.d_model,
                    cfg.d_ff,
                    cfg.dropout,
                    cfg.activation,
                )
                for _ in range(n_layers)
            ]
            convs = [ConvLayer(cfg.d_model) for _ in range(n_layers - 1)] if cfg.distil else None
            return Encoder(layers, convs, cfg.d_model)

        if isinstance(cfg.e_layers, tuple):
            self.encoder: nn.Module = EncoderStack([encoder(n) for n in cfg.e_layers])
        else:
            self.encoder = encoder(cfg.e_layers)
        self.decoder = Decoder(
            [
                DecoderLayer(
                    AttentionLayer(self_attention(True, False), cfg.d_model, cfg.n_heads, mix=cfg.mix),
                    AttentionLayer(FullAttention(False, cfg.dropout), cfg.d_model, cfg.n_heads, mix=False),
                    cfg.d_model,
                    cfg.d_ff,
                    cfg.dropout,
                    cfg.activation,
                )
                for _ in range(cfg.d_layers)
            ],
            cfg.d_model,
        )
        self.projection = nn.Linear(cfg.d_model, cfg.c_out)

    @property
    def context_length(self) -> int:
        return self.config.seq_len

    @property
    def step(self) -> int:
        return self.config.pred_len

    def attention_bytes_per_row(self) -> int:
        """The decoder's full cross-attention (label + horizon queries on every encoder position) and, with full
        self-attention, the encoder's and decoder's square maps; ProbSparse maps are far smaller."""
        cfg = self.config
        decoder_len = cfg.label_len + cfg.pred_len
        cells = decoder_len * cfg.seq_len
        if cfg.attn == "full":
            cells = max(cells, cfg.seq_len**2, decoder_len**2)
        return 4 * cfg.n_heads * cells

    def set_eval_sampling(self, mode: EvalSampling) -> None:
        """Switch every ProbSparse attention between the deterministic ("even") and the official ("random") draw."""
        if mode not in ("even", "random"):
            raise ValueError(f"eval sampling must be 'even' or 'random', got {mode!r}")
        self.config.eval_sampling = mode
        for module in self.modules():
            if isinstance(module, ProbAttention):
                module.eval_sampling = mode

    def decoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """The last ``label_len`` known values followed by zeros for the horizon: (B, label_len + H, C)."""
        cfg = self.config
        zeros = x.new_zeros((x.shape[0], cfg.pred_len, x.shape[2]))
        if cfg.label_len == 0:
            return zeros
        return torch.cat([x[:, x.shape[1] - cfg.label_len :], zeros], dim=1)

    def forward_with_attention(
        self, x: torch.Tensor, x_mark: torch.Tensor | None, y_mark: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """(B, H, C) forecast and the encoder's attention maps (None unless ``output_attention``)."""
        cfg = self.config
        if x_mark is None or y_mark is None:
            raise ValueError("Informer needs calendar features: x_mark (B, L, F) and y_mark (B, label_len + H, F)")
        if x.shape[1] != cfg.seq_len or y_mark.shape[1] != cfg.label_len + cfg.pred_len:
            raise ValueError(
                f"expected x of {cfg.seq_len} steps and y_mark of {cfg.label_len + cfg.pred_len}, "
                f"got {x.shape[1]} and {y_mark.shape[1]}"
            )
        if cfg.revin:
            center = x.mean(dim=1, keepdim=True)
            spread = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + REVIN_EPS)
            x = (x - center) / spread
        enc_out, attns = self.encoder(self.enc_embedding(x, x_mark))
        dec_out = self.decoder(self.dec_embedding(self.decoder_input(x), y_mark), enc_out)
        out = self.projection(dec_out)[:, -cfg.pred_len :]
        if cfg.revin:
            out = out * spread + center
        return out, attns

    def forward(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, y_mark: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.forward_with_attention(x, x_mark, y_mark)[0]


def _bind(params: dict[str, Any], facts: DataFacts) -> InformerConfig:
    data = facts.config
    lengths = {"seq_len": data.lookback, "label_len": data.label_len, "pred_len": data.horizon}
    channels = {"enc_in": facts.n_channels, "dec_in": facts.n_channels, "c_out": facts.n_channels}
    return InformerConfig(**{**params, **lengths, **channels, "freq": params.get("freq") or facts.freq})


def _search_space(trial: Any) -> dict[str, dict[str, Any]]:
    lookback = trial.suggest_categorical("lookback", [48, 96, 168, 336])
    label_share = trial.suggest_categorical("label_share", [0.25, 0.5, 1.0])  # label_len = share * lookback
    d_model = trial.suggest_categorical("d_model", [128, 256, 512])
    return {
        "data": {"lookback": lookback, "label_len": int(lookback * label_share)},
        "model": {
            "d_model": d_model,
            "d_ff": 4 * d_model,
            "e_layers": trial.suggest_int("e_layers", 1, 3),
            "d_layers": trial.suggest_int("d_layers", 1, 2),
            "factor": trial.suggest_categorical("factor", [3, 5, 8]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3),
        },
        "train": {"lr": trial.suggest_float("lr", 1e-5, 1e-3, log=True)},
    }


SPEC = ModelSpec(
    Informer,
    InformerConfig,
    _bind,
    _search_space,
    tiny=TinySetup(
        data={"features": "M", "lookback": 48, "label_len": 24, "horizon": 12},
        model={"d_model": 16, "n_heads": 2, "d_ff": 32},
    ),
)
