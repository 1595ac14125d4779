"""Informer: shapes, ProbSparse attention, distilling, decoder causality, deterministic eval, export and rollout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, data_facts, prepare_data
from forecasting.export import ServingGraph, export_run
from forecasting.models import build_model
from forecasting.models.informer import (
    AttentionLayer,
    ConvLayer,
    Decoder,
    DecoderLayer,
    FullAttention,
    Informer,
    InformerConfig,
    ProbAttention,
    even_key_index,
    prob_sizes,
)
from forecasting.training import validation_loss
from serving.artifact import read_artifact
from serving.runners.window_shift import TimeFeatureSpec, WindowShiftModel, WindowShiftRollout, window_shift

LOOKBACK, LABEL, HORIZON = 48, 24, 12  # long enough that ProbSparse really is sparse (u = 20 of 48, 24 and 36)
TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and do not fight the other jobs on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(channels: int = 7, **overrides) -> Informer:
    params = {"seq_len": LOOKBACK, "label_len": LABEL, "pred_len": HORIZON, **TINY, **overrides}
    return Informer(InformerConfig(enc_in=channels, dec_in=channels, c_out=channels, **params))


def inputs(batch: int, channels: int, seed: int = 0, label: int = LABEL) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, LOOKBACK, channels, generator=g),
        torch.rand(batch, LOOKBACK, 4, generator=g) - 0.5,
        torch.rand(batch, label + HORIZON, 4, generator=g) - 0.5,
    )


@pytest.mark.parametrize("channels", [7, 1])
@pytest.mark.parametrize(
    "variant",
    [{}, {"attn": "full"}, {"distil": False}, {"e_layers": (3, 2, 1)}, {"mix": False, "activation": "relu"}],
    ids=["paper", "full-attn", "no-distil", "stack", "no-mix"],
)
def test_shapes_multivariate_and_univariate(channels: int, variant: dict) -> None:
    torch.manual_seed(0)
    model = tiny(channels, **variant)
    x, x_mark, y_mark = inputs(4, channels)
    assert model.train()(x, x_mark, y_mark).shape == (4, HORIZON, channels)
    out = model.eval()(x, x_mark, y_mark)
    assert out.shape == (4, HORIZON, channels) and torch.isfinite(out).all()
    assert (model.context_length, model.step) == (LOOKBACK, HORIZON)
    assert model.graph_inputs == ("context", "context_marks", "target_marks")


def test_instance_normalisation_is_off_by_default_and_follows_each_channels_level_and_scale() -> None:
    """With ``revin`` the forecast of a * x + b is a * forecast(x) + b per channel: the window's own statistics."""
    assert InformerConfig().revin is False
    torch.manual_seed(0)
    model = tiny(3, revin=True).eval()
    x, x_mark, y_mark = inputs(2, 3)
    scale, shift = torch.tensor([2.0, 0.5, 10.0]), torch.tensor([100.0, -3.0, 0.25])
    moved = model(x * scale + shift, x_mark, y_mark)
    torch.testing.assert_close(moved, model(x, x_mark, y_mark) * scale + shift, rtol=1e-4, atol=1e-3)


def test_instance_normalised_model_exports_with_parity(etth1_slice: Path, tmp_path: Path) -> None:
    from forecasting.runs import train_run

    data = DataConfig(dataset=str(etth1_slice), features="M", lookback=LOOKBACK, horizon=HORIZON, label_len=LABEL)
    run = train_run("informer", data, {**TINY, "revin": True}, TrainConfig(epochs=1, progress=False))
    artifact = export_run(run, tmp_path, "revin", max_horizon=2 * HORIZON)  # the export's parity gate must pass
    assert artifact.manifest.facts["model_config"]["revin"] is True


def test_label_len_zero_and_missing_marks() -> None:
    model = tiny(3, label_len=0).eval()
    x, x_mark, y_mark = inputs(2, 3, label=0)
    assert model(x, x_mark, y_mark).shape == (2, HORIZON, 3)
    with pytest.raises(ValueError, match="calendar features"):
        model(x)


