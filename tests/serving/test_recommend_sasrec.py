"""SASRec served behind the same Recommend API as the generators (rollout kind item_scores): its export's gate,
its ranking against torch's, real gRPC beside a constrained-beam model in one store, the batch job, the CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest
import torch

from recsys.sasrec_run import evaluate_sasrec_run
from serving.batch import run_batch
from serving.client import ArcastClient
from serving.runners.item_scores import ItemScoresModel, top_k_allowed
from serving.server import ForecastServer
from tests.serving.conftest import start_server

pytestmark = pytest.mark.usefixtures("one_thread")
SASREC, BEAM = "beauty-sasrec", "beauty-slice"


@pytest.fixture(scope="module")
def served(beauty_sasrec_artifact, beauty_sasrec_run) -> tuple[ItemScoresModel, list[list[int]]]:
    model = ItemScoresModel.load(beauty_sasrec_artifact)
    split, _ = beauty_sasrec_run
    histories = [[int(model.item_ids[d]) for d in row if d] for row in split.test.histories[:40]]
    return model, histories


@pytest.fixture(scope="module")
def both_kinds_store(beauty_sasrec_artifact, beauty_slice_artifact, tmp_path_factory) -> Path:
    """One store with the SASRec and the semantic-ID generator: one server, one API, two kinds."""
    store = tmp_path_factory.mktemp("both-kinds")
    for artifact in (beauty_sasrec_artifact, beauty_slice_artifact):
        shutil.copytree(artifact.path.parent, store / artifact.name)
    return store


@pytest.fixture(scope="module")
def server(both_kinds_store: Path) -> Iterator[ForecastServer]:
    server = start_server(both_kinds_store)
    yield server
    server.stop(grace_s=1)


@pytest.fixture(scope="module")
def client(server: ForecastServer) -> Iterator[ArcastClient]:
    with ArcastClient(f"127.0.0.1:{server.port}") as client:
        yield client


def test_export_records_its_gate_and_kind(beauty_sasrec_artifact) -> None:
    manifest = beauty_sasrec_artifact.manifest
    assert (manifest.model_kind, manifest.rollout.kind) == ("sasrec", "item_scores")
    for case in ("all_items", "exclude_seen"):
        gate = manifest.parity[case]
        assert gate["identical_top_k"] + gate["tie_flips"] == manifest.parity["users"] == 48
        assert gate["max_abs_score_diff"] < 1e-4


def test_ranking_equals_torch_with_history_excluded(served, beauty_sasrec_run) -> None:
    """The onnxruntime answer is torch's SASRec ranking: every item scored, the history removed, best first."""
    model, histories = served
    split, run = beauty_sasrec_run
    with torch.no_grad():
        scores = run.model.score_all(torch.from_numpy(split.test.histories[:40])).log_softmax(-1).numpy()
    for history, row, got in zip(histories, scores, model.recommend(histories, k=10), strict=True):
        row[model.dense_ids(history, strict=True, field="h")] = -np.inf
        want = [int(model.item_ids[d]) for d in np.argsort(-row, kind="stable")[:10]]
        assert [item for item, _ in got] == want
        np.testing.assert_allclose([s for _, s in got], np.sort(row)[::-1][:10], atol=1e-4)


def test_top_k_never_returns_excluded_or_padding_and_pads_with_item_zero() -> None:
    scores = np.log(np.array([[0.0, 0.4, 0.3, 0.2, 0.1], [0.0, 0.25, 0.25, 0.25, 0.25]], np.float32) + 1e-12)
    result = top_k_allowed(scores, 4, [np.array([1, 2, 3]), np.array([], np.int64)])
    assert result.items[0].tolist() == [4, 0, 0, 0]  # one allowed item left
    assert np.isneginf(result.scores[0, 1:]).all()
    assert result.items[1].tolist() == [1, 2, 3, 4]  # ties in dense-id order
    assert result.codes.shape == (2, 4, 0)
    # A tie order (each dense id's place, lower first) decides among equal scores instead of the dense id.
    places = np.array([0, 4, 3, 2, 1])
    assert top_k_allowed(scores, 4, tie_order=places).items[1].tolist() == [4, 3, 2, 1]


@pytest.mark.parametrize("kind", ["distinct", "ties", "mostly -inf", "three allowed"])
def test_top_k_over_many_blocks_is_the_full_sort(kind: str) -> None:
    """Over rows many selection blocks long, the top k equal the first k of every allowed item sorted by (score
    descending, tie order, dense id), whatever the ties, exclusions and -inf scores."""
    rng = np.random.default_rng(len(kind))
    users, columns = 6, 1000
    scores = rng.standard_normal((users, columns)).astype(np.float32)
    if kind == "ties":
        scores = np.round(scores, 1)
    elif kind == "mostly -inf":
        scores[rng.random((users, columns)) < 0.9] = -np.inf
    elif kind == "three allowed":
        scores[:, 4:] = -np.inf
    excluded = [rng.choice(columns, 30, replace=False) for _ in range(users)]
    places = rng.permutation(columns)
    for k in (1, 10, 37):
        got = top_k_allowed(scores, k, excluded, places)
        for row in range(users):
            allowed = np.setdiff1d(np.arange(1, columns), excluded[row])
            allowed = allowed[np.isfinite(scores[row, allowed])]
            best = allowed[np.lexsort((allowed, places[allowed], -scores[row, allowed]))][:k]
            assert got.items[row, : len(best)].tolist() == best.tolist()
            assert (got.items[row, len(best) :] == 0).all()


