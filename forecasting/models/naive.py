"""Naive forecast: the last observed value, repeated over the horizon.

The floor every other model must beat: on a random walk nothing does better. Nothing is fitted; the shared ``fit``
only measures its validation error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from forecasting.data import DataFacts, WindowDataset
from forecasting.models.base import LookbackHorizonModel, ModelSpec, TinySetup


@dataclass
class NaiveConfig:
    lookback: int = 96
    horizon: int = 24

    def __post_init__(self) -> None:
        if self.lookback < 1 or self.horizon < 1:
            raise ValueError("lookback and horizon must be positive")


class Naive(LookbackHorizonModel):
    kind = "naive"

    def __init__(self, config: NaiveConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, y_mark: torch.Tensor | None = None
    ) -> torch.Tensor:
        return x[:, -1:, :].repeat(1, self.config.horizon, 1)

    def fit_closed_form(self, train: WindowDataset, val: WindowDataset) -> dict[str, Any]:
        return {}


def _bind(params: dict[str, Any], facts: DataFacts) -> NaiveConfig:
    return NaiveConfig(**{**params, "lookback": facts.config.lookback, "horizon": facts.config.horizon})


def _search_space(trial: Any) -> dict[str, dict[str, Any]]:
    return {}  # nothing to tune: the lookback does not change the forecast


SPEC = ModelSpec(
    Naive,
    NaiveConfig,
    _bind,
    _search_space,
    tiny=TinySetup(data={"features": "S", "lookback": 24, "horizon": 12}, model={}),
)
