"""SASRec as a served recommender of its own: trained as PRORec's stage 1 trains it, kept in a run folder, exported
by ``recsys.sasrec_export`` (rollout kind ``item_scores``).

On this machine's budgets SASRec-CE ranks better than the generators (README, "Recommendations"), so the service
offers both kinds behind one Recommend API. ``python -m recsys train --variant sasrec`` writes the run folder:
``sasrec.pt`` (config and weights of the plain SASRec: an aligned model's title projection is a training aid and
is dropped), ``item_ids.npy``, ``titles.json`` when known, ``run.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arcast_core.files import atomic_write
from recsys.catalogue_run import (
    evaluation_report,
    is_run_of,
    load_catalogue_run,
    save_catalogue_run,
    titles_by_dense_id,
)
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.prorec_training import (
    EVAL_KS,
    Stage1Config,
    content_key,
    fit_stage1_sasrec,
    sequences_fingerprint,
)
from recsys.split import EvalExamples, leave_one_out
from recsys.training import evaluate_sasrec

VARIANT = "sasrec"
WEIGHTS_FILE = "sasrec.pt"


@dataclass
class SASRecRun:
    model: SASRec
    item_ids: np.ndarray  # raw id of each dense id; [0] = -1
    info: dict[str, Any]
    titles: list[str] | None = None  # title of each dense id; [0] = ""


def plain_sasrec(model: SASRec) -> SASRec:
    """The scorer alone: an aligned SASRec's weights without its title projection (training only)."""
    plain = SASRec(model.config)
    state = {k: v for k, v in model.state_dict().items() if k in plain.state_dict()}
    plain.load_state_dict(state)
    return plain.eval()


def train_sasrec_run(
    dataset: str,
    sequences: dict[int, list[int]],
    config: Stage1Config,
    titles: dict[int, str] | None = None,
    max_history: int = 20,
    seed: int = 0,
    progress: bool = True,
    resume_dir: Path | None = None,
) -> SASRecRun:
    """SASRec-CE on every training sequence, aligned with the titles when given (PRORec's stage 1, which ranked
    better than the plain one on Beauty), selected on validation NDCG@10; metrics on every validation and test
    user, full ranking, the history not masked (the published protocol). ``resume_dir``: the training's checkpoint
    goes there, named by the settings, seed, data and titles, so the same run started again goes on from it."""
    split = leave_one_out(sequences, max_history=max_history)
    started = time.monotonic()
    semantic = None
    if titles is not None:
        from recsys.text_embeddings import embed_item_titles

        semantic = embed_item_titles(titles, split.item_map.raw_ids[1:].tolist()).vectors
    checkpoint = None
    if resume_dir is not None:
        text = b"" if semantic is None else semantic.astype(np.float32).tobytes()
        settings = json.dumps(asdict(config), sort_keys=True)
        key = content_key(settings, str(seed), str(max_history), sequences_fingerprint(sequences), text)
        Path(resume_dir).mkdir(parents=True, exist_ok=True)
        checkpoint = Path(resume_dir) / f"sasrec-{key}.pt"
    result, report = fit_stage1_sasrec(split, config, semantic, seed, progress, checkpoint)
    train_seconds = round(time.monotonic() - started, 1)
    model = plain_sasrec(result.model)
    started = time.monotonic()
    metrics = {"validation": evaluate_sasrec(model, split.validation), "test": evaluate_sasrec(model, split.test)}
    info = {
        "dataset": dataset,
        "variant": VARIANT,
        "config": {"stage1": asdict(config), "seed": seed},
        "model_config": asdict(model.config),
        "data_fingerprint": sequences_fingerprint(sequences),
        "users": len(split.test),
        "n_items": split.num_items,
        "fit": report,
        "metrics": metrics,
        "timings": {"train_seconds": train_seconds, "evaluation_seconds": round(time.monotonic() - started, 1)},
        "model_size": {"parameters": sum(p.numel() for p in model.parameters())},
        "protocol": "leave-one-out, full ranking over all items, history not masked",
    }
    raw_ids = split.item_map.raw_ids.copy()
    return SASRecRun(model, raw_ids, info, titles_by_dense_id(titles, raw_ids))


def is_sasrec_run(folder: Path | str) -> bool:
    return is_run_of(folder, VARIANT)


def save_sasrec_run(run: SASRecRun, folder: Path | str) -> Path:
    payload = {"config": asdict(run.model.config), "state_dict": run.model.state_dict()}

    def write_weights(folder: Path) -> None:
        atomic_write(folder / WEIGHTS_FILE, lambda tmp: torch.save(payload, tmp))

    return save_catalogue_run(folder, write_weights, run.item_ids, run.titles, run.info)


def load_sasrec_run(folder: Path | str) -> SASRecRun:
    folder = Path(folder)
    if not is_sasrec_run(folder):
        raise FileNotFoundError(f"{folder} is not a SASRec run folder (`python -m recsys train --variant sasrec`)")
    info, item_ids, titles = load_catalogue_run(folder)
    payload = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model = SASRec(SASRecConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return SASRecRun(model.eval(), item_ids, info, titles)


def evaluate_sasrec_run(
    folder: Path | str,
    split: str = "test",
    data_dir: str | None = None,
    limit: int | None = None,
    exclude_seen: bool = False,
) -> dict[str, Any]:
    """Metrics of a SASRec run folder (torch, full ranking) on the data it records; the report of ``evaluate``."""
    run = load_sasrec_run(folder)

    def metrics(examples: EvalExamples, exclude: bool) -> dict[str, float]:
        return evaluate_sasrec(run.model, examples, ks=EVAL_KS, exclude_history=exclude)

    max_history = run.model.config.max_len
    return evaluation_report(
        folder, run.info, run.item_ids, max_history, "torch", metrics, split, data_dir, limit, exclude_seen
    )