def test_one_server_answers_both_kinds_over_grpc(client: ArcastClient, served) -> None:
    model, histories = served
    kinds = {m.name: (m.model_kind, m.rollout_kind) for m in client.list_models()}
    assert kinds[SASREC] == ("sasrec", "item_scores") and kinds[BEAM][1] == "constrained_beam"
    expected = model.recommend(histories, k=10)
    batch = client.recommend_batch(SASREC, histories, k=10)
    for history, want, user in zip(histories, expected, batch.users, strict=True):
        single = client.recommend(SASREC, history, k=10, beam_width=3)  # no beam: its width does not apply
        assert [(i.item_id, round(i.score, 5)) for i in single.items] == [(a, round(b, 5)) for a, b in want]
        assert [i.item_id for i in user.items] == [a for a, _ in want]
        assert not {i.item_id for i in single.items} & set(history)
        assert all(not i.codes for i in single.items)
        assert all(i.title for i in single.items)  # the slice's placeholder titles travel with the artifact
    beam = client.recommend(BEAM, histories[0], k=5)  # the generator beside it, same API
    assert len(beam.items) == 5 and all(i.codes for i in beam.items)


def test_exclusions_and_include_seen(client: ArcastClient, served) -> None:
    model, histories = served
    history = histories[0]
    first = [i.item_id for i in client.recommend(SASREC, history, k=5).items]
    after = [i.item_id for i in client.recommend(SASREC, history, k=5, exclude=first[:2]).items]
    assert after[:3] == first[2:] and not set(after) & set(first[:2])
    seen = [i.item_id for i in client.recommend(SASREC, history, k=50, include_seen=True).items]
    assert seen == [item for item, _ in model.recommend([history], k=50, exclude_seen=False)[0]]


def test_diversity_is_refused_naming_the_field(client: ArcastClient, served) -> None:
    _, histories = served
    with pytest.raises(grpc.RpcError) as err:
        client.recommend(SASREC, histories[0], k=5, diversity=2.0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "diversity" in str(err.value.details()) and "ranks every item" in str(err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        client.recommend(SASREC, [999_999_999], k=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "history" in str(err.value.details())


def test_batch_job_scores_users_with_sasrec(beauty_sasrec_artifact, served, tmp_path: Path) -> None:
    model, histories = served
    rows = [(f"u{u:02d}", item, t) for u, h in enumerate(histories[:20]) for t, item in enumerate(h)]
    frame = pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.Int64, "timestamp": pl.Int64}, orient="row")
    path, out = tmp_path / "interactions.parquet", tmp_path / "top.parquet"
    frame.write_parquet(path)
    summary = run_batch(beauty_sasrec_artifact.path.parents[1], SASREC, path, out, horizon=5, progress=False)
    assert (summary.scored, summary.failed) == (20, 0)
    result = pl.read_parquet(out)
    for u, want in enumerate(model.recommend(histories[:20], k=5)):
        assert result.filter(pl.col("user_id") == f"u{u:02d}").sort("rank")["item_id"].to_list() == [
            item for item, _ in want
        ]


def test_cli_trains_exports_and_evaluates_a_sasrec(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # in process (recsys.cli.main, as `python -m recsys`): three subprocesses importing torch cost ~20 s of the suite
    from recsys.cli import main as recsys_main

    run, store = tmp_path / "run", tmp_path / "store"
    data = ["--data-dir", str(data_dir)]
    train = ["train", "--variant", "sasrec", "--dataset", "toys", *data, "--slice-items", "300"]
    train += ["--slice-users", "1500", "--sasrec-hidden", "16", "--sasrec-epochs", "1", "--out", str(run)]
    assert recsys_main(train) == 0
    assert json.loads((run / "run.json").read_text())["variant"] == "sasrec"
    assert recsys_main(["export", "--run", str(run), "--store", str(store), "--name", "toys-sasrec", *data]) == 0
    assert "parity (onnxruntime vs torch ranking)" in capsys.readouterr().out
    report = tmp_path / "eval.json"
    assert recsys_main(["evaluate", "--store", str(store), "--name", "toys-sasrec", *data, "--json", str(report)]) == 0
    served = json.loads(report.read_text())
    in_torch = evaluate_sasrec_run(run, data_dir=str(data_dir))  # what `evaluate --run` reports
    assert served["users"] == in_torch["users"] > 0 and in_torch["data_matches_training"]
    np.testing.assert_allclose(served["metrics"]["recall@10"], in_torch["metrics"]["recall@10"], atol=2e-3)


def test_serving_cli_recommends_from_either_kind(server: ForecastServer, served, capsys) -> None:
    from serving.cli import main

    model, histories = served
    history = ",".join(str(i) for i in histories[0])
    target = ["--target", f"127.0.0.1:{server.port}", "--history", history, "--k", "3"]
    assert main(["recommend", *target, "--model", SASREC]) == 0
    printed = capsys.readouterr().out.splitlines()
    want = [item for item, _ in model.recommend([histories[0]], k=3)[0]]
    assert [int(line.split()[1]) for line in printed[2:]] == want
    assert main(["recommend", *target, "--model", BEAM, "--diversity", "2"]) == 0  # diverse beam search
    assert len(capsys.readouterr().out.splitlines()) == 5
