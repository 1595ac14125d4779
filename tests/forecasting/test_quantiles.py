"""Quantile outputs as a training option: the pinball loss against its formula, a quantile `linear` recovering the
known conditional quantiles of a synthetic AR(1) series, AR-Net's quantile head. Export and serving: the
gRPC tests in tests/serving/test_intervals.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, prepare_data
from forecasting.quantiles import check_quantile_levels, pinball_loss, quantile_probs
from forecasting.runs import train_run

PHI, SIGMA, LOOKBACK, HORIZON, STEPS = 0.8, 1.0, 8, 6, 20_000


def test_pinball_loss_equals_the_reference_formula() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 3, 4, 2))
    y = rng.standard_normal((5, 4, 2))
    probs = np.array([0.05, 0.5, 0.9])
    total = 0.0
    for b in range(5):
        for k, p in enumerate(probs):
            for h in range(4):
                for c in range(2):
                    u = y[b, h, c] - q[b, k, h, c]
                    total += p * u if u >= 0 else (p - 1) * u
    got = pinball_loss(torch.from_numpy(q), torch.from_numpy(y), torch.from_numpy(probs))
    assert float(got) == pytest.approx(total / q.size, rel=1e-12)


def test_levels_become_probabilities_and_bad_ones_are_named() -> None:
    assert quantile_probs([0.9, 0.8]) == (0.05, 0.1, 0.9, 0.95)
    with pytest.raises(ValueError, match=r"quantile_levels\[1\]=1.0"):
        check_quantile_levels([0.8, 1.0])
    with pytest.raises(ValueError, match="repeats"):
        check_quantile_levels([0.8, 0.8])


def _write_ar1(path: Path, steps: int) -> Path:
    """An AR(1) series x_t = PHI x_{t-1} + N(0, SIGMA^2), hourly."""
    import polars as pl

    rng = np.random.default_rng(7)
    x = np.zeros(steps)
    for t in range(1, len(x)):
        x[t] = PHI * x[t - 1] + SIGMA * rng.standard_normal()
    stamps = np.datetime64("2020-01-01T00:00", "s") + np.arange(len(x)) * np.timedelta64(1, "h")
    pl.DataFrame({"date": stamps.astype(str), "OT": x}).write_csv(path)
    return path


@pytest.fixture(scope="module")
def ar1_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_ar1(tmp_path_factory.mktemp("ar1") / "ar1.csv", STEPS)


def _true_quantiles(last: np.ndarray, probs: tuple[float, ...]) -> np.ndarray:
    """(B, Q, H) conditional quantiles of x_{t+h} given x_t: PHI^h x_t + SIGMA sqrt(sum_{i<h} PHI^2i) z_p."""
    h = np.arange(1, HORIZON + 1)
    scale = SIGMA * np.sqrt(np.cumsum(PHI ** (2 * (h - 1))))
    z = norm.ppf(np.asarray(probs))
    return (PHI**h)[None, None] * last[:, None, None] + z[None, :, None] * scale[None, None]


def test_a_quantile_linear_model_recovers_known_quantiles(ar1_csv: Path) -> None:
    config = DataConfig(dataset=str(ar1_csv), features="S", target="OT", lookback=LOOKBACK, horizon=HORIZON)
    params = {"quantile_levels": (0.8, 0.95), "norm": "none", "quantile_epochs": 6}
    run = train_run("linear", config, params, TrainConfig(epochs=1, progress=False), evaluate_test=False)
    probs = run.model.quantile_probs
    assert probs == (0.025, 0.1, 0.9, 0.975)
    test = prepare_data(config).test
    batch = test.batch(np.arange(len(test)))
    with torch.no_grad():
        scaled = run.model.forward_quantiles(batch["x"]).numpy()[..., 0]  # (B, Q, H)
    learnt = scaled * run.scaler.std[0] + run.scaler.mean[0]
    last = batch["x"].numpy()[:, -1, 0] * run.scaler.std[0] + run.scaler.mean[0]
    truth = _true_quantiles(last, probs)
    # the learnt quantiles sit on the true ones (within 0.1 sigma on average, each quantile and step) ...
    assert np.abs(learnt - truth).mean(axis=0).max() < 0.1 * SIGMA
    # ... and cover the test actuals at their probabilities
    actual = batch["y"].numpy()[..., 0] * run.scaler.std[0] + run.scaler.mean[0]
    for k, p in enumerate(probs):
        assert (actual <= learnt[:, k]).mean() == pytest.approx(p, abs=0.03)
    assert (np.diff(learnt, axis=1) >= 0).all()  # never crossing


def test_arnet_learns_quantiles_beside_its_point_forecast(tmp_path: Path) -> None:
    path = _write_ar1(tmp_path / "ar1.csv", 3000)
    config = DataConfig(dataset=str(path), features="S", target="OT", lookback=LOOKBACK, horizon=HORIZON)
    train = TrainConfig(epochs=4, batch_size=64, lr=1e-2, progress=False)
    run = train_run("arnet", config, {"quantile_levels": (0.8,)}, train, evaluate_test=False)
    model = run.model
    assert "quantile_head.weight" in model.state_dict() and model.quantile_probs == (0.1, 0.9)
    val = prepare_data(config).val
    batch = val.batch(np.arange(len(val)))
    with torch.no_grad():
        quantiles = model.forward_quantiles(batch["x"]).numpy()  # (B, 2, H, 1)
        point = model(batch["x"]).numpy()
    inside = (batch["y"].numpy() >= quantiles[:, 0]) & (batch["y"].numpy() <= quantiles[:, 1])
    assert inside.mean() == pytest.approx(0.8, abs=0.06)
    assert ((quantiles[:, 0] <= point) & (point <= quantiles[:, 1])).mean() > 0.95
