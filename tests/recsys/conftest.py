"""Every recommendation test runs its torch and BLAS work on one thread (see tests/conftest.py ``one_thread``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def _single_threaded(one_thread: None) -> Iterator[None]:
    yield
