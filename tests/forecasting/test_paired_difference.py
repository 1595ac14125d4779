"""The Diebold-Mariano comparison of two forecasts' per-window losses (bench/paired.py's statistic)."""

from __future__ import annotations

import numpy as np
import pytest

from forecasting.metrics import paired_difference


def test_independent_losses_give_the_textbook_standard_error() -> None:
    rng = np.random.default_rng(0)
    b = rng.gamma(2.0, 0.05, 4000)
    a = b - 0.01 + rng.normal(0, 0.02, 4000)
    got = paired_difference(a, b, lag=0)
    d = a - b
    assert got["mean_difference"] == pytest.approx(d.mean())
    assert got["se"] == pytest.approx(d.std() / np.sqrt(len(d)))
    assert got["ci95"][0] < -0.01 < got["ci95"][1]
    assert got["dm_statistic"] < -10 and got["p_value"] < 1e-6
    assert (got["windows"], got["lag"]) == (4000, 0)


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    noise = rng.normal(0, 1, n)
    out = np.empty(n)
    out[0] = noise[0] / np.sqrt(1 - phi**2)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + noise[t]
    return out


def test_correlated_windows_need_the_long_run_variance() -> None:
    """Equal forecasts whose loss difference is persistent (as overlapping windows' are): ignoring the correlation
    (lag 0) finds a 'significant' difference far more often than 5%; the Newey-West variance keeps it near 5%."""
    rng = np.random.default_rng(1)
    rejected = {0: 0, 60: 0}
    trials = 300
    for _ in range(trials):
        d = _ar1(rng, 2000, 0.9)
        for lag in rejected:
            rejected[lag] += paired_difference(d, np.zeros_like(d), lag)["p_value"] < 0.05
    assert rejected[0] / trials > 0.4
    assert rejected[60] / trials < 0.15  # HAC over-rejects a little at this persistence (seeds 1-3: 7 to 12%)


def test_a_lag_beyond_the_windows_is_capped_and_bad_shapes_are_refused() -> None:
    d = np.array([0.3, 0.1, 0.2])
    assert paired_difference(d, np.zeros(3), lag=10)["lag"] == 2
    with pytest.raises(ValueError, match="one loss per window"):
        paired_difference(np.zeros((2, 2)), np.zeros((2, 2)), lag=1)
    with pytest.raises(ValueError, match="one loss per window"):
        paired_difference(np.zeros(1), np.zeros(1), lag=1)
