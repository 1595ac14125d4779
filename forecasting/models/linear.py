"""Linear forecast (NLinear / DLinear, Zeng et al. 2023) fitted as ridge regression in closed form.

Each channel's window, less its level (``input_norm``), maps linearly to the horizon: one set of weights shared by
every channel (channel-independent), or one per channel. With ``decomposition`` (DLinear) the window is split into
a trend (a moving average) and the rest, each with its own map: the same functions as plain linear, penalised
differently. No SGD: the Gram matrices of the training windows are accumulated in chunks (float64), the ridge
solution is found for every penalty in ``alphas`` from one eigendecomposition, and the penalty with the lowest MSE
over every validation window is kept.

With ``quantile_levels`` the model also learns the bounds of those central levels: linear quantile regression on
the same features, as offsets from the ridge forecast. The pinball loss has no closed form, so after the ridge fit
the offsets (starting from the training residuals' quantiles per step) are fitted by Adam in minibatches over the
training windows, and the epoch with the lowest validation pinball loss is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from forecasting.data import DataFacts, WindowDataset
from forecasting.models.base import LookbackHorizonModel, ModelSpec, TinySetup
from forecasting.models.input_norm import InputNorm, check_input_norm, window_level
from forecasting.quantiles import check_quantile_levels, ordered, pinball_loss, quantile_probs

# Penalties on the mean squared error per training row (the ridge term is alpha * rows * |W|^2), so one grid
# suits any number of training windows; features are on the training scale (unit variance per channel).
DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
CHUNK_WINDOWS = 512  # windows per accumulation step: ETTm1 at lookback 672 never holds its design matrix whole
QUANTILE_BATCH = 256  # windows per Adam step of the quantile fit
QUANTILE_INIT_WINDOWS = 4096  # training windows whose residual quantiles start the offsets


@dataclass
class LinearConfig:
    """Linear's settings.

    norm: the level subtracted from each window and added back ("none", "last": NLinear, "mean").
    decomposition: DLinear's trend (moving average over ``kernel_size``, edges padded with the end values) and
        remainder, each with its own map.
    per_channel: separate weights per channel instead of one set shared by all.
    alphas: the ridge penalties tried (see ``DEFAULT_ALPHAS``); alpha: the one chosen on validation, set by the
        fit (given, it is the only one tried). The intercept is not penalised.
    quantile_levels: central levels whose bounds are learnt (pinball loss) beside the ridge forecast; empty: none.
    quantile_epochs / quantile_lr: the Adam fit of those quantiles (the best epoch on validation is kept).
    """

    lookback: int = 96
    horizon: int = 24
    n_channels: int = 1
    norm: InputNorm = "last"
    decomposition: bool = False
    kernel_size: int = 25
    per_channel: bool = False
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    alpha: float | None = None
    quantile_levels: tuple[float, ...] = ()
    quantile_epochs: int = 20
    quantile_lr: float = 3e-3

    def __post_init__(self) -> None:
        self.alphas = tuple(float(a) for a in self.alphas)
        self.quantile_levels = check_quantile_levels(self.quantile_levels)
        if self.quantile_epochs < 1 or not self.quantile_lr > 0:
            raise ValueError(
                f"quantile_epochs and quantile_lr must be positive, got {self.quantile_epochs}, {self.quantile_lr}"
            )
        check_input_norm(self.norm)
        if min(self.lookback, self.horizon, self.n_channels, self.kernel_size) < 1:
            raise ValueError("lookback, horizon, n_channels and kernel_size must be positive")
        if not self.alphas or min(self.alphas) < 0 or (self.alpha is not None and self.alpha < 0):
            raise ValueError(f"ridge penalties must be non-negative, got alphas={self.alphas}, alpha={self.alpha}")

    @property
    def n_features(self) -> int:
        return self.lookback * (2 if self.decomposition else 1)

    @property
    def groups(self) -> int:
        """Weight sets: one per channel, or one shared."""
        return self.n_channels if self.per_channel else 1


def moving_average(z: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Mean over ``kernel_size`` steps of z (N, C, L), stride 1, each end padded with its own value: length kept."""
    front, back = (kernel_size - 1) // 2, kernel_size - 1 - (kernel_size - 1) // 2
    padded = torch.cat([z[..., :1].repeat(1, 1, front), z, z[..., -1:].repeat(1, 1, back)], dim=-1)
    return nn.functional.avg_pool1d(padded, kernel_size, stride=1)


