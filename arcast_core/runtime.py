"""Seeding, device choice and the library versions an artifact records; torch is imported only when called."""

from __future__ import annotations

import platform
import random
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the global generators that initial weights and dropout draw from)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str | None = "auto") -> torch.device:
    """``"auto"`` or None: CUDA when available, else CPU; anything else as torch spells it (``"cuda:1"``)."""
    import torch

    if not requested or requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
