"""The prediction-interval options of ``python -m serving forecast`` and ``batch``, and the client's output rows."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from serving.intervals import INTERVAL_METHODS, METHODS, interval_columns
from serving.tables import forecast_frame

if TYPE_CHECKING:
    from serving.client import Forecast


def _levels(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"comma-separated levels expected, e.g. 0.8,0.9,0.95 ({err})") from err


def add_interval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--levels",
        type=_levels,
        help="prediction intervals at these central levels, e.g. 0.8,0.9,0.95: lo_<level>/hi_<level> columns",
    )
    parser.add_argument(
        "--method",
        choices=INTERVAL_METHODS,
        default=METHODS[0],
        help="with --levels: split_conformal (the artifact's calibration, default), adaptive (adapted to the "
        "residuals over the last 336 origins of each series' history; send that much more history than the context) "
        "or quantile (the model's own quantiles, for the levels it was trained with)",
    )


def forecast_frame_with_intervals(forecast: Forecast, channels: list[str]) -> pl.DataFrame:
    """A client forecast as output rows (``serving.tables.forecast_frame``), its intervals as more columns."""
    frame = forecast_frame(forecast.id, forecast.values, channels, forecast.timestamps)
    if not forecast.intervals:
        return frame
    levels = [band.level for band in forecast.intervals]
    lower = np.stack([band.lower for band in forecast.intervals])
    upper = np.stack([band.upper for band in forecast.intervals])
    columns = interval_columns(levels, lower, upper, channels)
    return frame.with_columns(**{name: pl.Series(values) for name, values in columns.items()})
