"""Diverse beam search against plain beam search: accuracy and intra-list diversity at a few penalties.

For a run folder written by ``python -m recsys train`` (trained on all of Beauty), on the test users (every one, or
``--users N`` of them): Recall@10 and NDCG@10 (full ranking, history not masked, the published protocol), and in
each user's top 10 the number of distinct first-level codes and the mean pairwise cosine distance of the items'
title embeddings (MiniLM), averaged over users. The torch search is used; the served onnxruntime search returns
the same lists (tests/serving/test_recommend_service.py).

    .venv/bin/python bench/recsys_diversity.py --run runs/beauty-prorec --penalties 0 0.5 1 2 5
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from arcast_core.data_dir import find_data_dir  # noqa: E402
from arcast_core.files import atomic_write_text  # noqa: E402
from recsys.data import load_beauty_titles  # noqa: E402
from recsys.generator import recommend  # noqa: E402
from recsys.metrics import metrics_from_ranks, target_ranks_from_ranked_lists  # noqa: E402
from recsys.prorec_training import load_run, load_sequences  # noqa: E402
from recsys.split import leave_one_out  # noqa: E402
from recsys.text_embeddings import embed_item_titles  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def intra_list(items: np.ndarray, codes: np.ndarray, vectors: np.ndarray) -> tuple[float, float]:
    """Mean over users of distinct first codes and mean pairwise cosine distance of the title embeddings."""
    distinct, distance = [], []
    for row_items, row_codes in zip(items, codes, strict=True):
        keep = row_items != 0
        distinct.append(len(set(row_codes[keep, 0].tolist())))
        v = vectors[row_items[keep] - 1]
        if len(v) > 1:
            sims = v @ v.T
            n = len(v)
            distance.append(float(1 - (sims.sum() - np.trace(sims)) / (n * (n - 1))))
    return float(np.mean(distinct)), float(np.mean(distance))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/recsys_diversity.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder (python -m recsys train) on all of Beauty")
    parser.add_argument("--penalties", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 5.0])
    parser.add_argument("--users", type=int, default=0, help="test users (a fixed random sample; 0: all)")
    parser.add_argument("--beam-width", type=int, default=20)
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "recsys_diversity.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    spec = run.info.get("data", {"dataset": run.info["dataset"], "slice": None})
    if spec["dataset"] != "beauty":
        raise SystemExit("titles (for the embedding distance) exist for Beauty only")
    split = leave_one_out(load_sequences(spec, args.data_dir), max_history=run.model.config.max_history)
    vectors = embed_item_titles(load_beauty_titles(find_data_dir(args.data_dir)).texts, run.item_ids[1:]).vectors
    test = split.test
    rows = np.arange(len(test))
    if args.users:
        rows = np.sort(np.random.default_rng(0).choice(len(test), args.users, replace=False))
    index = run.code_index()
    results = []
    for penalty in args.penalties:
        t0 = time.monotonic()
        found = recommend(
            run.model,
            test.histories[rows],
            index.tokens,
            index.trie,
            10,
            args.beam_width,
            diversity=penalty,
            user_ids=test.user_ids[rows],
        )
        ranks = target_ranks_from_ranked_lists(found.items, test.targets[rows], 10, test.histories[rows])
        metrics = metrics_from_ranks(ranks, (5, 10))
        distinct, distance = intra_list(found.items, found.codes, vectors)
        results.append(
            {
                "diversity": penalty,
                **metrics,
                "distinct_first_codes@10": distinct,
                "mean_pairwise_title_distance@10": distance,
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    payload = {
        "run": str(args.run),
        "users": len(rows),
        "beam_width": args.beam_width,
        "command": shlex.join([sys.executable, *sys.argv]),
        "rows": results,
    }
    atomic_write_text(args.out, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
