"""Shared fixtures: the benchmark data is found exactly as the package finds it (recsys.data.find_data_dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.data import InteractionData, find_data_dir, load_dataset


@pytest.fixture(scope="session")
def amazon_data_dir() -> Path:
    return find_data_dir(None)


@pytest.fixture(scope="session")
def beauty(amazon_data_dir: Path) -> InteractionData:
    return load_dataset("beauty", amazon_data_dir)
