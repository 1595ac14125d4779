"""The item-to-item transitions baseline: counts from training only, scores against a plain-loop reference, ties by
popularity, the decay chosen on validation, and on real Beauty users it beats popularity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.data import InteractionData
from recsys.popularity import evaluate_popularity
from recsys.split import PADDING_ID, LeaveOneOutSplit, leave_one_out
from recsys.transitions import (
    DECAYS,
    GATHER_TEMPORARIES,
    WINDOWS,
    TransitionModel,
    TransitionScorer,
    evaluate_transitions,
    evaluate_transitions_run,
    fit_transitions,
)


def reference_scores(split: LeaveOneOutSplit, histories: np.ndarray, decay: float, window: int = 1) -> np.ndarray:
    """The transition part of the scores, by plain loops over the training sequences."""
    size = split.num_items + 1
    counts = np.zeros((size, size))
    for seq in split.train_sequences:
        for i, a in enumerate(seq):
            for distance, b in enumerate(seq[i + 1 : i + 1 + window], start=1):
                counts[a, b] += 1 / distance
    out = np.zeros((len(histories), size))
    for u, row in enumerate(histories):
        items = [int(i) for i in row if i != PADDING_ID]
        for k, item in enumerate(reversed(items)):  # k = 0: the most recent
            out[u] += decay**k * counts[item]
    return out


@pytest.fixture(scope="module")
def small_split() -> LeaveOneOutSplit:
    rng = np.random.default_rng(0)
    sequences = {user: rng.integers(100, 130, rng.integers(3, 12)).tolist() for user in range(60)}
    return leave_one_out(sequences, max_history=6)


@pytest.mark.parametrize(("decay", "window"), [(0.0, 1), (0.6, 1), (1.0, 1), (0.6, 3), (0.0, 5)])
def test_scores_are_decayed_transition_counts_with_popularity_only_breaking_ties(
    small_split: LeaveOneOutSplit, decay: float, window: int
) -> None:
    model = TransitionModel.fit(small_split, decay, window)
    histories = small_split.test.histories
    scores = model.scores(histories)
    expected = reference_scores(small_split, histories, decay, window)
    assert np.isneginf(scores[:, PADDING_ID]).all()
    smallest_weight = (decay ** (histories.shape[1] - 1) if decay else 1.0) / window
    tie_break = scores[:, 1:] - expected[:, 1:]
    np.testing.assert_allclose(tie_break, np.broadcast_to(model.tie_break(histories.shape[1])[1:], tie_break.shape))
    assert np.all(tie_break >= 0) and np.all(tie_break < 0.5 * smallest_weight)  # never one transition's weight
    # A user's scores are the same alone as in any batch.
    np.testing.assert_array_equal(model.scores(histories[3:4]), scores[3:4])
    # The tie-break is popularity: among items with equal transition scores, the more popular ranks higher.
    popularity = np.bincount(np.concatenate(small_split.train_sequences), minlength=small_split.num_items + 1)
    for u in range(len(histories)):
        tied = np.flatnonzero(expected[u, 1:] == 0) + 1
        order = tied[np.argsort(-scores[u, tied], kind="stable")]
        assert np.all(np.diff(popularity[order]) <= 0)


def test_counts_come_from_training_sequences_only() -> None:
    # User 1's validation and test transitions (7 -> 8 -> 9) appear nowhere in training, at any distance.
    split = leave_one_out({1: [5, 6, 7, 8, 9], 2: [5, 6, 5, 6, 5]}, max_history=4)
    model = TransitionModel.fit(split, window=3)
    dense = split.item_map.dense_of_raw()
    scores = model.scores(split.test.histories)  # neither a transition count nor popularity for 8 and 9
    assert scores[:, dense[9]].max() == 0 and scores[:, dense[8]].max() == 0
    assert model.popularity[dense[8]] == 0 and model.popularity[dense[9]] == 0
    assert model.popularity[dense[5]] == 3  # 5, 6, 7 of user 1 and 5, 6, 5 of user 2


def test_the_window_and_decay_are_the_pair_that_scores_best_on_validation(small_split: LeaveOneOutSplit) -> None:
    model, chosen = fit_transitions(small_split)
    scores = {name: m["ndcg@10"] for name, m in chosen["validation"].items()}
    assert set(scores) == {f"window={w} decay={d}" for w in WINDOWS for d in DECAYS}
    assert scores[f"window={model.window} decay={model.decay}"] == max(scores.values())
    assert (model.window, model.decay) == (chosen["window"], chosen["decay"])


def test_on_real_beauty_users_transitions_beat_popularity(beauty: InteractionData) -> None:
    sequences = dict(list(beauty.sequences.items())[:6000])
    split = leave_one_out(sequences)
    metrics, chosen = evaluate_transitions(split, split.test)
    popularity = evaluate_popularity(split, split.test)
    assert chosen["decay"] in DECAYS and chosen["window"] in WINDOWS
    assert metrics["ndcg@10"] > 2 * popularity["ndcg@10"]
    assert metrics["recall@10"] > popularity["recall@10"]


@pytest.mark.parametrize(("decay", "window"), [(0.0, 1), (0.6, 5)])
def test_the_served_graph_scores_as_the_model_does(small_split: LeaveOneOutSplit, decay: float, window: int) -> None:
    model = TransitionModel.fit(small_split, decay, window)
    histories = np.concatenate([small_split.test.histories, np.zeros((1, 6), np.int64)])  # and an empty history
    expected = model.scores(histories)
    with torch.no_grad():
        got = TransitionScorer(model, histories.shape[1])(torch.from_numpy(histories)).numpy()
    assert got.dtype == np.float32 and np.isneginf(got[:, PADDING_ID]).all()
    np.testing.assert_allclose(got[:, 1:], expected[:, 1:], rtol=1e-6, atol=1e-6)


def test_the_served_graph_takes_a_history_at_any_width_and_gathers_at_the_batchs_longest_row(
    small_split: LeaveOneOutSplit,
) -> None:
    """A batch sent at its own longest history (narrower than max_history) scores as at full width, and a batch
    whose items' rows are all shorter than the catalogue's longest (so the gather is narrower) scores as the model."""
    model = TransitionModel.fit(small_split, 0.6, 5)
    graph = TransitionScorer(model, 6)
    histories = small_split.test.histories.copy()
    histories[:, :3] = PADDING_ID  # at most the last three items: a width of 3 holds every history
    with torch.no_grad():
        full = graph(torch.from_numpy(histories)).numpy()
        narrow = graph(torch.from_numpy(np.ascontiguousarray(histories[:, 3:]))).numpy()
    np.testing.assert_array_equal(narrow, full)
    np.testing.assert_allclose(full[:, 1:], model.scores(histories)[:, 1:], rtol=1e-6, atol=1e-6)
    rows = np.diff(model.indptr)[: model.popularity.shape[0]]
    short = [int(i) for i in np.flatnonzero((rows > 1) & (rows < rows.max()))[:5]]
    assert short, "the fixture has items whose rows are shorter than the longest"
    for item in short:  # each alone, one column wide: the gather as wide as its own row
        with torch.no_grad():
            got = graph(torch.tensor([[item]])).numpy()
        padded = np.array([[PADDING_ID] * 5 + [item]])  # the model's tie-break is scaled for max_history's width
        np.testing.assert_allclose(got[:, 1:], model.scores(padded)[:, 1:], rtol=1e-6, atol=1e-6)


def test_cli_fits_exports_and_evaluates_transitions(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recsys.cli import main as recsys_main  # in process: a subprocess importing torch costs seconds each

    run, store, report = tmp_path / "run", tmp_path / "store", tmp_path / "eval.json"
    data = ["--data-dir", str(data_dir)]
    train = ["train", "--variant", "transitions", "--dataset", "toys", *data, "--slice-items", "300"]
    assert recsys_main([*train, "--slice-users", "1500", "--out", str(run)]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["variant"] == "transitions" and info["decay"] in DECAYS and info["window"] in WINDOWS
    assert recsys_main(["export", "--run", str(run), "--store", str(store), "--name", "toys-tr", *data]) == 0
    printed = capsys.readouterr()
    assert "parity (onnxruntime vs torch ranking)" in printed.out
    # The graph exports on the exporter's first strategy (non-strict): a failed one prints its partial graph.
    assert "def forward" not in printed.err
    manifest = json.loads((store / "toys-tr" / "1" / "manifest.json").read_text())
    assert (manifest["model_kind"], manifest["rollout"]["kind"]) == ("transitions", "item_scores")
    # Its gather's working memory bounds the users per onnxruntime run beside the scores themselves.
    longest = info["model_size"]["longest_row"]
    assert manifest["rollout"]["cells_per_user"] == GATHER_TEMPORARIES * 20 * longest > 0
    assert recsys_main(["evaluate", "--store", str(store), "--name", "toys-tr", *data, "--json", str(report)]) == 0
    served = json.loads(report.read_text())
    fitted = evaluate_transitions_run(run, data_dir=str(data_dir))  # what `evaluate --run` reports
    assert served["users"] == fitted["users"] > 0 and fitted["data_matches_training"]
    assert fitted["metrics"] == pytest.approx(info["metrics"]["test"])
    # The served graph scores in float32, where the popularity term that breaks the fitted model's ties is below a
    # scored item's resolution: the artifact's tie order (popularity) gives the runner what float32 lost.
    assert manifest["rollout"]["side_tables"]["tie_order"] == {"file": "tie_order.npy"}
    np.testing.assert_array_equal(np.load(store / "toys-tr" / "1" / "tie_order.npy"), run_model_tie_order(run))
    for metric in ("recall@10", "ndcg@10"):
        np.testing.assert_allclose(served["metrics"][metric], fitted["metrics"][metric], atol=1e-3)
    beam = ["export", "--run", str(run), "--store", str(store), "--name", "x", "--beam-width", "4"]
    assert recsys_main(beam) == 2
    assert "--beam-width: this run ranks every item" in capsys.readouterr().err


def run_model_tie_order(run: Path) -> np.ndarray:
    from recsys.transitions import load_transitions_run

    return load_transitions_run(run).model.tie_order()


def test_tie_order_is_by_popularity_then_dense_id(small_split: LeaveOneOutSplit) -> None:
    model = TransitionModel.fit(small_split)
    places = model.tie_order()
    assert sorted(places.tolist()) == list(range(len(places)))
    ranked = np.argsort(places)  # dense ids, first place first
    keys = [(-model.popularity[d], d) for d in ranked]
    assert keys == sorted(keys)
