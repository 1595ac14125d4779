"""Recommend over real gRPC: equals the in-process onnxruntime beam search, real items only, exclusions, errors."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from serving.batching import BatchingConfig
from serving.client import ArcastClient
from serving.runners.constrained_beam import ConstrainedBeamModel
from serving.runners.recommender import RecommendJob
from serving.server import ForecastServer
from tests.serving.conftest import start_server

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "beauty-slice"


@pytest.fixture(scope="module")
def rec_server(beauty_slice_artifact) -> Iterator[ForecastServer]:
    server = start_server(beauty_slice_artifact.path.parents[1])
    yield server
    server.stop(grace_s=1)


@pytest.fixture(scope="module")
def rec_client(rec_server: ForecastServer) -> Iterator[ArcastClient]:
    with ArcastClient(f"127.0.0.1:{rec_server.port}") as client:
        yield client


@pytest.fixture(scope="module")
def sample(beauty_slice_artifact, beauty_slice_run) -> tuple[ConstrainedBeamModel, list[list[int]]]:
    model = ConstrainedBeamModel.load(beauty_slice_artifact)
    split, _ = beauty_slice_run
    raw = model.item_ids
    histories = [[int(raw[d]) for d in row if d] for row in split.test.histories[:40]]
    return model, histories


def test_served_top_k_equals_in_process(rec_client: ArcastClient, sample) -> None:
    model, histories = sample
    expected = model.recommend(histories, k=10)
    batch = rec_client.recommend_batch(MODEL, histories, k=10)
    for history, want, user in zip(histories, expected, batch.users, strict=True):
        single = rec_client.recommend(MODEL, history, k=10)
        got = [(i.item_id, i.score) for i in single.items]
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-6)
        assert [i.item_id for i in user.items] == [w[0] for w in want]  # batch and single calls agree
        assert {i.item_id for i in single.items} <= model.known_ids  # every result is a real item
        assert not {i.item_id for i in single.items} & set(history)  # seen items excluded by default
        assert all(len(i.codes) == model.tokens.shape[1] for i in single.items)


def test_concurrent_requests_are_merged_and_answer_as_if_alone(beauty_slice_artifact, sample) -> None:
    model, histories = sample
    server = start_server(beauty_slice_artifact.path.parents[1], batching=BatchingConfig(max_rows=64, max_wait_s=0.05))
    settings = [(10, 0), (5, 0), (5, 10), (3, 10)]  # (k, beam width): two widths, so two kinds of batch
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:

            def call(i: int) -> list[int]:
                k, width = settings[i % len(settings)]
                return [r.item_id for r in client.recommend(MODEL, histories[i], k=k, beam_width=width).items]

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                served = list(pool.map(call, range(len(histories))))
        runs = server.metrics.registry.get_sample_value("arcast_batch_rows_count", {"model": MODEL})
        users = server.metrics.registry.get_sample_value("arcast_batch_rows_sum", {"model": MODEL})
    finally:
        server.stop(grace_s=1)
    for i, got in enumerate(served):
        k, width = settings[i % len(settings)]
        (want,) = model.recommend([histories[i]], k=k, beam_width=width or None)
        assert got == [item for item, _ in want]
    assert runs is not None and users == len(histories) and runs < len(histories)  # requests were merged


def test_excluded_items_never_appear(rec_client: ArcastClient, sample) -> None:
    _, histories = sample
    first = rec_client.recommend(MODEL, histories[0], k=10)
    banned = [i.item_id for i in first.items[:5]]
    again = rec_client.recommend(MODEL, histories[0], k=10, exclude=banned)
    assert not {i.item_id for i in again.items} & set(banned)
    assert [i.item_id for i in again.items[:5]] == [i.item_id for i in first.items[5:10]]


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        (
            {"history": [999_999_999]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "history: unknown item ids history[0]=999999999",
        ),
        ({"history": []}, grpc.StatusCode.INVALID_ARGUMENT, "history: empty history"),
        ({"k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "k: must be at least 1"),
        ({"k": 10, "beam_width": 5}, grpc.StatusCode.INVALID_ARGUMENT, "beam_width: 5 is below k (10)"),
        ({"k": 100_000}, grpc.StatusCode.INVALID_ARGUMENT, "k: 100000 exceeds the limit"),
        ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "model 'nope' is not loaded"),
    ],
)
def test_bad_requests(rec_client: ArcastClient, sample, kwargs: dict, code, message: str) -> None:
    _, histories = sample
    args = {"model": MODEL, "history": histories[0], "k": 10, **kwargs}
    with pytest.raises(grpc.RpcError) as info:
        rec_client.recommend(args.pop("model"), args.pop("history"), **args)
    assert info.value.code() == code and message in info.value.details()


def test_unknown_items_can_be_ignored(rec_client: ArcastClient, sample) -> None:
    _, histories = sample
    plain = rec_client.recommend(MODEL, histories[1], k=5)
    noisy = rec_client.recommend(MODEL, [999_999_999, *histories[1]], k=5, ignore_unknown_items=True)
    assert [i.item_id for i in noisy.items] == [i.item_id for i in plain.items]


def test_listed_beside_forecasters(rec_client: ArcastClient) -> None:
    (info,) = rec_client.list_models()
    assert (info.model_kind, info.rollout_kind) == ("prorec", "constrained_beam")


def test_work_beyond_the_per_request_limit_is_refused(rec_client: ArcastClient, sample) -> None:
    _, histories = sample
    with pytest.raises(grpc.RpcError) as info:  # 129 users x 512 beams > 65536
        rec_client.recommend_batch(MODEL, [histories[0]] * 129, k=10, beam_width=512)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "129 x 512 = 66048 beams exceed the limit of 65536 per request (--max-beam-rows)" in info.value.details()


def test_long_searches_run_in_chunks_with_the_same_answers(sample) -> None:
    model, histories = sample
    queries = [model.query(h) for h in histories[:10]]
    whole = model.search_queries(queries, 5, 10)
    calls = []
    small = dataclasses.replace(model, beams_per_run=30)  # 3 users of 10 beams per onnxruntime search
    search = small.search_queries
    small.search_queries = lambda qs, k, w, d: calls.append(len(qs)) or search(qs, k, w, d)  # type: ignore[method-assign]
    (chunked,) = small.batches().run_batch([RecommendJob(queries, 5, 10)])
    assert calls == [3, 3, 3, 1]
    np.testing.assert_array_equal(chunked.items, whole.items)
    np.testing.assert_allclose(chunked.scores, whole.scores, rtol=1e-6)


def test_diverse_beam_search_over_grpc(rec_server: ForecastServer, sample, beauty_slice_run) -> None:
    """The `diversity` field: the served lists equal the in-process and torch searches, spread over more first-level
    codes as the penalty grows, and a bad penalty is INVALID_ARGUMENT."""
    from recsys.generator import recommend
    from serving.proto.arcast.v1 import recommend_pb2, recommend_pb2_grpc

    model, histories = sample
    split, run = beauty_slice_run
    first_codes: dict[float, float] = {}
    with grpc.insecure_channel(f"127.0.0.1:{rec_server.port}") as channel:
        stub = recommend_pb2_grpc.RecommendServiceStub(channel)
        for diversity in (0.0, 2.0, 50.0):
            expected = model.recommend(histories, k=10, beam_width=20, diversity=diversity)
            users = [recommend_pb2.UserHistory(user_id=str(i), history=h) for i, h in enumerate(histories)]
            request = recommend_pb2.RecommendBatchRequest(
                model=MODEL, users=users, k=10, beam_width=20, diversity=diversity
            )
            served = stub.RecommendBatch(request, timeout=60)
            for want, user in zip(expected, served.users, strict=True):
                assert [i.item_id for i in user.items] == [w[0] for w in want]
            one = stub.Recommend(
                recommend_pb2.RecommendRequest(model=MODEL, history=histories[0], k=10, diversity=diversity)
            )
            assert [i.item_id for i in one.items] == [i.item_id for i in served.users[0].items]
            first_codes[diversity] = float(np.mean([len({i.codes[0] for i in u.items}) for u in served.users]))
            torch_lists = recommend(
                run.model,
                split.test.histories[:40],
                run.code_index().tokens,
                run.code_index().trie,
                10,
                20,
                exclude_history=True,
                diversity=diversity,
            )
            dense = [[model.item_ids[d] for d in row if d] for row in torch_lists.items]
            assert dense == [[w[0] for w in want] for want in expected]  # torch and onnxruntime agree
        assert first_codes[50.0] > first_codes[0.0], first_codes
        for bad in (-1.0, float("nan"), 1e6):
            with pytest.raises(grpc.RpcError) as info:
                stub.Recommend(recommend_pb2.RecommendRequest(model=MODEL, history=histories[0], k=10, diversity=bad))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "diversity" in info.value.details()
