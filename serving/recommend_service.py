"""RecommendService: any recommender runner (constrained beam search over semantic IDs, or one score per item) on
onnxruntime, with precise status codes."""

from __future__ import annotations

import time
from typing import cast

import grpc
import numpy as np

from serving.proto.arcast.v1 import recommend_pb2, recommend_pb2_grpc
from serving.registry import LoadedModel, ModelRegistry
from serving.rpc import Calls, Limits, await_result, deadline, exhausted, invalid, observed, served_model
from serving.runners.constrained_beam import MAX_DIVERSITY
from serving.runners.recommender import MAX_K, ItemCatalogue, SearchResult, UserQuery


def _recommender(registry: ModelRegistry, name: str, version: str) -> tuple[LoadedModel, ItemCatalogue]:
    model = served_model(registry, name, version, "recommend")
    return model, cast(ItemCatalogue, model.runner)


def _check_settings(runner: ItemCatalogue, k: int, beam_width: int) -> tuple[int, int]:
    """k and the beam width the search runs at; a model without beam search ranks every item and takes no width
    (a caller's beam_width is ignored there, so one request suits every kind)."""
    if k <= 0:
        raise invalid("k: must be at least 1")
    if k > MAX_K:
        raise invalid(f"k: {k} exceeds the limit of {MAX_K}")
    if not runner.beam_search:
        return k, 1
    width = beam_width or max(runner.default_beam_width, k)
    if width > MAX_K:
        raise invalid(f"beam_width: {width} exceeds the limit of {MAX_K}")
    if width < k:
        raise invalid(f"beam_width: {width} is below k ({k})")
    return k, width


def _check_diversity(runner: ItemCatalogue, name: str, diversity: float) -> float:
    if not 0 <= diversity <= MAX_DIVERSITY:  # NaN fails both comparisons
        raise invalid(f"diversity: {diversity} is outside 0..{MAX_DIVERSITY:g}")
    if diversity and not runner.beam_search:
        raise invalid(
            f"diversity: model {name!r} ranks every item by one score (rollout {runner.rollout_kind}); diverse beam "
            "search needs a semantic-ID model (constrained_beam): send diversity 0"
        )
    return float(diversity)


def _query(
    runner: ItemCatalogue,
    field: str,
    history: list[int],
    exclude: list[int],
    ignore_unknown: bool,
    include_seen: bool,
) -> UserQuery:
    if not history:
        raise invalid(f"{field}: empty history")
    known = runner.known_ids
    unknown = [i for i, item in enumerate(history) if item not in known]
    if unknown and not ignore_unknown:
        shown = ", ".join(f"{field}[{i}]={history[i]}" for i in unknown[:5])
        raise invalid(f"{field}: unknown item ids {shown}{' ...' if len(unknown) > 5 else ''}")
    kept = [item for item in history if item in known]
    if not kept:
        raise invalid(f"{field}: no known item ids left after ignoring unknown ones")
    return runner.query(kept, exclude, exclude_seen=not include_seen, field=field)


def _recommendations(runner: ItemCatalogue, result: SearchResult) -> list[list[recommend_pb2.Recommendation]]:
    out = []
    for items, scores, codes in zip(result.items, result.scores, result.codes, strict=True):
        row = []
        for dense, score, code in zip(items, scores, codes, strict=True):
            if dense == 0:  # fewer allowed items than k
                continue
            title = runner.titles[dense] if runner.titles else ""
            row.append(
                recommend_pb2.Recommendation(
                    item_id=int(runner.item_ids[dense]),
                    score=float(score),
                    codes=np.asarray(code).tolist(),
                    title=title,
                )
            )
        out.append(row)
    return out


class RecommendServicer(recommend_pb2_grpc.RecommendServiceServicer):
    def __init__(self, registry: ModelRegistry, calls: Calls, limits: Limits) -> None:
        self.registry, self.calls, self.limits = registry, calls, limits

    def Recommend(
        self, request: recommend_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> recommend_pb2.RecommendResponse:
        with observed(self.calls, "Recommend", self.registry.label(request.model), context):
            until = deadline(context, self.limits)
            started = time.perf_counter()
            model, runner = _recommender(self.registry, request.model, request.version)
            k, width = _check_settings(runner, request.k, request.beam_width)
            diversity = _check_diversity(runner, model.name, request.diversity)
            query = _query(
                runner,
                "history",
                list(request.history),
                list(request.exclude),
                request.ignore_unknown_items,
                request.include_seen,
            )
            self.calls.metrics.stage("recommend", "validate", started)
            result = await_result(model.recommend([query], k, width, until, diversity), until, "recommendation")
            started = time.perf_counter()
            (items,) = _recommendations(runner, result)
            response = recommend_pb2.RecommendResponse(model=model.name, version=model.version, items=items)
            self.calls.metrics.stage("recommend", "build", started)
            return response

    def RecommendBatch(
        self, request: recommend_pb2.RecommendBatchRequest, context: grpc.ServicerContext
    ) -> recommend_pb2.RecommendBatchResponse:
        with observed(self.calls, "RecommendBatch", self.registry.label(request.model), context):
            until = deadline(context, self.limits)
            model, runner = _recommender(self.registry, request.model, request.version)
            k, width = _check_settings(runner, request.k, request.beam_width)
            diversity = _check_diversity(runner, model.name, request.diversity)
            if not request.users:
                raise invalid("users: at least one user is required")
            if len(request.users) > self.limits.max_series:
                raise exhausted(
                    f"users: {len(request.users)} users exceed the limit of {self.limits.max_series} (--max-series)"
                )
            beams = len(request.users) * width
            if beams > self.limits.max_beam_rows:
                raise exhausted(
                    f"users x beam_width: {len(request.users)} x {width} = {beams} beams exceed the limit of "
                    f"{self.limits.max_beam_rows} per request (--max-beam-rows): send fewer users or a narrower beam"
                )
            queries = [
                _query(
                    runner,
                    f"users[{i}].history",
                    list(u.history),
                    list(u.exclude),
                    request.ignore_unknown_items,
                    request.include_seen,
                )
                for i, u in enumerate(request.users)
            ]
            result = await_result(model.recommend(queries, k, width, until, diversity), until, "recommendation")
            rows = _recommendations(runner, result)
            response = recommend_pb2.RecommendBatchResponse(model=model.name, version=model.version)
            for user, items in zip(request.users, rows, strict=True):
                response.users.add(user_id=user.user_id, items=items)
            return response
