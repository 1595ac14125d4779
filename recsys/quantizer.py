"""Semantic IDs: quantise item embeddings into a few discrete codes per item.

Two quantisers, both residual (level l encodes what levels < l left over, so a prefix is a coarse cluster):

- :func:`residual_kmeans`: k-means on the embeddings, then on the residuals, level by level. No training.
- :class:`RQVAE` (TIGER): an MLP encoder to a small latent, residual vector quantisation of the latent with one
  codebook per level, an MLP decoder back to the embedding; reconstruction + commitment losses, straight-through
  gradients. Each level's codebook starts from k-means on the initial latents (residuals), and codes left unused
  during the first part of training are re-seeded on random residuals, the usual guards against codebook collapse.

Items whose codes coincide (a "collision") are told apart by one more code, :func:`append_dedup_code`, numbered
0, 1, 2, ... in item order within each group, so every item ends up with a unique code tuple (TIGER's 4th token).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn
from tqdm.auto import tqdm

from arcast_core.training import Replica, StepLoss, TrainConfig, fit, shuffled_index_batches

Method = Literal["rqvae", "rkmeans"]


@dataclass(frozen=True)
class CodeStats:
    """How well the (pre-dedup) codes separate the items.

    ``collision_rate``: share of items whose code tuple another item already has, ``1 - unique / n_items`` (the
    share that needs a non-zero extra code). ``colliding_items``: share of items in a group of two or more.
    ``codebook_usage[l]``: share of level ``l``'s codes used by at least one item; ``perplexity[l]``: exp of the
    entropy of level ``l``'s code distribution (equals the codebook size when use is uniform).
    """

    n_items: int
    level_sizes: tuple[int, ...]
    codebook_usage: tuple[float, ...]
    perplexity: tuple[float, ...]
    unique_prefixes: int
    collision_rate: float
    colliding_items: float
    max_group: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def code_stats(codes: np.ndarray, level_sizes: Sequence[int]) -> CodeStats:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(level_sizes):
        raise ValueError(f"codes must be (n_items, {len(level_sizes)}), got {codes.shape}")
    n = len(codes)
    usage, perplexity = [], []
    for level, size in enumerate(level_sizes):
        counts = np.bincount(codes[:, level], minlength=size)
        p = counts[counts > 0] / n
        usage.append(float((counts > 0).sum() / size))
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
    _, group_sizes = np.unique(codes, axis=0, return_counts=True)
    return CodeStats(
        n_items=n,
        level_sizes=tuple(int(s) for s in level_sizes),
        codebook_usage=tuple(usage),
        perplexity=tuple(perplexity),
        unique_prefixes=len(group_sizes),
        collision_rate=float(1 - len(group_sizes) / n),
        colliding_items=float(group_sizes[group_sizes > 1].sum() / n),
        max_group=int(group_sizes.max()),
    )


def append_dedup_code(codes: np.ndarray) -> np.ndarray:
    """Add a last column numbering the items that share a code tuple: 0, 1, 2, ... in row (item) order."""
    codes = np.asarray(codes, dtype=np.int64)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # rows grouped, item order kept inside each group
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    rank_sorted = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    extra = np.empty(len(codes), dtype=np.int64)
    extra[order] = rank_sorted
    return np.concatenate([codes, extra[:, None]], axis=1)


@dataclass(frozen=True)
class SemanticIds:
    """Unique codes per item: ``codes[i]`` belongs to the i-th item of the quantised matrix (dense id ``i + 1``).

    ``level_sizes`` covers every column, the last being the dedup code (its size is the largest collision group).
    ``stats`` describes the codes before the dedup column.
    """

    codes: np.ndarray
    level_sizes: tuple[int, ...]
    stats: CodeStats

    @classmethod
    def from_codes(cls, prefix_codes: np.ndarray, level_sizes: Sequence[int]) -> SemanticIds:
        stats = code_stats(prefix_codes, level_sizes)
        codes = append_dedup_code(prefix_codes)
        return cls(codes=codes, level_sizes=(*stats.level_sizes, stats.max_group), stats=stats)


def kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 1, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, dim), assignment (n,)); ``k`` above the number of distinct points leaves some codes unused."""
    x = np.asarray(x, dtype=np.float32)
    distinct = len(np.unique(x, axis=0))
    fitted = KMeans(n_clusters=min(k, distinct), n_init=n_init, max_iter=max_iter, random_state=seed).fit(x)
    centroids = np.zeros((k, x.shape[1]), dtype=np.float32)
    centroids[: fitted.n_clusters] = fitted.cluster_centers_
    if fitted.n_clusters < k:  # unreachable spare codes: far away from every point
        centroids[fitted.n_clusters :] = np.abs(x).max() * 1e3
    return centroids, fitted.labels_.astype(np.int64)