def test_paper_defaults_and_binding(data_dir: Path) -> None:
    cfg = InformerConfig()
    assert (cfg.d_model, cfg.n_heads, cfg.e_layers, cfg.d_layers, cfg.d_ff, cfg.factor) == (512, 8, 2, 1, 2048, 5)
    assert (cfg.dropout, cfg.distil, cfg.activation, cfg.embed, cfg.output_attention, cfg.mix) == (
        0.05,
        True,
        "gelu",
        "timeF",
        False,
        True,
    )
    data = DataConfig(dataset="ETTm1", features="M", lookback=96, horizon=24, label_len=48, data_dir=str(data_dir))
    model = build_model("informer", {"d_model": 32, "n_heads": 4, "d_ff": 64}, data_facts(data, 7))
    c = model.config
    assert (c.seq_len, c.label_len, c.pred_len, c.enc_in, c.dec_in, c.c_out, c.freq) == (96, 48, 24, 7, 7, 7, "15m")
    assert model.enc_embedding.temporal_embedding.in_features == 5  # minute, hour, weekday, day, yearday


def test_sampling_sizes_follow_the_paper() -> None:
    assert prob_sizes(5, 96, 96) == (25, 25)  # c * ceil(ln 96) = 5 * 5
    assert prob_sizes(5, 48, 72) == (25, 20)
    assert prob_sizes(5, 12, 12) == (12, 12)  # capped at the length: every key, every query
    assert even_key_index(12, 12) == list(range(12))
    index = even_key_index(96, 25)
    assert len(set(index)) == 25 and index[0] >= 0 and index[-1] < 96
    assert max(np.diff(index)) - min(np.diff(index)) <= 1  # evenly spread


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_prob_attention_equals_full_when_sampling_covers_everything(mask: bool, mode: str) -> None:
    torch.manual_seed(1)
    q, k, v = (torch.randn(3, 12, 2, 8) for _ in range(3))  # (B, L, H, E): factor 5 covers L = 12 entirely
    prob = getattr(ProbAttention(mask, factor=5), mode)()
    full = getattr(FullAttention(mask, attention_dropout=0.0), mode)()
    torch.testing.assert_close(prob(q, k, v)[0], full(q, k, v)[0], atol=1e-6, rtol=1e-5)
    if not mask:  # cross-shaped inputs too (L_Q != L_K)
        k2, v2 = torch.randn(3, 20, 2, 8), torch.randn(3, 20, 2, 8)
        torch.testing.assert_close(
            ProbAttention(False, factor=8).eval()(q, k2, v2)[0], full(q, k2, v2)[0], atol=1e-6, rtol=1e-5
        )


def test_sparse_regime_selects_top_queries_and_the_rest_get_mean_v() -> None:
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 48, 2, 8) for _ in range(3))
    out = ProbAttention(False, factor=5).eval()(q, k, v)[0]  # u = 20 of 48 queries
    full = FullAttention(False, attention_dropout=0.0)(q, k, v)[0]
    is_full = torch.isclose(out, full, atol=1e-6).all(-1)  # (B, L, H)
    is_mean = torch.isclose(out, v.mean(1, keepdim=True).expand_as(v), atol=1e-6).all(-1)
    assert (is_full | is_mean).all() and (is_full.sum(1) == 20).all()
    # the selected queries are those with the largest measurement on the even key subset
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)
    sampled = qh @ kh[:, :, even_key_index(48, 20)].transpose(-2, -1)
    measure = sampled.max(-1).values - sampled.sum(-1) / 48
    expected = torch.zeros_like(measure, dtype=torch.bool).scatter(-1, measure.topk(20, -1).indices, True)
    assert torch.equal(is_full.transpose(1, 2), expected)