class Linear(LookbackHorizonModel):
    kind = "linear"

    def __init__(self, config: LinearConfig) -> None:
        super().__init__()
        self.config = config
        shape = (config.groups, config.n_features, config.horizon)
        self.weight = nn.Parameter(torch.zeros(shape), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(config.groups, 1, config.horizon), requires_grad=False)
        n_probs = len(self.quantile_probs)
        if n_probs:  # offsets from the point forecast, one map per quantile (and weight set)
            self.quantile_weight = nn.Parameter(torch.zeros(n_probs, *shape), requires_grad=False)
            self.quantile_bias = nn.Parameter(
                torch.zeros(n_probs, config.groups, 1, config.horizon), requires_grad=False
            )
            self.register_buffer("probs", torch.tensor(self.quantile_probs, dtype=torch.float32), persistent=False)

    @property
    def quantile_probs(self) -> tuple[float, ...]:
        return quantile_probs(self.config.quantile_levels) if self.config.quantile_levels else ()

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The level (B, 1, C) and the regression features (C, B, F) of windows x (B, L, C)."""
        level = window_level(x, self.config.norm)
        z = (x - level).permute(2, 0, 1)
        if self.config.decomposition:
            trend = moving_average(z, self.config.kernel_size)
            z = torch.cat([z - trend, trend], dim=-1)
        return level, z

    def forward(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, y_mark: torch.Tensor | None = None
    ) -> torch.Tensor:
        level, z = self.features(x)
        out = z @ self.weight + self.bias  # (C, B, H): shared weights broadcast over the channels
        return out.permute(1, 2, 0) + level

    def forward_quantiles(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, y_mark: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self.quantile_probs:
            return super().forward_quantiles(x)
        level, z = self.features(x)
        point = z @ self.weight + self.bias  # (C, B, H)
        offsets = z[None] @ self.quantile_weight + self.quantile_bias  # (Q, C, B, H)
        return ordered((point[None] + offsets).permute(2, 0, 3, 1) + level[:, None])

    def _gram(self, data: WindowDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per weight set, float64 sums over the rows of [features, 1] and targets (both less the level):
        G = X^T X (g, F+1, F+1), R = X^T Y (g, F+1, H), and sum Y^2 (g,)."""
        cfg = self.config
        size = cfg.n_features + 1
        gram = torch.zeros(cfg.groups, size, size, dtype=torch.float64)
        cross = torch.zeros(cfg.groups, size, cfg.horizon, dtype=torch.float64)
        square = torch.zeros(cfg.groups, dtype=torch.float64)
        for batch in data.batches(CHUNK_WINDOWS):
            level, z = self.features(batch["x"].double())
            y = (batch["y"].double() - level).permute(2, 0, 1)  # (C, B, H)
            z = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
            if not cfg.per_channel:
                z, y = z.reshape(1, -1, size), y.reshape(1, -1, cfg.horizon)
            gram += z.transpose(1, 2) @ z
            cross += z.transpose(1, 2) @ y
            square += y.pow(2).sum(dim=(1, 2))
        return gram, cross, square

    def fit_closed_form(self, train: WindowDataset, val: WindowDataset) -> dict[str, Any]:
        """Ridge for every penalty in the grid, the intercept unpenalised (by centring); keep the best on validation."""
        cfg = self.config
        alphas = cfg.alphas if cfg.alpha is None else (cfg.alpha,)
        solutions = ridge_solutions(*self._gram(train)[:2], alphas)
        val_gram, val_cross, val_square = self._gram(val)
        values = len(val) * cfg.n_channels * cfg.horizon
        history = []
        for alpha, coef in zip(alphas, solutions, strict=True):
            sse = val_square - 2 * (coef * val_cross).sum(dim=(1, 2)) + (coef * (val_gram @ coef)).sum(dim=(1, 2))
            history.append({"alpha": alpha, "val_loss": float(sse.sum()) / values})
        best = min(range(len(alphas)), key=lambda i: history[i]["val_loss"])
        coef = solutions[best]
        with torch.no_grad():
            self.weight.copy_(coef[:, :-1].to(self.weight))
            self.bias.copy_(coef[:, -1:].to(self.bias))
        cfg.alpha = alphas[best]
        if not self.quantile_probs:
            return {"alpha": cfg.alpha, "history": history}
        return {"alpha": cfg.alpha, "history": history, "quantiles": self._fit_quantiles(train, val)}

    def _pinball(self, data: WindowDataset) -> float:
        with torch.no_grad():
            losses = [
                (pinball_loss(self.forward_quantiles(b["x"]), b["y"], self.probs), len(b["x"]))
                for b in data.batches(CHUNK_WINDOWS)
            ]
        return float(sum(float(loss) * n for loss, n in losses) / max(sum(n for _, n in losses), 1))

    def _fit_quantiles(self, train: WindowDataset, val: WindowDataset) -> list[dict[str, float]]:
        """Adam on the pinball loss over the offsets, the ridge forecast fixed; the best validation epoch kept."""
        cfg = self.config
        rng = np.random.default_rng(0)
        with torch.no_grad():  # start: no weights, each offset the training residuals' quantile at its step
            sample = train.batch(np.sort(rng.permutation(len(train))[:QUANTILE_INIT_WINDOWS]))
            residual = (sample["y"] - self(sample["x"])).permute(2, 0, 1)  # (C, B, H)
            if not cfg.per_channel:
                residual = residual.reshape(1, -1, cfg.horizon)
            self.quantile_bias.copy_(torch.quantile(residual, self.probs.to(residual), dim=1)[:, :, None])
            self.quantile_weight.zero_()
        params = [self.quantile_weight, self.quantile_bias]
        for param in params:
            param.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=cfg.quantile_lr)
        # the step size decays linearly to 0: at a constant one Adam's last steps leave noise in every weight
        steps = cfg.quantile_epochs * -(-len(train) // QUANTILE_BATCH)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(1.0 - i / steps, 0.0))
        best = (self._pinball(val), [p.detach().clone() for p in params])
        history = [{"epoch": 0, "val_pinball": best[0]}]
        try:
            for epoch in range(1, cfg.quantile_epochs + 1):
                for batch in train.batches(QUANTILE_BATCH, shuffle=True, rng=rng):
                    optimizer.zero_grad()
                    pinball_loss(self.forward_quantiles(batch["x"]), batch["y"], self.probs).backward()
                    optimizer.step()
                    schedule.step()
                history.append({"epoch": epoch, "val_pinball": self._pinball(val)})
                if history[-1]["val_pinball"] < best[0]:
                    best = (history[-1]["val_pinball"], [p.detach().clone() for p in params])
        finally:
            for param, kept in zip(params, best[1], strict=True):
                param.requires_grad_(False)
                param.data.copy_(kept)
        return history


def ridge_solutions(gram: torch.Tensor, cross: torch.Tensor, alphas: tuple[float, ...]) -> list[torch.Tensor]:
    """Ridge coefficients [W; b] (g, F+1, H) for each penalty, from augmented sums (last row/column: the intercept).

    Centring removes the intercept from the penalised problem; one eigendecomposition of the centred X^T X serves
    every penalty, and alpha = 0 is the least-squares (pseudo-inverse) solution, defined for a singular X^T X
    (DLinear's two halves add up to the window).
    """
    rows = gram[:, -1, -1]  # the ones column's sum: training rows per weight set
    mean_x, mean_y = gram[:, -1:, :-1] / rows[:, None, None], cross[:, -1:, :] / rows[:, None, None]
    cxx = gram[:, :-1, :-1] - rows[:, None, None] * mean_x.transpose(1, 2) @ mean_x
    cxy = cross[:, :-1, :] - rows[:, None, None] * mean_x.transpose(1, 2) @ mean_y
    eigenvalues, vectors = torch.linalg.eigh(cxx)
    projected = vectors.transpose(1, 2) @ cxy
    floor = eigenvalues.amax(dim=1, keepdim=True) * cxx.shape[-1] * torch.finfo(torch.float64).eps
    out = []
    for alpha in alphas:
        shrunk = eigenvalues + alpha * rows[:, None]
        inverse = torch.where(shrunk > floor, 1.0 / shrunk.clamp_min(floor), torch.zeros_like(shrunk))
        weight = vectors @ (inverse[..., None] * projected)
        out.append(torch.cat([weight, mean_y - mean_x @ weight], dim=1))
    return out


def _bind(params: dict[str, Any], facts: DataFacts) -> LinearConfig:
    data = facts.config
    return LinearConfig(
        **{**params, "lookback": data.lookback, "horizon": data.horizon, "n_channels": facts.n_channels}
    )


def _search_space(trial: Any) -> dict[str, dict[str, Any]]:
    return {
        "data": {"lookback": trial.suggest_categorical("lookback", [96, 192, 336, 512, 720])},
        "model": {
            "norm": trial.suggest_categorical("norm", ["none", "last", "mean"]),
            "decomposition": trial.suggest_categorical("decomposition", [False, True]),
            "per_channel": trial.suggest_categorical("per_channel", [False, True]),
        },
    }


SPEC = ModelSpec(
    Linear,
    LinearConfig,
    _bind,
    _search_space,
    tiny=TinySetup(
        data={"features": "M", "lookback": 48, "horizon": 12}, model={"decomposition": True, "per_channel": True}
    ),
)
