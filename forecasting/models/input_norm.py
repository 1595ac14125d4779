"""Input normalisation a linear-style model applies per window and channel, undone on its output.

"last" subtracts the window's last value (NLinear, Zeng et al. 2023), "mean" its mean over the lookback; both are
added back to the forecast, so the model learns changes from a level rather than the level itself, which is what
keeps it right when a series' level drifts between the training and the test period (ETTh1's does). "none" leaves
the window as it is. The same code runs in training, in the exported graph and in the torch reference.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

InputNorm = Literal["none", "last", "mean"]
INPUT_NORMS: tuple[str, ...] = get_args(InputNorm)


def check_input_norm(value: str) -> None:
    if value not in INPUT_NORMS:
        raise ValueError(f"norm must be one of {INPUT_NORMS}, got {value!r}")


def window_level(x: torch.Tensor, norm: str) -> torch.Tensor:
    """The level subtracted from each window of x (B, L, C): (B, 1, C), zeros for "none"."""
    if norm == "last":
        return x[:, -1:, :]
    if norm == "mean":
        return x.mean(dim=1, keepdim=True)
    if norm == "none":
        return torch.zeros_like(x[:, -1:, :])
    raise ValueError(f"norm must be one of {INPUT_NORMS}, got {norm!r}")