def residual_kmeans(x: np.ndarray, level_sizes: Sequence[int], seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Codes (n, levels) and codebooks of residual k-means: level l clusters what levels < l did not explain."""
    residual = np.asarray(x, dtype=np.float32).copy()
    codes, books = [], []
    for level, size in enumerate(level_sizes):
        centroids, labels = kmeans(residual, size, seed + level)
        residual -= centroids[labels]
        codes.append(labels)
        books.append(centroids)
    return np.stack(codes, axis=1), books


@dataclass(frozen=True)
class RQVAEConfig:
    level_sizes: tuple[int, ...] = (256, 256, 256)
    hidden: tuple[int, ...] = (256, 128)  # TIGER: 768 -> 512 -> 256 -> 128 -> 32; MiniLM gives 384

    latent_dim: int = 32
    beta: float = 0.25  # commitment weight (VQ-VAE)
    # "sum": codebook and commitment terms summed over the latent dimensions, like the reconstruction over the input
    # dimensions (the reference's weighting). "mean": averaged over them (the earlier runs: ~latent_dim x weaker).
    vq_reduction: Literal["sum", "mean"] = "sum"
    steps: int | None = 20_000  # optimiser steps (the epochs follow); None: train ``epochs`` passes instead
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 1e-3
    reset_dead_codes: bool = True
    reset_until: float = 0.75  # re-seed unused codes only in this first share of the epochs, then let them settle
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vq_reduction not in ("sum", "mean"):
            raise ValueError(f"vq_reduction must be 'sum' or 'mean', got {self.vq_reduction!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"RQVAEConfig.steps must be at least 1 (or None), got {self.steps}")

    def epochs_for(self, n_items: int) -> int:
        """Passes over ``n_items`` embeddings: ``epochs``, or as many as ``steps`` optimiser steps take."""
        if self.steps is None:
            return self.epochs
        return max(1, math.ceil(self.steps / math.ceil(n_items / self.batch_size)))


class RQVAE(nn.Module):
    def __init__(self, in_dim: int, config: RQVAEConfig) -> None:
        super().__init__()
        self.config = config
        dims = [in_dim, *config.hidden, config.latent_dim]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.randn(size, config.latent_dim) / math.sqrt(config.latent_dim))
            for size in config.level_sizes
        )

    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Residual quantisation of latents ``z``: (sum of chosen codewords, codes, residuals per level, VQ loss)."""
        residual = z
        quantised = torch.zeros_like(z)
        codes, residuals = [], []
        vq_loss = z.new_zeros(())
        for book in self.codebooks:
            residuals.append(residual)
            index = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)
            chosen = book[index]
            # Codebook term moves codewords to the residuals; commitment term keeps the encoder near its codewords.
            vq_loss = (
                vq_loss
                + self._distance(chosen, residual.detach())
                + self.config.beta * self._distance(residual, chosen.detach())
            )
            quantised = quantised + chosen
            residual = residual - chosen.detach()
            codes.append(index)
        return quantised, torch.stack(codes, dim=1), residuals, vq_loss

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Squared distance per row, summed (or averaged) over the latent dimensions, averaged over the rows."""
        squared = (a - b).pow(2)
        return squared.sum(dim=1).mean() if self.config.vq_reduction == "sum" else squared.mean()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, codes, loss)."""
        z = self.encoder(x)
        quantised, codes, _, vq_loss = self.quantise(z)
        z_q = z + (quantised - z).detach()  # straight-through: decoder gradients reach the encoder unchanged
        x_hat = self.decoder(z_q)
        reconstruction = (x_hat - x).pow(2).sum(dim=1).mean()  # per-item squared error, whatever the width
        return x_hat, codes, reconstruction + vq_loss

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> np.ndarray:
        return self.quantise(self.encoder(x))[1].cpu().numpy()

    @torch.no_grad()
    def report(self, x: torch.Tensor) -> dict[str, float]:
        """How well the codes describe ``x``: squared reconstruction error per item (summed over dimensions), the
        same relative to the items' squared distance from their mean (0: perfect, 1: no better than the mean),
        and the latent quantisation error (what the codes leave of the latent) relative to the latents' spread."""
        was_training = self.training
        self.eval()
        try:
            z = self.encoder(x)
            quantised, _, _, _ = self.quantise(z)
            x_hat = self.decoder(quantised)
        finally:
            self.train(was_training)
        error = (x_hat - x).pow(2).sum(dim=1).mean()
        spread = (x - x.mean(dim=0)).pow(2).sum(dim=1).mean()
        latent_error = (quantised - z).pow(2).sum(dim=1).mean()
        latent_spread = (z - z.mean(dim=0)).pow(2).sum(dim=1).mean()
        return {
            "reconstruction_error": float(error),
            "relative_reconstruction_error": float(error / spread.clamp_min(1e-12)),
            "relative_latent_error": float(latent_error / latent_spread.clamp_min(1e-12)),
        }

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, seed: int) -> None:
        """k-means on the initial latents, then on their residuals, level by level."""
        residual = self.encoder(x).cpu().numpy()
        for level, book in enumerate(self.codebooks):
            centroids, labels = kmeans(residual, book.shape[0], seed + level)
            book.copy_(torch.from_numpy(centroids))
            residual = residual - centroids[labels]

    @torch.no_grad()
    def reset_dead_codes(self, x: torch.Tensor, generator: torch.Generator) -> int:
        """Move codes no item uses onto random items' residuals at their level; returns how many moved."""
        _, codes, residuals, _ = self.quantise(self.encoder(x))
        moved = 0
        for level, book in enumerate(self.codebooks):
            used = torch.bincount(codes[:, level], minlength=book.shape[0]) > 0
            dead = torch.nonzero(~used).flatten()
            if len(dead):
                pick = torch.randint(len(x), (len(dead),), generator=generator)
                book[dead] = residuals[level][pick]
                moved += len(dead)
        return moved


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass
class RQVAEFit:
    model: RQVAE
    losses: list[float] = field(default_factory=list)
    codes_reset: int = 0
    steps: int = 0
    seconds: float = 0.0


