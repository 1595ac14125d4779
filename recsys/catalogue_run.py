"""What the run folders of the recommenders without a generator share (SASRec, item-to-item transitions): the
item ids and titles beside the model's own file, ``run.json`` written last (it marks the folder complete), and the
report of ``python -m recsys evaluate --run``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from arcast_core.files import atomic_write, atomic_write_text, binary_writer
from recsys.prorec_training import ITEM_IDS_FILE, RUN_FILE, TITLES_FILE, run_examples
from recsys.split import EvalExamples


def is_run_of(folder: Path | str, variant: str) -> bool:
    path = Path(folder) / RUN_FILE
    return path.is_file() and json.loads(path.read_text()).get("variant") == variant


def titles_by_dense_id(titles: dict[int, str] | None, raw_ids: np.ndarray) -> list[str] | None:
    """Each dense id's title ("" for padding and unknown items), or None without titles."""
    if titles is None:
        return None
    return ["", *(titles.get(int(raw), "") for raw in raw_ids[1:])]


def save_catalogue_run(
    folder: Path | str,
    write_model: Callable[[Path], None],
    item_ids: np.ndarray,
    titles: list[str] | None,
    info: dict[str, Any],
) -> Path:
    """``write_model(folder)`` writes the model's own file(s) atomically; then the item ids, titles and run.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_model(folder)
    atomic_write(folder / ITEM_IDS_FILE, binary_writer(lambda handle: np.save(handle, item_ids)))
    if titles is not None:
        atomic_write_text(folder / TITLES_FILE, json.dumps(titles))
    atomic_write_text(folder / RUN_FILE, json.dumps(info, indent=2, default=float))  # last: marks it complete
    return folder


def load_catalogue_run(folder: Path | str) -> tuple[dict[str, Any], np.ndarray, list[str] | None]:
    """(run.json, item ids, titles or None) of a run folder."""
    folder = Path(folder)
    info = json.loads((folder / RUN_FILE).read_text())
    titles = json.loads((folder / TITLES_FILE).read_text()) if (folder / TITLES_FILE).is_file() else None
    return info, np.load(folder / ITEM_IDS_FILE), titles


def evaluation_report(
    folder: Path | str,
    info: dict[str, Any],
    item_ids: np.ndarray,
    max_history: int,
    engine: str,
    metrics: Callable[[EvalExamples, bool], dict[str, float]],
    split: str = "test",
    data_dir: str | None = None,
    limit: int | None = None,
    exclude_seen: bool = False,
) -> dict[str, Any]:
    """The report of ``evaluate --run``: ``metrics(examples, exclude_seen)`` on the data the run records."""
    examples, facts = run_examples(info, item_ids, max_history, split, data_dir)
    if limit is not None:
        n = min(limit, len(examples))
        examples = EvalExamples(examples.user_ids[:n], examples.histories[:n], examples.targets[:n])
    return {
        "model": str(folder),
        "engine": engine,
        **facts,
        "split": split,
        "users": len(examples),
        "exclude_seen": exclude_seen,
        "metrics": metrics(examples, exclude_seen),
    }
