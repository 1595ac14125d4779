"""Export a SASRec run as an ``item_scores`` artifact (``recsys.item_scores_export``; run by
``serving/runners/item_scores.py``): the scores are the log-softmax over every item of the next-item logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.item_scores_export import publish_item_scores
from recsys.models.sasrec import SASRec
from recsys.sasrec_run import SASRecRun
from serving.artifact import Artifact


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
    return publish_item_scores(
        ScorerGraph(model),
        "sasrec",
        "log-softmax over every item of the next-item logits",
        run.item_ids,
        run.titles,
        run.info,
        model.config.max_len,
        store,
        name,
        version,
        histories,
        top_k,
        opset,
        facts={"model_config": run.info.get("model_config"), "model_size": run.info.get("model_size")},
    )