@dataclass
class RQVAETask:
    """The RQ-VAE's part in the shared loop: shuffled mini-batches of item embeddings, no validation (the final
    weights are kept), and dead codes re-seeded during the first ``reset_until`` share of the epochs."""

    model: RQVAE
    data: torch.Tensor
    config: RQVAEConfig

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.config.seed)  # shuffling and code re-seeding
        self.size = len(self.data)
        self.codes_reset = 0
        # One bar over the whole fit (its epochs are many and short: 20,000 steps took 13 minutes of one core, and
        # per-epoch bars would be thousands); refreshed at most every 10 s so that logs stay short.
        self.bar = tqdm(total=self.config.epochs_for(self.size), desc="rq-vae epochs", mininterval=10, leave=False)

    def batches(self, batch_size: int, shard: tuple[int, int]) -> Iterator[torch.Tensor]:
        return shuffled_index_batches(self.size, batch_size, self.generator, shard)

    def loss(self, idx: torch.Tensor, progress: float) -> StepLoss:
        _, _, loss = self.model(self.data[idx])
        return StepLoss(loss, len(idx), {})

    def end_epoch(self, epoch: int, train_loss: float) -> None:
        self.bar.update()
        self.bar.set_postfix(loss=f"{train_loss:.4f}", refresh=False)
        epochs = self.config.epochs_for(self.size)
        every = max(1, epochs // 50)  # a full pass over the items: at most ~50 times however long the training
        if self.config.reset_dead_codes and epoch < int(epochs * self.config.reset_until) and epoch % every == 0:
            self.codes_reset += self.model.reset_dead_codes(self.data, self.generator)

    def validate(self, replica: Replica) -> None:
        return None


def train_rqvae(x: np.ndarray, config: RQVAEConfig) -> RQVAEFit:
    """Fit an RQ-VAE on item embeddings ``x`` (n, dim) on shuffled mini-batches (on the CPU: plenty for it)."""
    data = torch.as_tensor(np.asarray(x, dtype=np.float32))

    def build(device: torch.device) -> RQVAETask:
        model = RQVAE(data.shape[1], config)
        model.init_codebooks(data, config.seed)
        return RQVAETask(model, data, config)

    train = TrainConfig(
        epochs=config.epochs_for(len(data)),
        batch_size=config.batch_size,
        lr=config.lr,
        lr_schedule="constant",
        seed=config.seed,
        device="cpu",
        progress=False,
    )
    task, report = fit(build, train)
    task.bar.close()
    steps = train.epochs * math.ceil(len(data) / config.batch_size)
    return RQVAEFit(task.model, [r.train_loss for r in report.history], task.codes_reset, steps, report.seconds)


@dataclass(frozen=True)
class QuantizerConfig:
    method: Method = "rqvae"
    level_sizes: tuple[int, ...] = (256, 256, 256)
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)
    seed: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> QuantizerConfig:
        rq = payload.get("rqvae", {})
        rq = {k: tuple(v) if isinstance(v, list) else v for k, v in rq.items()}
        return cls(
            method=payload.get("method", "rqvae"),
            level_sizes=tuple(payload.get("level_sizes", (256, 256, 256))),
            rqvae=RQVAEConfig(**rq),
            seed=payload.get("seed", 0),
        )


