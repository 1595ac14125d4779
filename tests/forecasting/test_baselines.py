"""The baselines (naive, seasonal naive, closed-form ridge) against references computed here on the ETTh1 slice.

Export and serving parity are the model contract's (tests/forecasting/test_model_contract.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, PreparedData, data_facts, prepare_data
from forecasting.models import build_model
from forecasting.models.linear import Linear
from forecasting.models.seasonal_naive import season_length
from forecasting.runs import load_run, save_run, train_run
from forecasting.training import predict_dataset, validation_loss
from forecasting.tuning import tune

LOOKBACK, HORIZON = 48, 12


@pytest.fixture(scope="module")
def prepared(etth1_slice: Path) -> PreparedData:
    return prepare_data(DataConfig(dataset=str(etth1_slice), features="M", lookback=LOOKBACK, horizon=HORIZON))


def fitted_linear(prepared: PreparedData, **params: object) -> Linear:
    model = build_model("linear", params, prepared.facts())
    assert isinstance(model, Linear)
    model.fit_closed_form(prepared.train, prepared.val)
    return model


def reference_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """W, b minimising |y - x W - b|^2 + alpha * rows * |W|^2: centred, then lstsq on the augmented system."""
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mean_x, y - mean_y
    if alpha > 0:
        xc = np.vstack([xc, np.sqrt(alpha * len(x)) * np.eye(x.shape[1])])
        yc = np.vstack([yc, np.zeros((x.shape[1], y.shape[1]))])
    weight = np.linalg.lstsq(xc, yc, rcond=None)[0]
    return weight, mean_y - mean_x @ weight


def design(prepared: PreparedData, decomposition: bool, kernel: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Explicit (windows, channels, features) and (windows, channels, horizon), norm "last", in float64 numpy."""
    batch = prepared.train.batch(np.arange(len(prepared.train)))
    x, y = batch["x"].numpy().astype(np.float64), batch["y"].numpy().astype(np.float64)
    level = x[:, -1:, :]
    z, target = (x - level).transpose(0, 2, 1), (y - level).transpose(0, 2, 1)
    if decomposition:
        front = (kernel - 1) // 2
        padded = np.pad(z, ((0, 0), (0, 0), (front, kernel - 1 - front)), mode="edge")
        trend = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=-1).mean(axis=-1)
        z = np.concatenate([z - trend, trend], axis=-1)
    return z, target


def relative_gap(actual: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual.numpy().astype(np.float64) - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize(
    ("alpha", "per_channel", "decomposition"),
    [(0.0, False, False), (0.0, True, False), (0.01, False, False), (0.01, True, True), (1.0, False, True)],
)
def test_ridge_equals_least_squares_reference(
    prepared: PreparedData, alpha: float, per_channel: bool, decomposition: bool
) -> None:
    model = fitted_linear(prepared, alpha=alpha, per_channel=per_channel, decomposition=decomposition)
    z, target = design(prepared, decomposition)
    groups = [(z[:, c], target[:, c]) for c in range(z.shape[1])] if per_channel else [(z, target)]
    for g, (x, y) in enumerate(groups):
        weight, bias = reference_ridge(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), alpha)
        assert relative_gap(model.weight[g], weight) < 1e-6
        assert relative_gap(model.bias[g, 0], bias) < 1e-6
    assert model.config.alpha == alpha


def test_chosen_alpha_has_the_lowest_validation_mse(prepared: PreparedData) -> None:
    alphas = (0.0, 1e-3, 0.1, 10.0, 1000.0)
    chosen = fitted_linear(prepared, alphas=alphas, norm="none")
    measured = [validation_loss(fitted_linear(prepared, alpha=a, norm="none"), prepared.val) for a in alphas]
    assert chosen.config.alpha == alphas[int(np.argmin(measured))]
    assert len(set(measured)) == len(alphas)  # the grid does change the fit
    run = train_run("linear", prepared.config, {"alphas": alphas, "norm": "none"}, prepared=prepared)
    recorded = [h["val_loss"] for h in run.fit["history"]]
    np.testing.assert_allclose(recorded, measured, rtol=1e-5)  # from the Gram matrices, every validation window
    assert run.fit["best_val_loss"] == pytest.approx(min(measured), rel=1e-6) and run.fit["epochs_run"] == 1


@pytest.mark.parametrize("norm", ["last", "mean"])
def test_linear_follows_the_level(prepared: PreparedData, norm: str) -> None:
    model = fitted_linear(prepared, norm=norm)
    x = prepared.test.batch(np.arange(8))["x"]
    shifted = model(x + 5.0)
    torch.testing.assert_close(shifted, model(x) + 5.0, atol=1e-4, rtol=0)


def test_naive_repeats_the_last_value(prepared: PreparedData) -> None:
    model = build_model("naive", {}, prepared.facts())
    x = torch.randn(3, LOOKBACK, 7)
    out = model(x)
    assert out.shape == (3, HORIZON, 7)
    assert torch.equal(out, x[:, -1:, :].expand(3, HORIZON, 7))


def test_seasonal_naive_repeats_the_last_season() -> None:
    lookback, horizon, period = 10, 9, 4  # a horizon over two seasons
    facts = data_facts(DataConfig(lookback=lookback, horizon=horizon, freq="1h"), 2)
    model = build_model("seasonal_naive", {"period": period}, facts)
    x = torch.arange(2 * lookback * 2, dtype=torch.float32).reshape(2, lookback, 2)
    expected = x[:, [6, 7, 8, 9, 6, 7, 8, 9, 6], :]  # x[L - period + h mod period]
    assert torch.equal(model(x), expected)
    assert build_model("seasonal_naive", {}, data_facts(DataConfig(lookback=24, freq="1h"), 1)).config.period == 24


def test_season_length_by_frequency() -> None:
    assert [season_length(f) for f in ("15m", "1h", "1d", "1w")] == [96, 24, 7, 52]
    assert [season_length(f) for f in ("10m", "2h", "1mo")] == [144, 12, 12]  # any step that divides a day or year
    with pytest.raises(ValueError, match="no season is defined for frequency '7h'"):
        season_length("7h")
    with pytest.raises(ValueError, match=r"lookback \(12\) must be at least the period \(24\)"):
        build_model("seasonal_naive", {}, data_facts(DataConfig(lookback=12, freq="1h"), 1))


def test_baselines_fit_without_sgd(prepared: PreparedData) -> None:
    for kind in ("naive", "seasonal_naive"):
        run = train_run(kind, prepared.config, {}, TrainConfig(progress=False), prepared=prepared)
        assert (run.fit["best_epoch"], run.fit["epochs_run"]) == (0, 1)
        assert run.fit["best_val_loss"] == pytest.approx(validation_loss(run.model, prepared.val))


def test_saved_linear_run_reloads_with_identical_predictions(prepared: PreparedData, tmp_path: Path) -> None:
    run = train_run("linear", prepared.config, {"decomposition": True}, prepared=prepared)
    loaded = load_run(save_run(run, tmp_path / "run"))
    np.testing.assert_array_equal(
        predict_dataset(loaded.model, prepared.test), predict_dataset(run.model, prepared.test)
    )


@pytest.mark.parametrize("kind", ["linear", "naive"])
def test_tune_closed_form_models(etth1_slice: Path, tmp_path: Path, kind: str) -> None:
    data = DataConfig(dataset=str(etth1_slice), lookback=LOOKBACK, horizon=HORIZON)
    best = tune(kind, data, TrainConfig(progress=False), n_trials=3, out_dir=tmp_path)
    assert best["n_trials"] == 3 and np.isfinite(best["best_value"])
