"""The forecasting models by kind. Adding a model: a module with a ``SPEC`` (see ``base.ModelSpec``), one line here."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from forecasting.data import DataFacts
from forecasting.models import arnet, autotimes, informer, linear, naive, seasonal_naive
from forecasting.models.base import ForecastModel, ModelSpec

MODELS: dict[str, ModelSpec] = {
    spec.kind: spec
    for spec in (
        arnet.SPEC,
        informer.SPEC,
        autotimes.SPEC,
        naive.SPEC,
        seasonal_naive.SPEC,
        linear.SPEC,
    )
}


def model_spec(kind: str) -> ModelSpec:
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r} (known: {', '.join(MODELS)})")
    return MODELS[kind]


def build_model(kind: str, params: dict[str, Any], facts: DataFacts) -> ForecastModel:
    spec = model_spec(kind)
    known = {f.name for f in fields(spec.config_cls)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unknown {kind} parameters {sorted(unknown)} (known: {sorted(known)})")
    return spec.model_cls(spec.bind(params, facts))
