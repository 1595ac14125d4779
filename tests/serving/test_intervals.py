"""Prediction intervals: the conformal table against a numpy reference, the adaptive update against a scalar loop,
and the gRPC API (levels, methods, errors, wire compatibility, ListModels) on a real server and real onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving.artifact import list_artifacts, read_artifact
from serving.client import ArcastClient
from serving.intervals import (
    CACHED_OFFSET_BYTES,
    MAX_LEVEL,
    PROBS,
    Calibration,
    adapt,
    adapt_needed,
    backtest_origins,
    backtest_residuals,
    conformal_quantiles,
    coverage,
    crps_from_quantiles,
    load_calibration,
    warm_levels,
    winkler,
)
from serving.proto.arcast.v1 import forecast_pb2, forecast_pb2_grpc
from serving.runners import load_runner
from tests.serving.conftest import start_server

MODEL = "etth1-arnet"


def _reference_quantile(sample: np.ndarray, p: float) -> float:
    """The conformal order statistic, written out: ceil((n+1)p)-th smallest above the median, floor below."""
    x = np.sort(sample[~np.isnan(sample)])
    n = len(x)
    k = int(np.ceil((n + 1) * p)) if p >= 0.5 else int(np.floor((n + 1) * p))
    return float(x[min(max(k, 1), n) - 1])


def test_conformal_quantiles_match_a_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    residuals = rng.standard_t(3, size=(57, 4, 2))
    residuals[50:, 2:] = np.nan  # later steps see fewer windows, as a rollout's last steps do
    table, counts = conformal_quantiles(residuals)
    assert counts.tolist() == [57, 57, 50, 50]
    for j in range(4):
        for c in range(2):
            for i in (0, 3, 20, 100, len(PROBS) - 5, len(PROBS) - 1):
                assert table[i, j, c] == pytest.approx(_reference_quantile(residuals[:, j, c], PROBS[i]), rel=1e-6)
    # In-sample, every central interval covers at least its level of the calibration residuals themselves.
    calibration = Calibration(PROBS, table, counts, {})
    for level in (0.5, 0.8, 0.9, 0.95):
        lo, hi = calibration.offsets(np.array(level), 4)
        seen = ~np.isnan(residuals)
        inside = (residuals >= lo) & (residuals <= hi)
        assert inside[seen].mean() >= level


def test_split_offsets_are_the_offsets_and_only_small_ones_are_kept() -> None:
    """The cached split-conformal offsets equal ``offsets`` (lower, upper) per level; a table beyond
    ``CACHED_OFFSET_BYTES`` (a long horizon of many channels) is computed per request, not kept: whatever levels and
    horizons callers send, the cache stays small."""
    rng = np.random.default_rng(3)
    table = np.sort(rng.normal(size=(len(PROBS), 200, 50)), axis=0)
    calibration = Calibration(PROBS, table, np.full(200, 100), {})
    small = calibration.split_offsets((0.8, 0.95), 4)
    lo, hi = calibration.offsets(np.array([0.8, 0.95])[:, None, None], 4)
    np.testing.assert_array_equal(small, np.stack([lo, hi], axis=1).reshape(2, 2, -1))
    assert calibration.split_offsets((0.8, 0.95), 4) is small
    large = calibration.split_offsets((0.9,), 200)  # 1 x 2 x 200 x 50 doubles: 160 kB
    assert large.nbytes > CACHED_OFFSET_BYTES and list(calibration._split) == [((0.8, 0.95), 4)]
    np.testing.assert_array_equal(calibration.split_offsets((0.9,), 200), large)


def test_needed_levels_of_residuals_tied_with_the_table() -> None:
    """Each residual's needed level equals the two-sided search's (first index with Q >= r, first with Q > r), also
    for residuals equal to table values and in a table with repeated values (few calibration windows), and NaN
    stays NaN."""
    rng = np.random.default_rng(4)
    table, counts = conformal_quantiles(rng.normal(size=(7, 5, 2)).round(1))  # 7 windows: many equal quantiles
    calibration = Calibration(PROBS, table, counts, {})
    residuals = rng.normal(size=(3, 40, 5, 2))
    residuals[:, :10] = table[rng.integers(0, len(PROBS), size=(3, 10, 5, 2)), np.arange(5)[:, None], np.arange(2)]
    residuals[0, 0, 0, 0] = np.nan
    need = calibration.needed_levels(residuals)
    probs, n = PROBS, len(PROBS)
    ties = 0
    for index in np.ndindex(residuals.shape):
        r, cell = residuals[index], calibration.cells[index[2], index[3]]
        if np.isnan(r):
            assert np.isnan(need[index])
            continue

        def level_at(i: int, r: float = r, cell: np.ndarray = cell) -> float:
            k = min(max(i, 1), n - 1)
            q0, q1 = cell[k - 1], cell[k]
            return probs[k - 1] + (r - q0) / (q1 - q0 if q1 > q0 else 1.0) * (probs[k] - probs[k - 1])

        first, last = int(np.searchsorted(cell, r, "left")), int(np.searchsorted(cell, r, "right"))
        ties += last > first
        up = probs[0] if first == 0 else np.inf if first >= n else level_at(first)
        down = probs[-1] if last >= n else -np.inf if last == 0 else level_at(last)
        assert need[index] == max(2 * up - 1, 1 - 2 * down)
    assert ties > 100  # the tied case is exercised, not only the usual one


def test_adaptive_update_matches_a_scalar_loop() -> None:
    rng = np.random.default_rng(1)
    table, counts = conformal_quantiles(rng.standard_normal((400, 3, 1)))
    calibration = Calibration(PROBS, table, counts, {})
    residuals = 2.5 * rng.standard_normal((2, 30, 3, 1))  # wider than calibrated: the level must rise
    residuals[1, :5] = np.nan
    levels = np.array([0.8, 0.9])
    adapted = adapt(calibration, levels, residuals, gamma=0.05, warm=False)  # the update from the nominal level
    for k, level in enumerate(levels):
        for b in range(2):
            for j in range(3):
                alpha = 1 - level
                for o in range(30):
                    r = residuals[b, o, j, 0]
                    if np.isnan(r):
                        continue
                    lo, hi = calibration.offsets(np.array(1 - alpha), 3)
                    miss = float(r < lo[j, 0] or r > hi[j, 0])
                    alpha += 0.05 * ((1 - level) - miss)
                assert adapted[k, b, j, 0] == pytest.approx(min(max(1 - alpha, 0.0), MAX_LEVEL))
    assert (adapted[:, :, :, 0].mean(axis=(1, 2)) > levels).all()


def test_warm_start_begins_at_the_windows_own_conformal_level() -> None:
    rng = np.random.default_rng(2)
    table, counts = conformal_quantiles(rng.standard_normal((400, 2, 1)))
    calibration = Calibration(PROBS, table, counts, {})
    residuals = 0.5 * rng.standard_normal((1, 40, 2, 1))  # narrower than calibrated: the level must fall
    residuals[0, -1, 1] = np.nan  # the last origin's second step not yet observed
    need = calibration.needed_levels(residuals)
    warm = warm_levels(np.array([0.8]), need, decay=1.0)  # every origin weighs alike: a rank
    for j in range(2):
        seen = np.sort(need[0, :, j, 0][~np.isnan(need[0, :, j, 0])])
        rank = int(np.ceil((len(seen) + 1) * 0.8))
        assert warm[0, 0, j, 0] == pytest.approx(min(seen[rank - 1], MAX_LEVEL))
        assert (seen <= warm[0, 0, j, 0]).mean() >= 0.8 and warm[0, 0, j, 0] < 0.8
    # gamma 0: the warm level itself; otherwise the update runs on from it
    np.testing.assert_allclose(adapt_needed(np.array([0.8]), need, 0.0, warm=True, decay=1.0), warm)


def test_warm_start_weighs_recent_origins_more() -> None:
    """The weighted conformal quantile (Barber et al., 2023): origin a rows before the forecast weighs decay ** a,
    the forecast itself 1; the level is the smallest needed level whose weight reaches l of the total."""
    oldest_first = np.array([0.1, 0.2, 0.3, 0.4])[None, :, None, None]  # weights 1/16, 1/8, 1/4, 1/2: total 1 15/16
    # level 0.4 wants 0.775 of the total weight: 1/16 + 1/8 + 1/4 + 1/2 = 0.9375 reaches it only with 0.4
    assert warm_levels(np.array([0.4]), oldest_first, decay=0.5).item() == 0.4
    # the same needs, the newest smallest: 1/2 + 1/4 = 0.75, + 1/8 = 0.875 reaches it at 0.3
    assert warm_levels(np.array([0.4]), oldest_first[:, ::-1], decay=0.5).item() == 0.3
    # level 0.5 wants 0.96875: all four weigh 0.9375, short of it: the widest level
    assert warm_levels(np.array([0.5]), oldest_first, decay=0.5).item() == MAX_LEVEL
    # an unseen origin weighs nothing; none seen: the nominal level
    unseen = oldest_first.copy()
    unseen[0, 3] = np.nan  # the newest: 1/16 + 1/8 + 1/4 = 0.4375 of 1.4375, level 0.3 wants 0.43125: 0.3
    assert warm_levels(np.array([0.3]), unseen, decay=0.5).item() == 0.3
    assert warm_levels(np.array([0.3]), np.full((1, 4, 1, 1), np.nan), decay=0.5).item() == 0.3
    # decay 1 is the ceil((n + 1) l)-th smallest, whatever the order
    rng = np.random.default_rng(3)
    need = np.round(rng.random((2, 50, 3, 2)), 2)  # ties
    need[rng.random(need.shape) < 0.2] = np.nan
    levels = np.array([0.5, 0.8, 0.95])
    got = warm_levels(levels, need, decay=1.0)
    for index in np.ndindex(2, 3, 2):
        seen = np.sort(need[index[0], :, index[1], index[2]])
        seen = seen[~np.isnan(seen)]
        for k, level in enumerate(levels):
            rank = int(np.ceil((len(seen) + 1) * level))
            expected = MAX_LEVEL if rank > len(seen) else min(seen[rank - 1], MAX_LEVEL)
            assert got[k, index[0], index[1], index[2]] == expected


def test_backtest_residuals_and_scores() -> None:
    history = np.arange(10, dtype=np.float64)[:, None]
    origins = backtest_origins(10, 4, 3)
    assert origins.tolist() == [7, 8, 9]
    forecasts = np.zeros((3, 2, 1))
    residuals = backtest_residuals(history, origins, forecasts)
    assert residuals[:, :, 0].tolist()[0] == [7.0, 8.0]
    assert residuals[2, 0, 0] == 9.0 and np.isnan(residuals[2, 1, 0]) and residuals[1, 1, 0] == 9.0
    lower, upper, actual = np.array([0.0, 0.0]), np.array([1.0, 1.0]), np.array([0.5, 3.0])
    assert coverage(lower, upper, actual) == 0.5
    assert winkler(lower, upper, actual, 0.8) == pytest.approx(1 + 2 / 0.2 * 2 / 2)
    # CRPS of a point mass at q against y is |q - y|; many equal quantiles give that back.
    probs = np.linspace(0.01, 0.99, 99)
    assert crps_from_quantiles(np.full((99, 1), 2.0), probs, np.array([5.0])) == pytest.approx(3.0, rel=0.02)


def _artifact(store: Path):
    return read_artifact(next(p for p in list_artifacts(store) if p.parent.name == MODEL))


def test_the_export_calibrates_on_the_validation_split(model_store: Path) -> None:
    artifact = _artifact(model_store)
    entry = artifact.manifest.facts["calibration"]
    calibration = load_calibration(artifact)
    assert calibration is not None and entry["file"] in artifact.manifest.files
    assert entry["split"] == "validation" and entry["methods"] == ["split_conformal", "adaptive"]
    # max_horizon 120 on the slice's 200 validation targets: half of them, every step its own rollout error.
    assert calibration.horizon == entry["horizon"] == 100
    assert calibration.windows[0] == 200 and calibration.windows[-1] == 101
    assert not np.allclose(calibration.quantiles[:, 0], calibration.quantiles[:, 40])


def test_split_conformal_intervals_over_grpc(model_store: Path, client: ArcastClient, histories: np.ndarray) -> None:
    plain = client.forecast(MODEL, list(histories[:3]), 24)
    result = client.forecast(MODEL, list(histories[:3]), 24, levels=[0.8, 0.95])
    calibration = load_calibration(_artifact(model_store))
    assert calibration is not None
    at = {round(float(p), 4): i for i, p in enumerate(PROBS)}
    for before, after in zip(plain.forecasts, result.forecasts, strict=True):
        np.testing.assert_array_equal(before.values, after.values)  # levels never change the forecast
        assert before.intervals == [] and [b.level for b in after.intervals] == [0.8, 0.95]
        for band in after.intervals:
            lo = calibration.quantiles[at[round((1 - band.level) / 2, 4)], :24]
            hi = calibration.quantiles[at[round((1 + band.level) / 2, 4)], :24]
            np.testing.assert_allclose(band.lower, after.values + lo, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(band.upper, after.values + hi, rtol=1e-6, atol=1e-6)
            assert band.adapted_levels is None
        assert (after.intervals[1].lower <= after.intervals[0].lower).all()


def test_an_old_client_request_gets_the_same_bytes(client: ArcastClient, histories: np.ndarray) -> None:
    """A request serialised without fields 5, 7-9 (what existing clients send) is answered as before."""
    request = ArcastClient.forecast_request(MODEL, list(histories[:2]), 12)
    wire = request.SerializeToString()
    stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
    response = stub.Forecast(forecast_pb2.ForecastRequest.FromString(wire), timeout=30)
    again = stub.Forecast(ArcastClient.forecast_request(MODEL, list(histories[:2]), 12, levels=[0.9]), timeout=30)
    for old, new in zip(response.forecasts, again.forecasts, strict=True):
        assert list(old.values) == list(new.values) and not old.intervals
        assert old.SerializeToString() == forecast_pb2.SeriesForecast(id=new.id, values=new.values).SerializeToString()


def test_adaptive_intervals_equal_the_offline_update(
    model_store: Path, client: ArcastClient, histories: np.ndarray
) -> None:
    artifact = _artifact(model_store)
    runner, calibration = load_runner(artifact), load_calibration(artifact)
    assert calibration is not None
    series = histories[:2].copy()
    series[1] = series[1] * 1.5 - 3  # a series off the calibrated regime
    result = client.forecast(MODEL, list(series), 6, levels=[0.8, 0.9], method="adaptive", adaptive_gamma=0.05)
    length = runner.context_length
    for i, forecast in enumerate(result.forecasts):
        history = series[i][:, None].astype(np.float64)
        origins = backtest_origins(len(history), length, 168)
        assert len(origins) == 60 - 48
        contexts = np.stack([history[t - length : t] for t in origins]).astype(np.float32)
        residuals = backtest_residuals(history, origins, runner.forecast(contexts, 6).astype(np.float64))
        expected = adapt(calibration, np.array([0.8, 0.9]), residuals[None], gamma=0.05)
        for k, band in enumerate(forecast.intervals):
            assert band.origins == len(origins)
            np.testing.assert_allclose(band.adapted_levels, expected[k, 0], atol=1e-9)
            lo, hi = calibration.offsets(expected[k, 0], 6)
            np.testing.assert_allclose(band.lower, forecast.values + lo, rtol=1e-6, atol=1e-5)
            np.testing.assert_allclose(band.upper, forecast.values + hi, rtol=1e-6, atol=1e-5)
    # No history beyond the context: nothing to adapt over, the split-conformal interval.
    short = client.forecast(MODEL, [histories[0][-48:]], 6, levels=[0.9], method="adaptive")
    split = client.forecast(MODEL, [histories[0][-48:]], 6, levels=[0.9])
    np.testing.assert_allclose(short.forecasts[0].intervals[0].lower, split.forecasts[0].intervals[0].lower)
    assert short.forecasts[0].intervals[0].origins == 0


@pytest.mark.parametrize(
    ("levels", "horizon", "extra", "needle"),
    [
        ([0.9, 0.0, 1.5, float("nan")], 12, {}, "levels[1]=0.0, levels[2]=1.5, levels[3]=nan"),
        ([0.01 * i for i in range(1, 18)], 12, {}, "17 levels, at most 16"),
        ([0.9995], 12, {}, "levels[0]=0.9995: beyond the widest calibrated level 0.998"),
        ([0.9, 0.9], 12, {}, "levels[1]=0.9: repeats levels[0]"),
        ([0.9], 101, {}, "horizon: 101 exceeds the 100 steps"),
        ([0.9], 12, {"interval_method": 7}, "interval_method: unknown value 7"),
        ([0.9], 12, {"interval_method": 1, "adaptive_gamma": 2.0}, "adaptive_gamma: 2.0"),
        ([0.9], 12, {"interval_method": 1, "adaptive_origins": 5000}, "adaptive_origins: 5000 exceeds"),
    ],
)
def test_bad_levels_get_invalid_argument_naming_them(
    client: ArcastClient, histories: np.ndarray, levels: list[float], horizon: int, extra: dict, needle: str
) -> None:
    request = ArcastClient.forecast_request(MODEL, [histories[0]], horizon)
    request.levels.extend(levels)
    for key, value in extra.items():
        setattr(request, key, value)
    stub = forecast_pb2_grpc.ForecastServiceStub(client.channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Forecast(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")


def test_list_models_and_a_model_without_calibration(
    arnet_run, client: ArcastClient, tmp_path: Path, histories: np.ndarray
) -> None:
    from forecasting.export import export_run

    info = next(m for m in client.list_models() if m.name == MODEL)
    assert list(info.intervals.methods) == ["split_conformal", "adaptive"]
    assert info.intervals.max_level == pytest.approx(MAX_LEVEL) and info.intervals.max_horizon == 100
    assert info.intervals.calibration_windows == 200

    export_run(arnet_run, tmp_path, "old-arnet", max_horizon=24, calibration=None)
    server = start_server(tmp_path)
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as old:
            assert not old.list_models()[0].HasField("intervals")
            assert old.forecast("old-arnet", [histories[0]], 12).forecasts[0].values.shape == (12, 1)
            with pytest.raises(grpc.RpcError) as err:
                old.forecast("old-arnet", [histories[0]], 12, levels=[0.9])
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "'old-arnet' version 1 has no interval calibration" in (err.value.details() or "")
    finally:
        server.stop(grace_s=1)


@pytest.mark.parametrize("method", ["split_conformal", "adaptive"])
def test_batch_and_client_cli_write_interval_columns(
    model_store: Path, server, client: ArcastClient, histories: np.ndarray, tmp_path: Path, method: str
) -> None:
    import polars as pl

    from serving.batch import run_batch
    from serving.cli import main

    stamps = np.datetime64("2016-07-01T00:00", "us") + np.arange(60) * np.timedelta64(1, "h")
    frame = pl.concat(
        pl.DataFrame({"series_id": f"s{i}", "timestamp": stamps, "value": histories[i]}) for i in range(3)
    )
    frame.write_parquet(tmp_path / "in.parquet")
    run_batch(
        model_store, MODEL, tmp_path / "in.parquet", tmp_path / "out.parquet", 12, levels=[0.8, 0.9], method=method
    )
    batch = pl.read_parquet(tmp_path / "out.parquet").sort("series_id", "step")
    assert {"lo_0.8", "hi_0.8", "lo_0.9", "hi_0.9"} <= set(batch.columns)
    online = client.forecast(MODEL, list(histories[:3]), 12, levels=[0.8, 0.9], method=method)
    for i, forecast in enumerate(online.forecasts):
        rows = batch.filter(pl.col("series_id") == f"s{i}")
        for band in forecast.intervals:
            name = f"{band.level:g}"
            np.testing.assert_allclose(rows[f"lo_{name}"].to_numpy(), band.lower[:, 0], rtol=1e-6, atol=1e-5)
            np.testing.assert_allclose(rows[f"hi_{name}"].to_numpy(), band.upper[:, 0], rtol=1e-6, atol=1e-5)
    args = ["forecast", "--target", f"127.0.0.1:{server.port}", "--model", MODEL, "--horizon", "12"]
    args += ["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "cli.csv"), "--levels", "0.8,0.9"]
    assert main([*args, "--method", method]) == 0
    cli = pl.read_csv(tmp_path / "cli.csv").sort("series_id", "step")
    np.testing.assert_allclose(cli["hi_0.9"].to_numpy(), batch["hi_0.9"].to_numpy(), rtol=1e-6, atol=1e-5)


# --- a model's own quantiles (trained with a pinball loss) ------------------------------------------------------

QUANTILE_MODEL = "etth1-linear-q"


@pytest.fixture(scope="module")
def quantile_run(etth1_slice: Path):
    """A `linear` on the ETTh1 slice (lookback 48, 12 values per step) that learnt the 80% and 90% bounds."""
    from arcast_core.training import TrainConfig
    from forecasting.data import DataConfig
    from forecasting.runs import train_run

    config = DataConfig(dataset=str(etth1_slice), features="S", target="OT", lookback=48, horizon=12)
    params = {"quantile_levels": (0.8, 0.9), "quantile_epochs": 3}
    return train_run("linear", config, params, TrainConfig(epochs=1, progress=False), evaluate_test=False)


@pytest.fixture(scope="module")
def quantile_client(quantile_run, tmp_path_factory: pytest.TempPathFactory):
    from forecasting.export import export_run

    store = tmp_path_factory.mktemp("quantile-store")
    export_run(quantile_run, store, QUANTILE_MODEL, max_horizon=24)
    server = start_server(store)
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as c:
            yield c, store
    finally:
        server.stop(grace_s=1)


def test_quantile_artifact_serves_its_own_quantiles_over_grpc(
    quantile_run, quantile_client, histories, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort
    import torch

    client, store = quantile_client
    info = client.list_models()[0]
    assert list(info.intervals.methods) == ["split_conformal", "adaptive", "quantile"]
    assert list(info.intervals.quantile_levels) == [0.8, 0.9] and info.intervals.quantile_max_horizon == 12
    artifact = read_artifact(next(iter(list_artifacts(store))))
    entry = artifact.manifest.facts["quantiles"]
    assert entry["probs"] == [0.05, 0.1, 0.9, 0.95] and artifact.manifest.parity["max_abs_diff_quantiles"] < 1e-4

    plain = client.forecast(QUANTILE_MODEL, list(histories[:3]), 10)
    runs, run = [], ort.InferenceSession.run

    def counted(session: ort.InferenceSession, outputs: Any, *args: Any, **kwargs: Any) -> Any:
        runs.append(outputs)
        return run(session, outputs, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counted)
    result = client.forecast(QUANTILE_MODEL, list(histories[:3]), 10, levels=[0.9, 0.8], method="quantile")
    assert runs == [["forecast", "quantiles"]]  # one run of the graph gives the forecast and its quantiles
    monkeypatch.undo()
    # parity: the served bounds are the torch model's quantiles, in the request's level order
    context = torch.from_numpy((histories[:3, -48:, None] - quantile_run.scaler.mean) / quantile_run.scaler.std)
    with torch.no_grad():
        scaled = quantile_run.model.forward_quantiles(context.float()).numpy()
    expected = scaled * quantile_run.scaler.std + quantile_run.scaler.mean  # (B, Q, 12, 1)
    for i, (before, after) in enumerate(zip(plain.forecasts, result.forecasts, strict=True)):
        np.testing.assert_array_equal(before.values, after.values)  # levels never change the forecast
        assert [b.level for b in after.intervals] == [0.9, 0.8]
        for band, (lo, hi) in zip(after.intervals, ((0, 3), (1, 2)), strict=True):
            np.testing.assert_allclose(band.lower, expected[i, lo, :10], rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(band.upper, expected[i, hi, :10], rtol=1e-5, atol=1e-4)
            assert band.adapted_levels is None and band.origins == 0
    # the same model's conformal calibration still serves any level
    assert client.forecast(QUANTILE_MODEL, [histories[0]], 10, levels=[0.85]).forecasts[0].intervals[0].level == 0.85


@pytest.mark.parametrize(
    ("model", "levels", "horizon", "needle"),
    [
        (QUANTILE_MODEL, [0.8, 0.85], 12, "levels[1]=0.85: the model's quantiles were trained for the levels 0.8, 0.9"),
        (QUANTILE_MODEL, [0.8], 13, "horizon: 13 exceeds the 12 steps model 'etth1-linear-q' learnt quantiles for"),
        (MODEL, [0.8], 12, "interval_method: QUANTILE, but model 'etth1-arnet' version 1 learnt no quantiles"),
    ],
)
def test_quantile_requests_outside_the_training_get_invalid_argument(
    client: ArcastClient, quantile_client, histories: np.ndarray, model: str, levels: list, horizon: int, needle: str
) -> None:
    target = quantile_client[0] if model == QUANTILE_MODEL else client
    with pytest.raises(grpc.RpcError) as err:
        target.forecast(model, [histories[0]], horizon, levels=levels, method="quantile")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")
    assert "SPLIT_CONFORMAL or ADAPTIVE" in (err.value.details() or "")  # both artifacts are also calibrated


def test_batch_job_writes_the_learnt_quantiles(quantile_client, histories: np.ndarray, tmp_path: Path) -> None:
    import polars as pl

    from serving.batch import run_batch

    client, store = quantile_client
    stamps = np.datetime64("2016-07-01T00:00", "us") + np.arange(60) * np.timedelta64(1, "h")
    frame = pl.concat(
        pl.DataFrame({"series_id": f"s{i}", "timestamp": stamps, "value": histories[i]}) for i in range(2)
    )
    frame.write_parquet(tmp_path / "in.parquet")
    run_batch(
        store, QUANTILE_MODEL, tmp_path / "in.parquet", tmp_path / "out.parquet", 8, levels=[0.9], method="quantile"
    )
    batch = pl.read_parquet(tmp_path / "out.parquet").sort("series_id", "step")
    online = client.forecast(QUANTILE_MODEL, list(histories[:2]), 8, levels=[0.9], method="quantile")
    for i, forecast in enumerate(online.forecasts):
        rows = batch.filter(pl.col("series_id") == f"s{i}")
        np.testing.assert_allclose(rows["lo_0.9"].to_numpy(), forecast.intervals[0].lower[:, 0], rtol=1e-6)
        np.testing.assert_allclose(rows["hi_0.9"].to_numpy(), forecast.intervals[0].upper[:, 0], rtol=1e-6)


def test_a_quantile_model_without_calibration_serves_its_quantiles_only(
    quantile_run, tmp_path: Path, histories: np.ndarray
) -> None:
    from forecasting.export import export_run

    export_run(quantile_run, tmp_path, "q-only", max_horizon=24, calibration=None)
    server = start_server(tmp_path)
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as c:
            support = c.list_models()[0].intervals
            assert list(support.methods) == ["quantile"] and support.max_horizon == 0
            assert list(support.quantile_levels) == [0.8, 0.9]
            assert len(c.forecast("q-only", [histories[0]], 12, levels=[0.8], method="quantile").forecasts[0].intervals)
            with pytest.raises(grpc.RpcError) as err:
                c.forecast("q-only", [histories[0]], 12, levels=[0.8])
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "or ask its learnt quantiles (interval_method QUANTILE)" in (err.value.details() or "")
    finally:
        server.stop(grace_s=1)