def quantise(embeddings: np.ndarray, config: QuantizerConfig) -> tuple[SemanticIds, dict[str, object]]:
    """Unique semantic IDs of every row of ``embeddings``, and a report (method, losses) for the run record."""
    if config.method == "rkmeans":
        prefix, books = residual_kmeans(embeddings, config.level_sizes, config.seed)
        x = np.asarray(embeddings, dtype=np.float32)
        x_hat = sum(book[prefix[:, level]] for level, book in enumerate(books))
        error = float(((x_hat - x) ** 2).sum(axis=1).mean())
        spread = float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())
        report: dict[str, object] = {
            "method": "rkmeans",
            "reconstruction_error": error,
            "relative_reconstruction_error": error / max(spread, 1e-12),
        }
    elif config.method == "rqvae":
        rq_config = RQVAEConfig(**{**asdict(config.rqvae), "level_sizes": config.level_sizes, "seed": config.seed})
        fit = train_rqvae(embeddings, rq_config)
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        prefix = fit.model.codes(x)
        report = {
            "method": "rqvae",
            "first_loss": fit.losses[0],
            "final_loss": fit.losses[-1],
            "codes_reset": fit.codes_reset,
            "epochs": len(fit.losses),
            "steps": fit.steps,
            "seconds": round(fit.seconds, 1),
            "vq_reduction": rq_config.vq_reduction,
            **fit.model.report(x),
        }
    else:
        raise ValueError(f"unknown quantiser {config.method!r}; expected 'rqvae' or 'rkmeans'")
    ids = SemanticIds.from_codes(prefix, config.level_sizes)
    return ids, {**report, **ids.stats.as_dict()}
