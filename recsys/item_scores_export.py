"""Publish a recommender that scores every item at once as an ``item_scores`` artifact (SASRec, item-to-item
transitions; ``serving/runners/item_scores.py`` runs it).

One ONNX graph, ``history`` (B, max_history) left-padded dense ids -> ``scores`` (B, n_items + 1), column 0 (the
padding id) -inf, plus the raw item ids and titles. Before publishing, the onnxruntime ranking must return the torch
graph's top-k for a sample of users, with and without excluding seen items (a differing list only where the scores
tie within SCORE_TOLERANCE).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from arcast_core.files import atomic_write_text
from arcast_core.runtime import library_versions
from recsys.export import ITEM_IDS_FILE, PARITY_USERS, SCORE_TOLERANCE, TITLES_FILE, data_facts, sample_histories
from serving.artifact import Artifact
from serving.publish import Export, Parity, publish
from serving.runners.item_scores import ItemScoresModel, top_k_allowed
from serving.sessions import REFERENCE_PROVIDERS

log = logging.getLogger(__name__)
SCORER_FILE = "scorer.onnx"
TIE_ORDER_FILE = "tie_order.npy"


def export_scorer(
    graph: nn.Module, n_items: int, max_history: int, path: Path, opset: int = 18, narrow_history: bool = False
) -> None:
    """``graph`` with a dynamic batch; the history ``max_history`` wide (the runner pads it), or with
    ``narrow_history`` any width up to it (the batch's longest history)."""
    history = torch.randint(1, n_items + 1, (2, max_history), generator=torch.Generator().manual_seed(0))
    history[0, : max_history // 2] = 0  # a padded row among the examples
    axes = {0: torch.export.Dim("B", min=1, max=1 << 16)}
    if narrow_history:
        axes[1] = torch.export.Dim("S", min=1, max=max_history)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            graph.cpu().eval(),
            (history,),
            str(path),
            input_names=["history"],
            output_names=["scores"],
            dynamic_shapes={"history": axes},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path))


def parity_report(graph: nn.Module, served: ItemScoresModel, histories: np.ndarray, k: int) -> dict[str, Any]:
    """onnxruntime's top-k against the torch graph's on ``histories`` (dense ids), excluding seen items or not, both
    ranked as served (ties by the artifact's tie order); raises when a list differs beyond a tie (scores equal within
    SCORE_TOLERANCE)."""
    report: dict[str, Any] = {"users": len(histories), "k": k}
    with torch.no_grad():
        expected_scores = graph.cpu().eval()(torch.from_numpy(histories)).numpy()
    actual_scores = served.scores(histories)
    for exclude_seen in (False, True):
        excluded = [row[row != 0] for row in histories] if exclude_seen else None
        expected = top_k_allowed(expected_scores, k, excluded, served.tie_order)
        actual = top_k_allowed(actual_scores, k, excluded, served.tie_order)
        gap = np.abs(actual.scores - expected.scores)
        same = tie_flips = 0
        for a, e, g in zip(actual.items, expected.items, gap, strict=True):
            if np.array_equal(a, e):
                same += 1
            elif g.max() <= SCORE_TOLERANCE:
                tie_flips += 1
            else:
                raise RuntimeError(f"onnxruntime top-{k} {a.tolist()} differs from torch's {e.tolist()}")
        key = "exclude_seen" if exclude_seen else "all_items"
        report[key] = {"identical_top_k": same, "tie_flips": tie_flips, "max_abs_score_diff": float(gap.max())}
    return report


def publish_item_scores(
    graph: nn.Module,
    model_kind: str,
    score: str,
    item_ids: np.ndarray,
    titles: list[str] | None,
    info: dict[str, Any],
    max_history: int,
    store: Path | str,
    name: str,
    version: str | None = None,
    histories: np.ndarray | None = None,
    top_k: int = 10,
    opset: int = 18,
    facts: dict[str, Any] | None = None,
    cells_per_user: int = 0,
    tie_order: np.ndarray | None = None,
    narrow_history: bool = False,
) -> Artifact:
    """Publish ``graph`` (history -> scores) as ``store/name/<version>``; refuses when onnxruntime's top-k differ
    from the graph's in torch. ``histories``: (n, H) left-padded dense ids for the parity check (real users are
    best; default: random ones); ``score``: what the scores mean, for the manifest; ``cells_per_user``: the graph's
    working cells per user beside its scores (bounds the users per run, ``ItemScoresRollout``); ``tie_order``: each
    dense id's place among equal scores (default: dense-id order); ``narrow_history``: the graph takes histories of
    any width up to ``max_history`` (the runner sends the batch's longest, not ``max_history``)."""
    n_items = len(item_ids) - 1
    if histories is None:
        histories = sample_histories(n_items, max_history, PARITY_USERS)
    histories = np.asarray(histories, dtype=np.int64)[:, -max_history:]
    if histories.shape[1] < max_history:
        histories = np.pad(histories, ((0, 0), (max_history - histories.shape[1], 0)))
    tables: dict[str, Any] = {"item_ids": {"file": ITEM_IDS_FILE}}
    if titles is not None:
        tables["titles"] = {"file": TITLES_FILE}
    if tie_order is not None:
        tables["tie_order"] = {"file": TIE_ORDER_FILE}

    def write(folder: Path) -> None:
        export_scorer(graph, n_items, max_history, folder / SCORER_FILE, opset, narrow_history)
        np.save(folder / ITEM_IDS_FILE, np.asarray(item_ids, dtype=np.int64), allow_pickle=False)
        if titles is not None:
            atomic_write_text(folder / TITLES_FILE, json.dumps(titles))
        if tie_order is not None:
            np.save(folder / TIE_ORDER_FILE, np.asarray(tie_order, dtype=np.int64), allow_pickle=False)

    def parity(staged: Artifact) -> Parity:
        served = ItemScoresModel.load(staged, REFERENCE_PROVIDERS, intra_op_threads=1)
        return Parity(parity_report(graph, served, histories, top_k))

    graphs = {
        "scorer": {
            "file": SCORER_FILE,
            "opset": opset,
            "inputs": [{"name": "history", "dtype": "int64", "shape": ["B", "S" if narrow_history else max_history]}],
            "outputs": [{"name": "scores", "dtype": "float32", "shape": ["B", n_items + 1]}],
            "dynamic_axes": {"B": "users", **({"S": "history length"} if narrow_history else {})},
        }
    }
    rollout = {
        "kind": ItemScoresModel.rollout_kind,
        "n_items": n_items,
        "max_history": max_history,
        "top_k": top_k,
        "side_tables": tables,
        "exclude_seen": True,
        "score": score,
        "cells_per_user": cells_per_user,
        "narrow_history": narrow_history,
    }
    export = Export(
        model_kind=model_kind,
        rollout=rollout,
        graphs=graphs,
        write=write,
        parity=parity,
        data=data_facts(info),
        metrics=info.get("metrics", {}),
        versions=library_versions(),
        facts=facts or {},
    )
    artifact = publish(store, name, export, version)
    log.info("exported %s version %s (item scores, %s)", name, artifact.version, model_kind)
    return artifact
