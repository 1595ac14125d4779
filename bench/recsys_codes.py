"""Semantic IDs of Beauty's item texts: how well each quantiser recipe describes the items.

For each recipe: squared reconstruction error per item (summed over dimensions) and the same relative to the
items' spread around their mean, codebook usage and perplexity per level, the collision rate before the fourth
(dedup) code, the largest collision group, optimiser steps and seconds. Recipes:

- ``rqvae-old``: the earlier runs' RQ-VAE (codebook/commitment terms averaged over the latent dimensions, 30
  epochs of batch 1024, ~360 steps: the codes stay close to their k-means initialisation);
- ``rqvae``: the reference weighting (terms summed over dimensions, beta 0.25), ``--steps`` optimiser steps;
- ``rkmeans``: residual k-means on the embedding itself (no training).

    .venv/bin/python bench/recsys_codes.py                      # -> bench/results/recsys_codes.json
    .venv/bin/python bench/recsys_codes.py --steps 5000 20000 50000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import threadpoolctl  # noqa: E402
import torch  # noqa: E402

from arcast_core.data_dir import find_data_dir  # noqa: E402
from arcast_core.files import atomic_write_text  # noqa: E402
from recsys.data import load_beauty_titles, load_dataset  # noqa: E402
from recsys.quantizer import QuantizerConfig, RQVAEConfig, quantise  # noqa: E402
from recsys.split import leave_one_out  # noqa: E402
from recsys.text_embeddings import embed_item_titles  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = (
    "method",
    "steps",
    "seconds",
    "reconstruction_error",
    "relative_reconstruction_error",
    "relative_latent_error",
    "codebook_usage",
    "perplexity",
    "collision_rate",
    "colliding_items",
    "max_group",
    "codes_reset",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/recsys_codes.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--steps", type=int, nargs="+", default=[20_000], help="RQ-VAE steps of the new recipe")
    parser.add_argument("--levels", type=int, nargs="+", default=[256, 256, 256])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-old", action="store_true", help="leave out the old recipe and residual k-means")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "recsys_codes.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(limits=args.threads)
    data_dir = find_data_dir(args.data_dir)
    split = leave_one_out(load_dataset("beauty", data_dir).sequences)
    titles = load_beauty_titles(data_dir).texts
    x = embed_item_titles(titles, split.item_map.raw_ids[1:]).vectors
    levels = tuple(args.levels)
    recipes: list[tuple[str, QuantizerConfig]] = []
    if not args.skip_old:
        old = RQVAEConfig(vq_reduction="mean", steps=None, epochs=30, batch_size=1024)
        recipes.append(("rqvae-old (mean over dims, 30 epochs)", QuantizerConfig("rqvae", levels, old)))
        recipes.append(("rkmeans", QuantizerConfig("rkmeans", levels)))
    for steps in args.steps:
        new = RQVAEConfig(vq_reduction="sum", steps=steps, batch_size=args.batch_size)
        recipes.append((f"rqvae (sum over dims, beta 0.25, {steps} steps)", QuantizerConfig("rqvae", levels, new)))
    rows = {}
    for name, config in recipes:
        t0 = time.monotonic()
        _, report = quantise(x, config)
        row = {k: report.get(k) for k in KEYS}
        row["wall_seconds"] = round(time.monotonic() - t0, 1)
        rows[name] = row
        print(name, json.dumps(row), file=sys.stderr, flush=True)
    lines = [
        "| recipe | steps | relative reconstruction error | codebook usage per level | collisions | largest group |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        usage = " / ".join(f"{u:.2f}" for u in r["codebook_usage"])
        rel = r["relative_reconstruction_error"]
        lines.append(
            f"| {name} | {r['steps'] or '-'} | {rel:.3f} | {usage} | {r['collision_rate']:.3f} | {r['max_group']} |"
        )
    payload = {
        "dataset": "beauty",
        "items": int(x.shape[0]),
        "embedding": "all-MiniLM-L6-v2 of the titles (384-d, unit length)",
        "command": shlex.join([sys.executable, *sys.argv]),
        "load_average": os.getloadavg(),
        "rows": rows,
        "table": "\n".join(lines),
    }
    atomic_write_text(args.out, json.dumps(payload, indent=2, default=float))
    print(payload["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
