"""Prediction intervals over gRPC: a Forecast request's levels checked, the adaptive backtest batched with the
forecast itself, and the bounds encoded for the answer (see ``serving.intervals`` for the conformal methods,
``serving.quantile_head`` for a model's own quantiles)."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import grpc
import numpy as np

from serving import wire
from serving.intervals import (
    DEFAULT_GAMMA,
    DEFAULT_ORIGINS,
    MAX_LEVEL,
    MAX_ORIGINS,
    METHODS,
    QUANTILE,
    Calibration,
    adapted_levels,
    backtest_origins,
    check_levels,
    load_calibration,
)
from serving.proto.arcast.v1 import forecast_pb2, models_pb2
from serving.quantile_head import (
    QuantileHead,
    check_quantile_horizon,
    load_quantile_head,
    quantile_bands,
    run_quantiles,
)
from serving.rpc import Limits, RequestError, exhausted, invalid
from serving.runners.forecast import ForecastRunner

KNOWN_METHODS = frozenset(forecast_pb2.IntervalMethod.values())  # the enum's numbers, once

if TYPE_CHECKING:
    from serving.forecast_service import ValidatedRequest
    from serving.registry import LoadedModel


@dataclass
class IntervalPlan:
    """What one request's intervals need: the calibration, the levels and, adaptive, each series' backtest origins;
    quantile: the model's quantile output and which of its quantiles bound each level."""

    calibration: Calibration | None
    levels: np.ndarray  # (K,)
    key: tuple[float, ...]  # the same levels, as the reply's layout is cached by them
    checked: ValidatedRequest
    origins: list[np.ndarray] | None  # adaptive: per series, the history rows t of its backtest origins
    gamma: float
    head: QuantileHead | None = None
    picks: tuple[np.ndarray, np.ndarray] | None = None  # quantile: indices of each level's lower and upper bound

    @property
    def extra_rows(self) -> int:
        return 0 if self.origins is None else sum(len(o) for o in self.origins)

    def inputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The forecast's contexts (and timestamps) followed by every backtest origin's, for one batched run."""
        checked = self.checked
        if self.origins is None or not self.extra_rows:
            return checked.context, checked.context_stamps
        length = checked.context.shape[1]
        contexts, stamps = [checked.context], [checked.context_stamps]
        for history, past, origins in zip(checked.histories, checked.history_stamps, self.origins, strict=True):
            rows = origins[:, None] + np.arange(-length, 0)[None]
            contexts.append(history[rows].astype(np.float32))
            stamps.append(None if checked.context_stamps is None or past is None else past[rows])
        context = np.concatenate(contexts)
        if checked.context_stamps is None:
            return context, None
        return context, np.concatenate(cast(list[np.ndarray], stamps))

    def quantile_forecast(self) -> tuple[np.ndarray, list[memoryview]]:
        """QUANTILE: (point (B, h, C), each series' intervals encoded) from one run of the graph, both of its
        outputs (the merged runs of the batcher return the point forecast only)."""
        assert self.head is not None and self.picks is not None
        head, model, context, horizon = self.head, self.checked.model, self.checked.context, self.checked.horizon
        point, quantiles = model.run_now(len(context), lambda: run_quantiles(model.runner, head, context))
        bands = quantile_bands(quantiles, self.picks, horizon)  # (B, K, 2: lower and upper, horizon, C)
        encoded, values = wire.interval_layout(self.key, bands[0, 0, 0].size).buffer(len(bands))
        values[...] = bands.reshape(values.shape)
        return point[:, :horizon], encoded

    def bounds(self, out: np.ndarray) -> tuple[np.ndarray, list[memoryview]]:
        """(point (B, h, C), each series' intervals encoded for its SeriesForecast) from the run's output."""
        n = len(self.checked.context)
        assert self.calibration is not None
        if self.origins is None:  # split conformal: the same offsets for every series, added in the reply's bytes
            point = out[:n]
            offsets = self.calibration.split_offsets(self.key, point.shape[1])
            encoded, values = wire.interval_layout(self.key, offsets.shape[-1]).buffer(n)
            np.add(point.reshape(n, 1, 1, -1), offsets, out=values)  # in float64, as a forecast goes on the wire
            return point, encoded
        point = out[:n].astype(np.float64)
        horizon = point.shape[1]
        sizes = np.cumsum([n, *(len(o) for o in self.origins)])
        forecasts = [out[a:b].astype(np.float64) for a, b in itertools.pairwise(sizes)]
        levels = adapted_levels(
            self.calibration, self.levels, self.checked.histories, self.origins, forecasts, self.gamma
        )
        lo, hi = self.calibration.offsets(levels, horizon)
        origins = [len(o) for o in self.origins]
        return point, encode_adaptive(self.key, point[None] + lo, point[None] + hi, levels, origins)


@functools.lru_cache(maxsize=256)
def _checked_levels(levels: tuple[float, ...]) -> np.ndarray:
    """``check_levels`` once per distinct request levels (callers send the same few): read-only, it is shared."""
    checked = check_levels(levels)
    checked.flags.writeable = False
    return checked


def plan_intervals(request: wire.Request, checked: ValidatedRequest, limits: Limits) -> IntervalPlan | None:
    """None for a request without levels (nothing extra is done); else the checked plan, or the precise error."""
    if not request.levels:
        return None
    key = tuple(request.levels)
    try:
        levels = _checked_levels(key)
    except ValueError as err:
        raise invalid(str(err)) from None
    if request.interval_method not in KNOWN_METHODS:
        raise invalid(f"interval_method: unknown value {request.interval_method}")
    model = checked.model
    calibration = load_calibration(model.runner.artifact)
    if request.interval_method == forecast_pb2.QUANTILE:
        return _quantile_plan(levels, key, checked, calibration is not None)
    if calibration is None:
        learnt = load_quantile_head(model.runner.artifact) is not None
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"model {model.name!r} version {model.version} has no interval calibration (exported without it or by "
            "an older arcast): re-export it to serve levels"
            + (", or ask its learnt quantiles (interval_method QUANTILE)" if learnt else ""),
        )
    if checked.horizon > calibration.horizon:
        raise invalid(
            f"horizon: {checked.horizon} exceeds the {calibration.horizon} steps model {model.name!r} is calibrated "
            "for: intervals need a horizon within them"
        )
    if request.interval_method != forecast_pb2.ADAPTIVE:
        return IntervalPlan(calibration, levels, key, checked, None, 0.0)
    wanted = request.adaptive_origins or DEFAULT_ORIGINS
    if wanted > MAX_ORIGINS:
        raise invalid(f"adaptive_origins: {wanted} exceeds the limit of {MAX_ORIGINS}")
    gamma = request.adaptive_gamma or DEFAULT_GAMMA
    if not (np.isfinite(gamma) and 0 <= gamma <= 1):
        raise invalid(f"adaptive_gamma: {gamma!r} is outside [0, 1]")
    length = checked.context.shape[1]
    origins = [backtest_origins(len(h), length, wanted) for h in checked.histories]
    plan = IntervalPlan(calibration, levels, key, checked, origins, float(gamma))
    channels = checked.context.shape[2]
    answer = (len(checked.context) + plan.extra_rows) * checked.horizon * channels
    if answer > limits.max_forecast_values:
        raise exhausted(
            f"adaptive_origins: the forecast plus {plan.extra_rows} backtest rollouts of {checked.horizon} steps x "
            f"{channels} channels = {answer} values exceed the limit of {limits.max_forecast_values} per request "
            "(--max-forecast-values); send fewer origins or series"
        )
    return plan


def _quantile_plan(
    levels: np.ndarray, key: tuple[float, ...], checked: ValidatedRequest, calibrated: bool
) -> IntervalPlan:
    """The plan of a QUANTILE request, or INVALID_ARGUMENT naming the field (method, levels or horizon)."""
    model = checked.model
    head = load_quantile_head(model.runner.artifact)
    others = " (its conformal calibration serves any level: interval_method SPLIT_CONFORMAL or ADAPTIVE)"
    others = others if calibrated else ""
    if head is None:
        raise invalid(
            f"interval_method: QUANTILE, but model {model.name!r} version {model.version} learnt no quantiles "
            f"(train it with quantile_levels){others}"
        )
    try:
        picks = head.pick(levels)
        check_quantile_horizon(head, checked.horizon, model.name)
    except ValueError as err:
        raise invalid(f"{err}{others}") from None
    return IntervalPlan(None, levels, key, checked, None, 0.0, head, picks)


def encode_adaptive(
    levels: tuple[float, ...], lower: np.ndarray, upper: np.ndarray, adapted: np.ndarray, origins: list[int]
) -> list[memoryview]:
    """Each series' adaptive intervals encoded (``wire.interval_layout``) from bounds and adapted levels
    (K, B, h, C), with its count of origins (in its bytes: one layout per series)."""
    k, b = lower.shape[:2]
    stacked = np.stack([lower, upper, adapted], axis=2).reshape(k, b, 3, -1).swapaxes(0, 1)  # (B, K, 3, h * C)
    encoded = []
    for series, count in zip(stacked, origins, strict=True):
        one, values = wire.interval_layout(levels, stacked.shape[-1], True, count).buffer(1)
        values[0] = series
        encoded += one
    return encoded


def interval_support(model: LoadedModel) -> models_pb2.IntervalSupport | None:
    """What ListModels reports of a forecaster's intervals (None: neither calibration nor learnt quantiles)."""
    if not isinstance(model.runner, ForecastRunner):
        return None
    calibration = load_calibration(model.runner.artifact)
    head = load_quantile_head(model.runner.artifact)
    if calibration is None and head is None:
        return None
    support = models_pb2.IntervalSupport()
    if calibration is not None:
        support.methods.extend(METHODS)
        support.max_level, support.max_horizon = MAX_LEVEL, calibration.horizon
        support.calibration_windows = int(calibration.windows[0])
    if head is not None:
        support.methods.append(QUANTILE)
        support.quantile_levels.extend(head.levels)
        support.quantile_max_horizon = head.horizon
    return support
