"""What every forecasting model offers the shared training, tuning and export code."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class ForecastModel(nn.Module):
    """A model mapping scaled windows to scaled forecasts.

    ``forward(x, x_mark, y_mark)`` takes x (B, L, C) and calendar features and returns (B, H, C), where H is
    ``step``: the values produced per call. Longer horizons are reached by the rollout named in
    ``rollout_kind``. Subclasses set ``kind`` and keep their config dataclass in ``self.config``.
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

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["x"], batch.get("x_mark"), batch.get("y_mark"))

    def loss(self, batch: dict[str, torch.Tensor], progress: float) -> torch.Tensor:
        """Training loss at ``progress`` (0..1 of the planned epochs); MSE unless a model says otherwise."""
        return nn.functional.mse_loss(self.predict(batch), batch["y"])

    def on_epoch_end(self, progress: float, train_loss: float) -> None:
        """Hook for schedules that depend on training progress (AR-Net's regulariser)."""

    def selection_from(self) -> float:
        """Progress from which a checkpoint may be kept as best or training stopped early."""
        return 0.0
