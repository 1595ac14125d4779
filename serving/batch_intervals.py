"""Prediction intervals in the batch job: the artifact's calibration applied to each whole series, the adaptive
backtest (``serving.intervals``) run in the same onnxruntime call as the forecasts, or the model's own quantiles
(``serving.quantile_head``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from serving.intervals import (
    ADAPTIVE,
    DEFAULT_GAMMA,
    DEFAULT_ORIGINS,
    INTERVAL_METHODS,
    QUANTILE,
    Calibration,
    adapted_levels,
    backtest_origins,
    check_levels,
    interval_columns,
    load_calibration,
)
from serving.quantile_head import (
    QuantileHead,
    check_quantile_horizon,
    load_quantile_head,
    quantile_bounds,
    run_quantiles,
)
from serving.runners.base import Runner
from serving.runners.forecast import ForecastRunner
from serving.tables import SeriesInput


@dataclass(frozen=True)
class BatchIntervals:
    calibration: Calibration | None
    levels: np.ndarray
    adaptive: bool
    origins: int = DEFAULT_ORIGINS
    gamma: float = DEFAULT_GAMMA
    head: QuantileHead | None = None  # quantile: the model's own quantiles, and which bound each level
    picks: tuple[np.ndarray, np.ndarray] | None = None

    def score(
        self,
        model: ForecastRunner,
        block: list[SeriesInput],
        context: np.ndarray,
        stamps: np.ndarray | None,
        horizon: int,
    ) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
        """The block's forecasts (B, h, C) and each series' interval columns."""
        length, n = model.context_length, len(block)
        channels = list(model.channels)
        if self.head is not None and self.picks is not None:  # one run gives the forecast and its quantiles
            point, quantiles = run_quantiles(model, self.head, context)
            lower, upper = quantile_bounds(quantiles, self.picks, horizon)
            return point[:, :horizon], [
                interval_columns(self.levels, lower[:, i], upper[:, i], channels) for i in range(n)
            ]
        origins: list[np.ndarray] = []
        if self.adaptive:  # a backtest window with a missing value forecasts NaN: its residuals are skipped
            origins = [backtest_origins(len(s.values), length, self.origins) for s in block]
            windows = [o[:, None] + np.arange(-length, 0)[None] for o in origins]
            pairs = list(zip(block, windows, strict=True))
            context = np.concatenate([context, *(s.values[w].astype(np.float32) for s, w in pairs)])
            if stamps is not None:
                stamps = np.concatenate([stamps, *(np.asarray(s.timestamps)[w] for s, w in pairs)])
        out = model.forecast(context, horizon, stamps)
        point = out[:n].astype(np.float64)
        assert self.calibration is not None
        if self.adaptive:
            sizes = np.cumsum([n, *(len(o) for o in origins)])
            forecasts = [out[a:b].astype(np.float64) for a, b in itertools.pairwise(sizes)]
            histories = [s.values.astype(np.float64) for s in block]
            levels = adapted_levels(self.calibration, self.levels, histories, origins, forecasts, self.gamma)
        else:
            levels = self.levels[:, None, None, None]
        lo, hi = self.calibration.offsets(levels, horizon)
        lower, upper = point[None] + lo, point[None] + hi
        columns = [interval_columns(self.levels, lower[:, i], upper[:, i], channels) for i in range(n)]
        return out[:n], columns


def check_intervals(model: Runner, name: str, horizon: int, levels: list[float], method: str) -> BatchIntervals:
    """The job's interval settings, or ValueError naming what is wrong (levels, method, calibration, horizon)."""
    if method not in INTERVAL_METHODS:
        raise ValueError(f"--method: {method!r} is not one of {', '.join(INTERVAL_METHODS)}")
    checked = check_levels(levels, "--levels")
    if not isinstance(model, ForecastRunner):
        raise ValueError("--levels: prediction intervals are for forecasting models")
    if method == QUANTILE:
        head = load_quantile_head(model.artifact)
        if head is None:
            raise ValueError(f"--method: model {name!r} learnt no quantiles (train it with quantile_levels)")
        picks = head.pick(checked, "--levels")
        check_quantile_horizon(head, horizon, name)
        return BatchIntervals(None, checked, False, head=head, picks=picks)
    calibration = load_calibration(model.artifact)
    if calibration is None:
        raise ValueError(f"--levels: model {name!r} version {model.artifact.version} has no interval calibration")
    if horizon > calibration.horizon:
        raise ValueError(f"--horizon: {horizon} exceeds the {calibration.horizon} steps {name!r} is calibrated for")
    return BatchIntervals(calibration, checked, method == ADAPTIVE)
