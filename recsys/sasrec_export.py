"""Export a SASRec run as an ``item_scores`` artifact (see ``serving/runners/item_scores.py`` for how it is run).

One ONNX graph, ``history`` (B, max_history) left-padded dense ids -> ``scores`` (B, n_items + 1), the
log-softmax over every item (column 0, padding, -inf), plus the raw item ids and titles. Before publishing, the
onnxruntime ranking must return torch's top-k for a sample of users, with and without excluding seen items.
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
from recsys.models.sasrec import SASRec
from recsys.sasrec_run import SASRecRun
from serving.artifact import Artifact
from serving.publish import Export, Parity, publish
from serving.runners.item_scores import ItemScoresModel, top_k_allowed

log = logging.getLogger(__name__)
SCORER_FILE = "scorer.onnx"


class ScorerGraph(nn.Module):
    """history (B, S) -> scores (B, n_items + 1): log-probabilities of the next item, -inf for the padding id."""

    def __init__(self, model: SASRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        last = self.model.encode(history)[:, -1]
        logits = last @ self.model.item_embedding.weight[1:].T
        padding = torch.full_like(logits[:, :1], -torch.inf)
        return torch.cat([padding, torch.log_softmax(logits, dim=-1)], dim=1)


def export_scorer(model: SASRec, path: Path, opset: int = 18) -> None:
    """The scorer graph with a dynamic batch; the history is always ``max_len`` wide (the runner pads it)."""
    model = model.cpu().eval()
    length = model.config.max_len
    history = torch.randint(1, model.config.num_items + 1, (2, length), generator=torch.Generator().manual_seed(0))
    history[0, : length // 2] = 0  # a padded row among the examples
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            ScorerGraph(model).eval(),
            (history,),
            str(path),
            input_names=["history"],
            output_names=["scores"],
            dynamic_shapes={"history": {0: torch.export.Dim("B", min=1, max=1 << 16)}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path))


def parity_report(model: SASRec, served: ItemScoresModel, histories: np.ndarray, k: int) -> dict[str, Any]:
    """onnxruntime's top-k against torch's on ``histories`` (dense ids), excluding seen items or not; raises when a
    list differs beyond a tie (scores equal within SCORE_TOLERANCE)."""
    report: dict[str, Any] = {"users": len(histories), "k": k}
    with torch.no_grad():
        expected_scores = ScorerGraph(model.cpu().eval())(torch.from_numpy(histories)).numpy()
    actual_scores = served.scores(histories)
    for exclude_seen in (False, True):
        excluded = [row[row != 0] for row in histories] if exclude_seen else None
        expected = top_k_allowed(expected_scores, k, excluded)
        actual = top_k_allowed(actual_scores, k, excluded)
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


def export_sasrec_run(
    run: SASRecRun,
    store: Path | str,
    name: str,
    version: str | None = None,
    histories: np.ndarray | None = None,
    top_k: int = 10,
    opset: int = 18,
) -> Artifact:
    """Publish ``run`` as ``store/name/<version>``; refuses when onnxruntime's top-k differ from torch's.

    ``histories``: (n, H) left-padded dense ids for the parity check (real users are best; default: random ones).
    """
    model = run.model.cpu().eval()
    cfg = model.config
    if histories is None:
        histories = sample_histories(cfg.num_items, cfg.max_len, PARITY_USERS)
    histories = np.asarray(histories, dtype=np.int64)[:, -cfg.max_len :]
    if histories.shape[1] < cfg.max_len:
        histories = np.pad(histories, ((0, 0), (cfg.max_len - histories.shape[1], 0)))
    tables: dict[str, Any] = {"item_ids": {"file": ITEM_IDS_FILE}}
    if run.titles is not None:
        tables["titles"] = {"file": TITLES_FILE}

    def write(folder: Path) -> None:
        export_scorer(model, folder / SCORER_FILE, opset)
        np.save(folder / ITEM_IDS_FILE, np.asarray(run.item_ids, dtype=np.int64), allow_pickle=False)
        if run.titles is not None:
            atomic_write_text(folder / TITLES_FILE, json.dumps(run.titles))

    def parity(staged: Artifact) -> Parity:
        served = ItemScoresModel.load(staged, intra_op_threads=1)
        return Parity(parity_report(model, served, histories, top_k))

    graphs = {
        "scorer": {
            "file": SCORER_FILE,
            "opset": opset,
            "inputs": [{"name": "history", "dtype": "int64", "shape": ["B", cfg.max_len]}],
            "outputs": [{"name": "scores", "dtype": "float32", "shape": ["B", cfg.num_items + 1]}],
            "dynamic_axes": {"B": "users"},
        }
    }
    rollout = {
        "kind": ItemScoresModel.rollout_kind,
        "n_items": cfg.num_items,
        "max_history": cfg.max_len,
        "top_k": top_k,
        "side_tables": tables,
        "exclude_seen": True,
        "score": "log-softmax over every item of the next-item logits",
    }
    export = Export(
        model_kind="sasrec",
        rollout=rollout,
        graphs=graphs,
        write=write,
        parity=parity,
        data=data_facts(run.info),
        metrics=run.info.get("metrics", {}),
        versions=library_versions(),
        facts={"model_config": run.info.get("model_config"), "model_size": run.info.get("model_size")},
    )
    artifact = publish(store, name, export, version)
    log.info("exported %s version %s (item scores)", name, artifact.version)
    return artifact
