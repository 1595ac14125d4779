"""What every forecasting model offers the shared training, tuning and export code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from forecasting.data import DataFacts, WindowDataset


class ForecastModel(nn.Module):
    """A model mapping scaled windows to scaled forecasts.

    ``forward(x, x_mark, y_mark)`` takes x (B, L, C) and calendar features and returns (B, H, C), where H is
    ``step``: the values produced per call. Longer horizons are reached by the rollout named in
    ``rollout_kind``. Subclasses set ``kind`` and keep their config dataclass in ``self.config``.

    A model with a closed-form fit (the baselines: naive, seasonal naive, ridge) overrides ``fit_closed_form``;
    the shared ``fit`` then calls it instead of running SGD, so ``loss`` and the epoch hooks never run.
    """

    kind: ClassVar[str]
    rollout_kind: ClassVar[str] = "window_shift"
    # Inputs of the exported graph, in order: "context" (B, L, C) raw values; models using calendar
    # features add "context_marks" (B, L, F) and "target_marks" (B, label_len + H, F).
    graph_inputs: ClassVar[tuple[str, ...]] = ("context",)
    config: Any

    @property
    def context_length(self) -> int:
        raise NotImplementedError

    @property
    def step(self) -> int:
        raise NotImplementedError

    def fit_closed_form(self, train: WindowDataset, val: WindowDataset) -> dict[str, Any] | None:
        """Fit in place without SGD and return what was chosen (``history``: one dict of floats per candidate).

        None, the default, means the model is fitted by SGD.
        """
        return None

    def warm_start(self, train: WindowDataset, val: WindowDataset) -> dict[str, Any] | None:
        """Set starting weights from the data before SGD (AR-Net's ridge start) and return what was chosen; None, the
        default, means the initialisation stays as constructed."""
        return None

    def attention_bytes_per_row(self) -> int | None:
        """float32 bytes of the largest attention map one series needs in a forward pass, or None where nothing
        grows with the square of the window. Export turns it into the served artifact's rows per run."""
        return None

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["x"], batch.get("x_mark"), batch.get("y_mark"))

    @property
    def quantile_probs(self) -> tuple[float, ...]:
        """Probabilities of the quantiles the model learns beside its point forecast (``forecasting.quantiles``);
        empty, the default, for point forecasts only."""
        return ()

    def forward_quantiles(
        self, x: torch.Tensor, x_mark: torch.Tensor | None = None, y_mark: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, Q, H, C) quantiles at ``quantile_probs``, increasing along Q (the training scale)."""
        raise NotImplementedError(f"{self.kind} learns no quantiles")

    def loss(self, batch: dict[str, torch.Tensor], progress: float) -> torch.Tensor:
        """Training loss at ``progress`` (0..1 of the planned epochs); MSE unless a model says otherwise."""
        return nn.functional.mse_loss(self.predict(batch), batch["y"])

    def on_epoch_end(self, progress: float, train_loss: float) -> None:
        """Hook for schedules that depend on training progress (AR-Net's regulariser)."""

    def selection_from(self) -> float:
        """Progress from which a checkpoint may be kept as best or training stopped early."""
        return 0.0


class LookbackHorizonModel(ForecastModel):
    """A model whose config names its window ``lookback`` and its step ``horizon`` (the baselines)."""

    @property
    def context_length(self) -> int:
        return self.config.lookback

    @property
    def step(self) -> int:
        return self.config.horizon


@dataclass(frozen=True)
class TinySetup:
    """The smallest setting of a model that trains in seconds on a slice of a couple of thousand rows.

    data: DataConfig overrides (lookback, horizon, label_len, features); model: model parameters; assets:
    writes files the model needs offline into a folder (AutoTimes: a small random LLM backbone) and returns
    the parameters naming them. The model contract test (tests/forecasting/test_model_contract.py) uses it.
    """

    data: dict[str, Any]
    model: dict[str, Any]
    assets: Callable[[Path], dict[str, Any]] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model kind: its class, its config dataclass, how it binds to data, what Optuna may tune, its tiny setting.

    bind(params, facts) builds the config from user/tuned parameters and the data layer's resolved facts
    (lookback, horizon, channels, frequency, timestamps); it reads no files.
    search_space(trial) returns {"model": ..., "data": ..., "train": ...} parameter overrides for a trial.
    """

    model_cls: type[ForecastModel]
    config_cls: type
    bind: Callable[[dict[str, Any], DataFacts], Any]
    search_space: Callable[[Any], dict[str, dict[str, Any]]]
    tiny: TinySetup

    @property
    def kind(self) -> str:
        return self.model_cls.kind
