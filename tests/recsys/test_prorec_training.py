"""PRORec end to end on a dense Beauty slice: alignment works, the loss falls, and it beats popularity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.alignment import AlignmentConfig, alignment_report, collaborative_embeddings
from recsys.data import InteractionData, load_beauty_titles
from recsys.popularity import evaluate_popularity
from recsys.prorec_training import (
    GeneratorShape,
    GeneratorTrainConfig,
    PipelineConfig,
    PRORecRun,
    Stage1Config,
    evaluate_generator,
    fit_stage1_sasrec,
    load_run,
    popular_items_slice,
    save_run,
    train_pipeline,
)
from recsys.quantizer import QuantizerConfig, RQVAEConfig
from recsys.split import LeaveOneOutSplit, leave_one_out
from recsys.text_embeddings import embed_item_titles


@pytest.fixture(scope="module")
def dense_slice(beauty: InteractionData) -> dict[int, list[int]]:
    """The 500 most popular Beauty items, the first 4000 users keeping >= 3 of them (as in test_sasrec.py)."""
    return popular_items_slice(beauty.sequences, top_items=500, max_users=4000)


@pytest.fixture(scope="module")
def split(dense_slice: dict[int, list[int]]) -> LeaveOneOutSplit:
    return leave_one_out(dense_slice, max_history=20)


@pytest.fixture(scope="module")
def semantic(amazon_data_dir: Path, split: LeaveOneOutSplit, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    titles = load_beauty_titles(amazon_data_dir).texts
    return embed_item_titles(titles, split.item_map.raw_ids[1:], cache_dir=tmp_path_factory.mktemp("emb")).vectors


STAGE1 = Stage1Config(hidden=32, epochs=3, batch_size=128, lr=3e-3, alignment=AlignmentConfig(weight=0.5))


@pytest.fixture(scope="module")
def run(dense_slice: dict[int, list[int]], semantic: np.ndarray, amazon_data_dir: Path) -> PRORecRun:
    config = PipelineConfig(
        variant="prorec",
        stage1=STAGE1,
        quantizer=QuantizerConfig(
            level_sizes=(16, 16, 16),
            rqvae=RQVAEConfig(hidden=(64,), latent_dim=16, steps=None, epochs=20, batch_size=256),
        ),
        generator=GeneratorShape(d_model=64, heads=2, d_ff=128, decoder_layers=1, encoder_unit="item"),
        train=GeneratorTrainConfig(
            epochs=3, batch_size=128, lr=3e-3, eval_users=500, distill_weight=0.1, seed=0, progress=False
        ),
    )
    titles = load_beauty_titles(amazon_data_dir).texts
    return train_pipeline("beauty", dense_slice, config, titles=titles, semantic=semantic, evaluate_full=False)


def test_alignment_brings_collaborative_space_closer_to_titles(split: LeaveOneOutSplit, semantic: np.ndarray) -> None:
    plain_fit, _ = fit_stage1_sasrec(split, STAGE1, None, seed=0, progress=False)
    aligned_fit, report = fit_stage1_sasrec(split, STAGE1, semantic, seed=0, progress=False)
    plain, aligned = collaborative_embeddings(plain_fit.model), collaborative_embeddings(aligned_fit.model)
    before, after = alignment_report(plain, semantic, sample=500), alignment_report(aligned, semantic, sample=500)
    assert after["neighbour_overlap@10"] > 2 * before["neighbour_overlap@10"], (before, after)
    assert after["cka"] > before["cka"]
    assert report["train_loss_per_epoch"][-1] < report["train_loss_per_epoch"][0]


def test_training_lowers_the_loss_and_beats_popularity(run: PRORecRun, split: LeaveOneOutSplit) -> None:
    history = run.info["fit"]["history"]
    losses = [h["codes"] for h in history]
    uniform = float(np.mean(np.log(run.ids.level_sizes)))  # the code loss of a uniform guess at every level
    assert losses[-1] < losses[0] - 0.2 and losses[-1] < 0.75 * uniform, (losses, uniform)
    assert history[-1]["decoder_semantic"] < history[0]["decoder_semantic"]  # stage 2 is being learnt
    codes = run.info["codes"]
    assert len(np.unique(run.ids.codes, axis=0)) == split.num_items and codes["codebook_usage"][0] > 0.75
    generator = evaluate_generator(run.model, run.code_index(), split.validation, beam_width=20)
    popularity = evaluate_popularity(split, split.validation)
    # Measured with this seed: about 0.021 against 0.0097.
    assert generator["ndcg@10"] > 1.5 * popularity["ndcg@10"], (generator, popularity)
    assert generator["recall@20"] > generator["recall@10"] > generator["recall@5"]


def test_run_folder_round_trip(run: PRORecRun, split: LeaveOneOutSplit, tmp_path: Path) -> None:
    save_run(run, tmp_path / "run")
    again = load_run(tmp_path / "run")
    np.testing.assert_array_equal(again.ids.codes, run.ids.codes)
    assert again.ids.level_sizes == run.ids.level_sizes and again.variant == "prorec"
    assert again.titles is not None and again.titles[1] == run.titles[1]  # type: ignore[index]
    users = np.arange(300)
    expected = evaluate_generator(run.model, run.code_index(), split.test, users=users)
    assert evaluate_generator(again.model, again.code_index(), split.test, users=users) == expected


def test_training_by_steps_validates_every_eval_steps_with_warmup_and_decay(
    split: LeaveOneOutSplit, semantic: np.ndarray
) -> None:
    """Counting in steps: a validation round every eval_steps steps (the batches run on across passes), the rate
    warms up then decays as 1/sqrt(step), patience in steps, and the run records its steps."""
    from recsys.prorec_training import train_generator
    from recsys.semantic_ids import ItemEmbeddings, build_semantic_ids

    ids, _ = build_semantic_ids("tiger", ItemEmbeddings(semantic=semantic), QuantizerConfig("rkmeans", (8, 8, 8)))
    config = GeneratorTrainConfig(
        batch_size=1024,
        lr=2e-3,
        lr_schedule="inverse_sqrt",
        warmup_steps=4,
        eval_steps=8,  # rounds need not line up with passes over the transitions
        max_steps=24,
        patience_steps=400,
        eval_users=100,
        progress=False,
    )
    assert config.training(steps_per_epoch=70).epochs == 3 and config.training(70).patience == 50
    shape = GeneratorShape(
        d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=1, encoder_unit="item", user_buckets=64
    )
    fit = train_generator(split, ids, shape, config)  # with TIGER's hashed user token
    assert [h["steps"] for h in fit.history] == [8, 16, 24] and fit.steps == 24
    assert fit.history[0]["lr"] > fit.history[1]["lr"] > fit.history[2]["lr"]  # past the warm-up: decaying
    assert fit.history[2]["lr"] == pytest.approx(2e-3 * (4 / (4 + 20)) ** 0.5, rel=1e-3)
    assert fit.history[-1]["codes"] < fit.history[0]["codes"]
    assert fit.best_step in (8, 16, 24) and fit.stopped_by == "epochs"
    assert fit.model.user_embedding is not None and fit.model.user_embedding.weight.grad is not None
    with pytest.raises(ValueError, match="user token"):
        fit.model.encode(torch.ones(1, 4, dtype=torch.long))


def test_an_interrupted_generator_run_resumes_mid_pass_as_if_it_never_stopped(
    dense_slice: dict[int, list[int]], semantic: np.ndarray, tmp_path: Path
) -> None:
    """Counting by steps, rounds end mid-pass (3 steps a round, 8 batches a pass). A run killed in its third round
    and started again with the same resume folder reads its codes back and ends with the straight run's history
    and weights; a changed setting gets a checkpoint of its own instead of resuming the other's."""
    from recsys.semantic_ids import ItemEmbeddings

    config = PipelineConfig(
        variant="tiger",
        quantizer=QuantizerConfig("rkmeans", (8, 8, 8)),
        generator=GeneratorShape(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=1, encoder_unit="item"),
        train=GeneratorTrainConfig(
            batch_size=2048, lr=2e-3, eval_steps=3, max_steps=12, patience_steps=100, eval_users=100, progress=False
        ),
    )
    embeddings = ItemEmbeddings(semantic=semantic)

    def train(
        folder: Path | None,
        config: PipelineConfig = config,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> PRORecRun:
        return train_pipeline(
            "beauty",
            dense_slice,
            config,
            embeddings=embeddings,
            evaluate_full=False,
            on_epoch=on_epoch,
            resume_dir=folder,
        )

    def killed_in_round_3(epoch: int, validation: dict[str, float]) -> None:
        if epoch == 3:  # after round 3's validation, before its checkpoint: the file holds round 2 (step 6 of 8)
            raise KeyboardInterrupt

    straight = train(None)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, on_epoch=killed_in_round_3)
    resumed = train(tmp_path)
    assert "read_from" in resumed.info["codes"] and np.array_equal(resumed.ids.codes, straight.ids.codes)
    assert [h["steps"] for h in resumed.info["fit"]["history"]] == [3, 6, 9, 12]
    assert [h["loss"] for h in resumed.info["fit"]["history"]] == [h["loss"] for h in straight.info["fit"]["history"]]
    for name, weight in straight.model.state_dict().items():
        assert torch.equal(weight, resumed.model.state_dict()[name]), name
    train(tmp_path, replace(config, train=replace(config.train, lr=1e-3)))
    assert len(list(tmp_path.glob("generator-*.pt"))) == 2 and len(list(tmp_path.glob("semantic-ids-*.npz"))) == 1