def test_distilling_halves_the_sequence() -> None:
    layer = ConvLayer(16).eval()
    assert layer(torch.randn(2, 96, 16)).shape == (2, 48, 16)
    assert layer(torch.randn(2, 25, 16)).shape == (2, 13, 16)  # ceil(L / 2)
    x = torch.randn(2, LOOKBACK, 16)
    assert tiny(e_layers=3).eval().encoder(x)[0].shape == (2, LOOKBACK // 4, 16)
    assert tiny(e_layers=3, distil=False).eval().encoder(x)[0].shape == (2, LOOKBACK, 16)
    # Informer†: encoders of 3, 2, 1 layers on the last 48, 24, 12 inputs, each distilled to 12 rows
    assert tiny(e_layers=(3, 2, 1)).eval().encoder(x)[0].shape == (2, 12 + 12 + 12, 16)


def _decoder(attn: str) -> Decoder:
    self_attn = ProbAttention(True, factor=5) if attn == "prob" else FullAttention(True, attention_dropout=0.0)
    layer = DecoderLayer(
        AttentionLayer(self_attn, 16, 2, mix=False),
        AttentionLayer(FullAttention(False, attention_dropout=0.0), 16, 2),
        16,
        32,
        0.0,
        "gelu",
    )
    return Decoder([layer], 16).eval()


@pytest.mark.parametrize("attn", ["full", "prob"])
def test_decoder_is_causal(attn: str) -> None:
    """A later decoder position (its input embedding, or its calendar features) never changes earlier outputs.

    Holds with the heads unmixed; ProbSparse needs n_top to cover every query (here L = 12), since its top-u
    selection is a competition across all positions. The official "mix" is not causal: see the next test.
    """
    torch.manual_seed(3)
    decoder, cross = _decoder(attn), torch.randn(2, 10, 16)
    x = torch.randn(2, 12, 16)
    for p in (5, 11):
        moved = x.clone()
        moved[:, p] += 3.0
        before, after = decoder(x, cross), decoder(moved, cross)
        torch.testing.assert_close(before[:, :p], after[:, :p], atol=1e-6, rtol=0)
        assert not torch.allclose(before[:, p], after[:, p])

    model = tiny(3, label_len=0, mix=False, attn=attn).eval()  # decoder of 12 positions: all covered
    x, x_mark, y_mark = inputs(2, 3, label=0)
    for p in (4, 10):
        moved = y_mark.clone()
        moved[:, p] += 0.4
        before, after = model(x, x_mark, y_mark), model(x, x_mark, moved)
        torch.testing.assert_close(before[:, :p], after[:, :p], atol=1e-6, rtol=0)
        assert not torch.allclose(before[:, p], after[:, p])


def test_official_head_mix_moves_positions() -> None:
    """With mix=True (the paper's default), row t of the mixed output holds positions H*t .. H*t+H-1 of a head."""
    torch.manual_seed(4)
    layer = AttentionLayer(FullAttention(True, attention_dropout=0.0), 16, 2, mix=True).eval()
    x = torch.randn(1, 12, 16)
    moved = x.clone()
    moved[:, 3] += 3.0
    assert not torch.allclose(layer(x, x, x)[0][:, 1], layer(moved, moved, moved)[0][:, 1])


def test_eval_is_deterministic_and_training_samples() -> None:
    torch.manual_seed(5)
    model = tiny(7, dropout=0.0)
    x, x_mark, y_mark = inputs(8, 7)
    model.eval()
    first = model(x, x_mark, y_mark)
    torch.manual_seed(123)
    torch.testing.assert_close(model(x, x_mark, y_mark), first, atol=0, rtol=0)
    model.train()  # the official random draw: another query selection per call
    torch.manual_seed(6)
    a = model(x, x_mark, y_mark)
    torch.manual_seed(7)
    assert not torch.equal(a, model(x, x_mark, y_mark))


@pytest.fixture(scope="module")
def informer_run(etth1_slice: Path, one_thread):
    from forecasting.runs import train_run

    data = DataConfig(dataset=str(etth1_slice), features="M", lookback=LOOKBACK, horizon=HORIZON, label_len=LABEL)
    return train_run("informer", data, dict(TINY), TrainConfig(epochs=1, batch_size=32, lr=1e-3, progress=False))


def test_even_sampling_costs_no_accuracy(informer_run) -> None:
    """Validation MSE with the fixed even key subset against the official random draw (5 draws)."""
    model, prepared = informer_run.model.eval(), prepare_data(informer_run.data)
    even = validation_loss(model, prepared.val)
    random = []
    try:
        model.set_eval_sampling("random")
        for seed in range(5):
            torch.manual_seed(seed)
            random.append(validation_loss(model, prepared.val))
    finally:
        model.set_eval_sampling("even")
    assert math.isfinite(even)
    assert abs(even - np.mean(random)) <= max(3 * np.std(random), 0.01 * np.mean(random)), (even, random)
    assert validation_loss(model, prepared.val) == even


@pytest.fixture(scope="module")
def informer_artifact(informer_run, tmp_path_factory: pytest.TempPathFactory):
    return export_run(informer_run, tmp_path_factory.mktemp("store"), "etth1-informer", max_horizon=50)


def test_export_parity_and_manifest(informer_artifact) -> None:
    m = informer_artifact.manifest
    assert m.model_kind == "informer" and m.freq == "1h"
    assert m.rollout == WindowShiftRollout(
        kind="window_shift",
        context_length=LOOKBACK,
        step=HORIZON,
        max_horizon=50,
        label_len=LABEL,
        chunked=True,
        time_features=TimeFeatureSpec("timeF", ("hour", "weekday", "day", "yearday")),
        rows_per_run=1024,  # its maps are small: the runners' default chunk
    )
    assert [(i.name, i.shape) for i in m.graphs["forecast"].inputs] == [
        ("context", ("batch", LOOKBACK, 7)),
        ("context_marks", ("batch", LOOKBACK, 4)),
        ("target_marks", ("batch", LABEL + HORIZON, 4)),
    ]
    assert m.parity["max_abs_diff_batch_1"] <= 1e-4 and m.parity["max_abs_diff_batch_32"] <= 1e-4
    assert max(m.parity.values()) <= 1e-4


def _test_windows(run, batch: int) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
    """Raw contexts, their timestamps and the scaled batch of the first ``batch`` test windows."""
    prepared = prepare_data(run.data)
    start = prepared.borders.test[0]
    index = np.arange(batch) * 7
    raw = np.stack([prepared.table.values[start + i : start + i + LOOKBACK] for i in index]).astype(np.float32)
    stamps = np.stack([prepared.table.timestamps[start + i : start + i + LOOKBACK] for i in index])
    return raw, stamps, prepared.test.batch(index)


@pytest.mark.parametrize("batch", [1, 32])
def test_served_forecast_matches_torch_on_real_windows(informer_run, informer_artifact, batch: int) -> None:
    served = WindowShiftModel.load(read_artifact(informer_artifact.path), intra_op_threads=1)
    raw, stamps, scaled = _test_windows(informer_run, batch)
    with torch.no_grad():  # the marks computed by serving equal the data layer's, so this is the training path
        expected = informer_run.model(scaled["x"], scaled["x_mark"], scaled["y_mark"]).numpy()
    actual = informer_run.scaler.transform(served.forecast(raw, HORIZON, stamps))
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_chunked_rollout_beyond_the_horizon(informer_run, informer_artifact) -> None:
    served = WindowShiftModel.load(read_artifact(informer_artifact.path), intra_op_threads=1)
    raw, stamps, _ = _test_windows(informer_run, 3)
    horizon = 3 * HORIZON + 5
    out = served.forecast(raw, horizon, stamps)
    assert out.shape == (3, horizon, 7) and np.isfinite(out).all()
    np.testing.assert_allclose(out[:, :HORIZON], served.forecast(raw, HORIZON, stamps), atol=1e-6)
    shared = served.forecast(raw[:1], horizon, stamps[0])  # one (L,) timestamp row for the batch
    np.testing.assert_allclose(shared, out[:1], atol=1e-6)

    graph = ServingGraph(informer_run.model, informer_run.scaler.mean, informer_run.scaler.std).eval()

    def run_torch(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return graph(*(torch.from_numpy(np.array(feeds[n])) for n in Informer.graph_inputs)).numpy()

    expected = window_shift(run_torch, raw, horizon, LOOKBACK, HORIZON, served.calendar, stamps)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="timestamps"):
        served.forecast(raw, HORIZON)
    with pytest.raises(ValueError, match="horizon"):
        served.forecast(raw, 51, stamps)


def test_long_horizons_serve_in_chunks_their_attention_maps_fit(
    informer_run, informer_artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ETTh1 M at 720 h (the paper's script: 336 encoder rows, 336 + 720 decoder rows), 8 heads of d_model 64
    long = Informer(InformerConfig(seq_len=336, label_len=336, pred_len=720, d_model=64, n_heads=8, d_ff=256))
    assert long.attention_bytes_per_row() == 4 * 8 * (336 + 720) * 336  # the decoder's cross-attention map
    assert (1 << 30) // (4 * long.attention_bytes_per_row()) < 32  # so such an artifact serves < 32 series a run

    served = WindowShiftModel.load(read_artifact(informer_artifact.path), intra_op_threads=1)
    raw, stamps, _ = _test_windows(informer_run, 5)
    whole = served.forecast(raw, 2 * HORIZON, stamps)
    monkeypatch.setattr(WindowShiftModel, "rows_per_run", property(lambda self: 2))
    np.testing.assert_allclose(served.forecast(raw, 2 * HORIZON, stamps), whole, atol=1e-6)
    np.testing.assert_allclose(
        served.forecast(raw, 2 * HORIZON, stamps[0]),
        served.forecast(raw, 2 * HORIZON, stamps[:1].repeat(5, 0)),
        atol=1e-6,
    )


def test_run_round_trip(informer_run, tmp_path: Path) -> None:
    from forecasting.runs import load_run, save_run

    save_run(informer_run, tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    x, x_mark, y_mark = inputs(3, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, x_mark, y_mark), informer_run.model.eval()(x, x_mark, y_mark))
    assert loaded.model.config == informer_run.model.config


def test_search_space_builds_a_model() -> None:
    import optuna

    from forecasting.tuning import trial_settings

    trial = optuna.trial.FixedTrial(
        {"lookback": 96, "label_share": 0.5, "d_model": 128, "e_layers": 3, "d_layers": 2, "factor": 3}
        | {"dropout": 0.1, "lr": 1e-4}
    )
    data, params, train = trial_settings("informer", trial, DataConfig(dataset="ETTh1", horizon=24), TrainConfig())
    assert (data.lookback, data.label_len, train.lr) == (96, 48, 1e-4)
    model = build_model("informer", params, data_facts(data, 1))
    assert (model.config.d_model, model.config.d_ff, model.config.e_layers, model.config.freq) == (128, 512, 3, "1h")


def test_one_forecast_over_grpc(informer_artifact, informer_run) -> None:
    """The served Informer over real gRPC equals the in-process onnxruntime rollout, with calendar features."""
    import grpc

    from serving.client import ArcastClient
    from tests.serving.conftest import start_server

    prepared = prepare_data(informer_run.data)
    start = prepared.borders.test[0]
    values = prepared.table.values[start : start + LOOKBACK + 5]
    stamps = prepared.table.timestamps[start : start + LOOKBACK + 5]
    server = start_server(informer_artifact.path.parents[1])
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            result = client.forecast("etth1-informer", [values], 30, timestamps=[stamps])
            with pytest.raises(grpc.RpcError) as info:
                client.forecast("etth1-informer", [values], 30)
    finally:
        server.stop(grace_s=1)
    served = WindowShiftModel.load(informer_artifact)
    expected = served.forecast(values[None].astype(np.float32), 30, stamps)[0]
    np.testing.assert_allclose(result.forecasts[0].values, expected, atol=1e-4)
    assert result.forecasts[0].timestamps[0] == stamps[-1] + np.timedelta64(1, "h")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "series[0].timestamps: required" in info.value.details()


def test_evaluating_the_artifact_reproduces_the_training_test_metrics(informer_artifact, informer_run) -> None:
    from forecasting.evaluate import evaluate_artifact

    report = evaluate_artifact(informer_artifact.path, progress=False)
    assert report["horizon"] == HORIZON and report["data_matches_training"]
    for key in ("mse", "mae"):
        assert report["metrics"]["scaled"][key] == pytest.approx(informer_run.metrics["test"]["scaled"][key], rel=1e-4)


def test_batch_scoring_passes_timestamps(informer_artifact, informer_run, tmp_path: Path) -> None:
    import polars as pl

    from serving.batch import errors_path, run_batch

    prepared = prepare_data(informer_run.data)
    channels = list(prepared.channels)
    frames = []
    for k, start in enumerate((100, 400, 700)):
        rows = slice(start, start + LOOKBACK + 3)
        frame = pl.DataFrame(prepared.table.values[rows], schema=channels, orient="row")
        frames.append(
            frame.with_columns(series_id=pl.lit(f"s{k}"), timestamp=pl.Series(prepared.table.timestamps[rows]))
        )
    path = tmp_path / "series.parquet"
    pl.concat(frames).write_parquet(path)
    out = tmp_path / "out.parquet"
    run_batch(informer_artifact.path.parents[1], "etth1-informer", path, out, horizon=20, progress=False)
    assert pl.read_parquet(errors_path(out)).is_empty()
    got = pl.read_parquet(out).filter(pl.col("series_id") == "s1").sort("step").select(channels).to_numpy()
    served = WindowShiftModel.load(informer_artifact)
    rows = slice(400, 400 + LOOKBACK + 3)
    expected = served.forecast(prepared.table.values[None, rows], 20, prepared.table.timestamps[rows])[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
