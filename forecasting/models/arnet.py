"""AR-Net (Triebe et al., 2019): an autoregressive model fitted by SGD, with a sparsity regulariser.

p lags map to n_forecasts values through a linear layer (optionally hidden layers first). Channels are
independent and share weights, so the same model serves one series or many.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from forecasting.data import DataFacts, WindowDataset
from forecasting.models.base import ForecastModel, ModelSpec, TinySetup
from forecasting.models.input_norm import INPUT_NORMS, InputNorm, check_input_norm, window_level
from forecasting.models.linear import Linear, LinearConfig
from forecasting.quantiles import check_quantile_levels, ordered, pinball_loss, quantile_probs


@dataclass
class ARNetConfig:
    """AR-Net's settings.

    sparsity: the target share s of non-zero coefficients in (0, 1]; None or 1 turns the regulariser off.
        lambda(s) = c_lambda * (1/s - 1), c_lambda = sqrt(L_hat) / 100, where L_hat is the training loss
        reached without regularisation (measured when it switches on).
    reg_start / reg_ramp: the regulariser is off for the first ``reg_start`` of training (so L_hat can be
        measured and the fit found first), then its weight rises linearly to 1 over ``reg_ramp``.
    norm: the window level subtracted from the lags and added back to the forecast (``input_norm``); "last"
        makes the linear model NLinear, which stays right when the series' level drifts between periods.
    quantile_levels: central levels (e.g. 0.8, 0.9, 0.95) whose bounds a second head learns with the pinball loss
        (``forecasting.quantiles``), as offsets from the point forecast; empty: point forecasts only.
    init: the linear model's starting coefficients. "zeros" is the paper's; "ridge" starts SGD from the ridge
        regression on the same lags and ``norm`` (the ``linear`` model's closed-form fit, penalty chosen on
        validation), so the loss, regulariser and early stopping refine the least-squares fit instead of having to
        find it. Only without hidden layers, and with a bias (the ridge fit's intercept).
    """

    n_lags: int = 96
    n_forecasts: int = 24
    hidden_sizes: tuple[int, ...] = ()
    sparsity: float | None = None
    c1: float = 3.0
    c2: float = 3.0
    reg_start: float = 0.2
    reg_ramp: float = 0.3
    loss: Literal["huber", "mse"] = "huber"
    huber_delta: float = 1.0
    bias: bool = True
    norm: InputNorm = "none"
    quantile_levels: tuple[float, ...] = ()
    init: Literal["zeros", "ridge"] = "zeros"

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        self.quantile_levels = check_quantile_levels(self.quantile_levels)
        if self.n_lags < 1 or self.n_forecasts < 1:
            raise ValueError("n_lags and n_forecasts must be positive")
        if self.sparsity is not None and not 0 < self.sparsity <= 1:
            raise ValueError(f"sparsity must be in (0, 1], got {self.sparsity}")
        if self.loss not in ("huber", "mse"):
            raise ValueError(f"loss must be 'huber' or 'mse', got {self.loss!r}")
        check_input_norm(self.norm)
        if self.init not in ("zeros", "ridge"):
            raise ValueError(f"init must be 'zeros' or 'ridge', got {self.init!r}")
        if self.init == "ridge" and (self.hidden_sizes or not self.bias):
            raise ValueError("init 'ridge' needs the linear model: no hidden_sizes, and bias on for the intercept")


def sparsity_penalty(weights: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """R(theta) = mean_i [2 / (1 + exp(-c1 * |theta_i|^(1/c2))) - 1]: ~|theta| near 0, saturating at 1.

    |theta|^(1/c2) has an infinite slope at 0 (c2 > 1), and a weight that is exactly 0 (the zero start, or a lag
    that norm "last" makes 0 in every window) turned the whole gradient into NaN. Such a weight gets the
    subgradient 0 instead; the value is unchanged."""
    magnitude = weights.abs()
    nonzero = magnitude > 0
    root = torch.where(nonzero, torch.where(nonzero, magnitude, 1.0).pow(1.0 / c2), 0.0)
    return (2.0 / (1.0 + torch.exp(-c1 * root)) - 1.0).mean()


class ARNet(ForecastModel):
    kind = "arnet"

    def __init__(self, config: ARNetConfig) -> None:
        super().__init__()
        self.config = config
        sizes = (config.n_lags, *config.hidden_sizes, config.n_forecasts)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(n_in, n_out, bias=config.bias))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        if not config.hidden_sizes:
            nn.init.zeros_(self.net[0].weight)  # the AR start of the paper: no coefficient assumed
        self.register_buffer("reg_lambda", torch.zeros(()))
        probs = self.quantile_probs
        if probs:  # on the last hidden layer's features (the lags without hidden layers), one block per quantile
            self.quantile_head = nn.Linear(sizes[-2], config.n_forecasts * len(probs))
            self.register_buffer("probs", torch.tensor(probs, dtype=torch.float32), persistent=False)
            # Start at a unit normal's quantiles (the data are standardised, so errors are at most that wide): from
            # zero offsets the head needed several times the epochs the point forecast does.
            nn.init.zeros_(self.quantile_head.weight)
            with torch.no_grad():
                start = torch.special.ndtri(self.probs)[:, None].expand(-1, config.n_forecasts)
                self.quantile_head.bias.copy_(start.reshape(-1))

    @property
    def context_length(self) -> int:
        return self.config.n_lags

    @property
    def step(self) -> int:
        return self.config.n_forecasts

    @property
    def quantile_probs(self) -> tuple[float, ...]:
        return quantile_probs(self.config.quantile_levels) if self.config.quantile_levels else ()

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The level (B, 1, C) or None, and the last layer's input (B * C, F) of windows x (B, L, C)."""
        batch, lags, channels = x.shape
        # "none" adds nothing to the graph, so runs and artifacts from before ``norm`` existed rebuild identically.
        level = None if self.config.norm == "none" else window_level(x, self.config.norm)
        if level is not None:
            x = x - level
        return level, self.net[:-1](x.permute(0, 2, 1).reshape(batch * channels, lags))

    def forward(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, y_mark: torch.Tensor | None = None
    ) -> torch.Tensor:
        level, features = self._features(x)
        out = self.net[-1](features).reshape(x.shape[0], x.shape[2], -1).permute(0, 2, 1)
        return out if level is None else out + level

    def forward_quantiles(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, y_mark: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The point forecast (detached: the pinball loss trains the offsets, not the point) plus learnt offsets."""
        if not self.quantile_probs:
            return super().forward_quantiles(x)
        batch, _, channels = x.shape
        level, features = self._features(x)
        point = self.net[-1](features).detach()  # (B * C, H)
        offsets = self.quantile_head(features).reshape(batch * channels, len(self.quantile_probs), -1)
        out = (point[:, None] + offsets).reshape(batch, channels, *offsets.shape[1:]).permute(0, 2, 3, 1)
        return ordered(out if level is None else out + level[:, None])

    def warm_start(self, train: WindowDataset, val: WindowDataset) -> dict[str, Any] | None:
        if self.config.init != "ridge":
            return None
        cfg = self.config
        ridge = Linear(LinearConfig(lookback=cfg.n_lags, horizon=cfg.n_forecasts, norm=cfg.norm))
        chosen = ridge.fit_closed_form(train, val)
        with torch.no_grad():
            self.net[0].weight.copy_(ridge.weight[0].T)
            self.net[0].bias.copy_(ridge.bias[0, 0])
        return {"ridge_alpha": chosen["alpha"]}

    def ar_coefficients(self) -> torch.Tensor:
        """(n_forecasts, p) coefficients of the linear model, lag 1 first (only for the linear model)."""
        if self.config.hidden_sizes:
            raise ValueError("a model with hidden layers has no AR coefficients")
        return self.net[0].weight.detach().flip(-1)

    def _regularisation_weight(self, progress: float) -> float:
        cfg = self.config
        if cfg.sparsity is None or cfg.sparsity >= 1 or progress < cfg.reg_start:
            return 0.0
        return min(1.0, (progress - cfg.reg_start) / max(cfg.reg_ramp, 1e-9))

    def loss(self, batch: dict[str, torch.Tensor], progress: float) -> torch.Tensor:
        pred = self.predict(batch)
        if self.config.loss == "huber":
            data_loss = nn.functional.huber_loss(pred, batch["y"], delta=self.config.huber_delta)
        else:
            data_loss = nn.functional.mse_loss(pred, batch["y"])
        if self.quantile_probs:
            data_loss = data_loss + pinball_loss(self.forward_quantiles(batch["x"]), batch["y"], self.probs)
        weight = self._regularisation_weight(progress)
        if weight == 0.0:
            return data_loss
        penalty = sparsity_penalty(self.net[0].weight, self.config.c1, self.config.c2)
        return data_loss + weight * self.reg_lambda * penalty

    def on_epoch_end(self, progress: float, train_loss: float) -> None:
        cfg = self.config
        if cfg.sparsity is not None and cfg.sparsity < 1 and progress >= cfg.reg_start and self.reg_lambda == 0:
            c_lambda = math.sqrt(max(train_loss, 0.0)) / 100.0
            self.reg_lambda.fill_(c_lambda * (1.0 / cfg.sparsity - 1.0))

    def selection_from(self) -> float:
        if self.config.sparsity is None or self.config.sparsity >= 1:
            return 0.0
        return self.config.reg_start + self.config.reg_ramp


def _bind(params: dict[str, Any], facts: DataFacts) -> ARNetConfig:
    return ARNetConfig(**{**params, "n_lags": facts.config.lookback, "n_forecasts": facts.config.horizon})


def _search_space(trial: Any) -> dict[str, dict[str, Any]]:
    hidden = trial.suggest_categorical("hidden", [0, 32, 128])
    # the ridge start exists only for the linear model, so the choice is only offered there
    init = "zeros" if hidden else trial.suggest_categorical("init", ["zeros", "ridge"])
    return {
        "data": {"lookback": trial.suggest_categorical("lookback", [24, 48, 96, 168, 336])},
        "model": {
            "hidden_sizes": (hidden,) if hidden else (),
            "init": init,
            "loss": trial.suggest_categorical("loss", ["huber", "mse"]),
            "norm": trial.suggest_categorical("norm", list(INPUT_NORMS)),
            # the paper's regulariser: a target share of non-zero lags (1.0: off)
            "sparsity": trial.suggest_categorical("sparsity", [1.0, 0.5, 0.2, 0.05]),
        },
        "train": {
            "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        },
    }


SPEC = ModelSpec(
    ARNet,
    ARNetConfig,
    _bind,
    _search_space,
    tiny=TinySetup(data={"features": "S", "lookback": 48, "horizon": 12}, model={"hidden_sizes": (16,)}),
)
