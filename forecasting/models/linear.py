"""Linear forecast (NLinear / DLinear, Zeng et al. 2023) fitted as ridge regression in closed form.

Each channel's window, less its level (``input_norm``), maps linearly to the horizon: one set of weights shared by
every channel (channel-independent), or one per channel. With ``decomposition`` (DLinear) the window is split into
a trend (a moving average) and the rest, each with its own map: the same functions as plain linear, penalised
differently. No SGD: the Gram matrices of the training windows are accumulated in chunks (float64), the ridge
solution is found for every penalty in ``alphas`` from one eigendecomposition, and the penalty with the lowest MSE
over every validation window is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from forecasting.data import DataFacts, WindowDataset
from forecasting.models.base import LookbackHorizonModel, ModelSpec, TinySetup
from forecasting.models.input_norm import InputNorm, check_input_norm, window_level

# Penalties on the mean squared error per training row (the ridge term is alpha * rows * |W|^2), so one grid
# suits any number of training windows; features are on the training scale (unit variance per channel).
DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
CHUNK_WINDOWS = 512  # windows per accumulation step: ETTm1 at lookback 672 never holds its design matrix whole


@dataclass
class LinearConfig:
    """Linear's settings.

    norm: the level subtracted from each window and added back ("none", "last": NLinear, "mean").
    decomposition: DLinear's trend (moving average over ``kernel_size``, edges padded with the end values) and
        remainder, each with its own map.
    per_channel: separate weights per channel instead of one set shared by all.
    alphas: the ridge penalties tried (see ``DEFAULT_ALPHAS``); alpha: the one chosen on validation, set by the
        fit (given, it is the only one tried). The intercept is not penalised.
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

    def __post_init__(self) -> None:
        self.alphas = tuple(float(a) for a in self.alphas)
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
        return {"alpha": cfg.alpha, "history": history}


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
