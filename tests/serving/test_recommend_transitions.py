"""Item-to-item transitions served behind the same Recommend API (model kind ``transitions``, rollout item_scores):
over real gRPC the answer is the fitted model's own ranking, the history removed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recsys.data import InteractionData
from recsys.smoke_run import smoke_slice
from recsys.transitions import TransitionsRun, export_transitions_run, train_transitions_run
from serving.client import ArcastClient
from serving.server import ForecastServer
from tests.serving.conftest import start_server

pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "beauty-transitions"


@pytest.fixture(scope="module")
def fitted(beauty: InteractionData) -> tuple[TransitionsRun, np.ndarray]:
    sliced, split = smoke_slice(beauty.sequences)
    run = train_transitions_run("beauty", sliced)
    return run, split.test.histories[:40]


@pytest.fixture(scope="module")
def store(fitted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, histories = fitted
    folder = tmp_path_factory.mktemp("transitions-store")
    export_transitions_run(run, folder, NAME, histories=histories)
    return folder


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[ArcastClient]:
    server: ForecastServer = start_server(store)
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            yield client
    finally:
        server.stop(grace_s=1)


def test_recommend_answers_the_fitted_ranking_over_grpc(client: ArcastClient, fitted) -> None:
    run, histories = fitted
    listed = {m.name: (m.model_kind, m.rollout_kind) for m in client.list_models()}
    assert listed[NAME] == ("transitions", "item_scores")
    scores = run.model.scores(histories)
    dense_of = {int(raw): d for d, raw in enumerate(run.item_ids)}
    for dense, row in zip(histories, scores, strict=True):
        history = [int(run.item_ids[d]) for d in dense if d]
        got = client.recommend(NAME, history, k=10)
        row[dense[dense != 0]] = -np.inf  # the history is not recommended again
        best = np.argsort(-row, kind="stable")[:10]
        assert not {i.item_id for i in got.items} & set(history)
        # The same items, up to ties the float32 graph orders differently (scores within 1e-4 of each other).
        np.testing.assert_allclose([i.score for i in got.items], row[best], rtol=1e-5, atol=1e-4)
        for item, want in zip(got.items, best, strict=True):  # another item only where it ties the expected one
            assert item.item_id == run.item_ids[want] or abs(row[dense_of[item.item_id]] - row[want]) < 1e-4


def test_the_artifact_scores_a_history_at_its_own_width_as_at_max_history(store: Path, fitted) -> None:
    """The exported graph takes any history width up to max_history (the runner sends the batch's longest): the
    same scores as the history padded to max_history, in onnxruntime."""
    from serving.artifact import read_artifact
    from serving.runners.item_scores import ItemScoresModel

    run, histories = fitted
    served = ItemScoresModel.load(read_artifact(store / NAME / "1"), intra_op_threads=1)
    assert served.spec.narrow_history and served.max_history == histories.shape[1]
    for row in histories[:10]:
        own = row[row != 0][None]
        np.testing.assert_array_equal(served.scores(own), served.scores(row[None]))
    sent: list[tuple[int, ...]] = []
    scorer = served.scorer

    class Recording:  # what the runner hands onnxruntime
        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            sent.append(feeds["history"].shape)
            return scorer.run(names, feeds)

    object.__setattr__(served, "scorer", Recording())
    query = served.query([int(run.item_ids[d]) for d in histories[0] if d][-2:], [], exclude_seen=True)
    assert served.search_queries([query], 5).items.shape == (1, 5)
    assert sent == [(1, 2)]  # the two-item history two columns wide, not max_history
