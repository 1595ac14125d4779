"""Seasonal naive forecast: the last full season, repeated over the horizon.

The value at horizon step h (0-based) is the one observed ``period - h mod period`` steps before the window's end,
so a series that repeats each season is forecast exactly. The floor for seasonal data (ETT's daily cycle);
nothing is fitted. The graph is an index lookup, so it exports like any window-shift model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from forecasting.data import DataFacts, WindowDataset
from forecasting.models.base import LookbackHorizonModel, ModelSpec, TinySetup
from forecasting.time_features import freq_step, parse_freq

_DAY, _WEEK = np.timedelta64(1, "D"), np.timedelta64(7, "D")


def season_length(freq: str) -> int:
    """Steps in one season at ``freq``: a day for sub-daily data (24 hourly, 96 at 15 min), a week of days, a
    year of weeks or of months."""
    count, unit = parse_freq(freq)
    if unit == "mo" and 12 % count == 0:
        return 12 // count
    try:
        step = freq_step(freq)
    except ValueError as err:
        raise ValueError(f"no season is defined for frequency {freq!r}: set the period ({err})") from err
    if step < _DAY and _DAY % step == np.timedelta64(0, "s"):
        return int(_DAY // step)
    if step == _DAY:
        return 7
    if step == _WEEK:
        return 52
    raise ValueError(f"no season is defined for frequency {freq!r}: set the period")


@dataclass
class SeasonalNaiveConfig:
    """period: steps per season; None (as a parameter) is resolved by ``bind`` from the data's frequency."""

    lookback: int = 96
    horizon: int = 24
    period: int | None = None

    def __post_init__(self) -> None:
        if self.period is None:
            raise ValueError("period must be set (bind resolves None from the data's frequency)")
        if self.period < 1 or self.horizon < 1:
            raise ValueError("period and horizon must be positive")
        if self.lookback < self.period:
            raise ValueError(f"lookback ({self.lookback}) must be at least the period ({self.period})")


class SeasonalNaive(LookbackHorizonModel):
    kind = "seasonal_naive"
    index: torch.Tensor  # the window positions forecast at each horizon step

    def __init__(self, config: SeasonalNaiveConfig) -> None:
        super().__init__()
        self.config = config
        period = int(config.period or 0)
        index = config.lookback - period + torch.arange(config.horizon) % period
        self.register_buffer("index", index, persistent=False)  # derived from the config: not saved

    def forward(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, y_mark: torch.Tensor | None = None
    ) -> torch.Tensor:
        return x.index_select(1, self.index)

    def fit_closed_form(self, train: WindowDataset, val: WindowDataset) -> dict[str, Any]:
        return {}


def _bind(params: dict[str, Any], facts: DataFacts) -> SeasonalNaiveConfig:
    period = params.get("period") or season_length(facts.freq)
    return SeasonalNaiveConfig(lookback=facts.config.lookback, horizon=facts.config.horizon, period=period)


def _search_space(trial: Any) -> dict[str, dict[str, Any]]:
    return {}  # the period is the data's season; the lookback beyond one season is unused


SPEC = ModelSpec(
    SeasonalNaive,
    SeasonalNaiveConfig,
    _bind,
    _search_space,
    tiny=TinySetup(data={"features": "M", "lookback": 48, "horizon": 12}, model={}),
)
