"""Generative recommendation on Amazon Beauty: popularity, SASRec, TIGER-style, the ablations and PRORec.

Sports and Toys have no titles: there the rows are popularity, SASRec and the collaborative-code generator
(``--dataset sports --only popularity sasrec-ce collab``, results in ``bench/results/recsys_sports.json``).
``transitions`` (``recsys.transitions``: item-to-item transition counts, fitted in seconds) is the bar a user would
otherwise pick, on every dataset.

Protocol (shared/ANCHORS.md): leave-one-out, histories of up to 20 items, full ranking over all items on the whole
test set, Recall@5/10 and NDCG@5/10 (and @20), the history not masked. Each model is recorded with its training
time and size. The run can be split into parts (each under the machine's per-command limit) that share a work
folder: stage 1 (the SASRecs) saves the item embeddings there and the generator variants read them back; every
part merges its rows into the results file.

    .venv/bin/python bench/recsys.py --only popularity sasrec-ce stage1     # SASRec-CE + the aligned SASRec
    .venv/bin/python bench/recsys.py --only tiger collab
    .venv/bin/python bench/recsys.py --only concat prorec

Bounded CPU runs (--sasrec-minutes, --generator-minutes, --epochs, a small generator with an item-level encoder)
are far below the papers' training budgets; the JSON says so in "reduced" for every row trained under a budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

# This script is named like the package it measures: keep its own folder off the import path, or
# `import recsys` would find this file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402
import torch  # noqa: E402

from arcast_core.data_dir import find_data_dir  # noqa: E402
from arcast_core.files import atomic_write, atomic_write_text, binary_writer  # noqa: E402
from arcast_core.training import TrainConfig  # noqa: E402
from recsys.alignment import AlignmentConfig, alignment_report, collaborative_embeddings, train_aligned_sasrec  # noqa: E402
from recsys.data import load_beauty_titles, load_dataset, load_item_attributes  # noqa: E402
from recsys.models.sasrec import SASRecConfig  # noqa: E402
from recsys.popularity import evaluate_popularity  # noqa: E402
from recsys.prorec_training import (  # noqa: E402
    GeneratorShape,
    GeneratorTrainConfig,
    PipelineConfig,
    Stage1Config,
    evaluate_generator,
    stage1_train_config,
    train_pipeline,
)
from recsys.quantizer import QuantizerConfig, RQVAEConfig  # noqa: E402
from recsys.semantic_ids import ItemEmbeddings  # noqa: E402
from recsys.split import leave_one_out  # noqa: E402
from recsys.text_embeddings import attribute_embeddings, combine_item_sides, embed_item_titles  # noqa: E402
from recsys.training import evaluate_sasrec, train_sasrec  # noqa: E402
from recsys.transitions import evaluate_transitions  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
MODELS = ("popularity", "transitions", "sasrec-ce", "sasrec-bce", "stage1", "tiger", "collab", "concat", "prorec")
NEED_TITLES = ("stage1", "tiger", "concat", "prorec")
# shared/ANCHORS.md (the TIGER paper's table), per dataset: a results file carries its own dataset's figures.
PUBLISHED = {
    "beauty": {
        "SASRec (TIGER/PRORec tables, BCE)": {
            "recall@5": 0.0387,
            "ndcg@5": 0.0249,
            "recall@10": 0.0605,
            "ndcg@10": 0.0318,
        },
        "TIGER (paper)": {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384},
    },
    "sports": {
        "SASRec (TIGER/PRORec tables, BCE)": {
            "recall@5": 0.0233,
            "ndcg@5": 0.0154,
            "recall@10": 0.0350,
            "ndcg@10": 0.0192,
        },
        "TIGER (paper)": {"recall@5": 0.0264, "ndcg@5": 0.0181, "recall@10": 0.0400, "ndcg@10": 0.0225},
    },
    "toys": {
        "SASRec (TIGER/PRORec tables, BCE)": {
            "recall@5": 0.0463,
            "ndcg@5": 0.0306,
            "recall@10": 0.0675,
            "ndcg@10": 0.0374,
        },
        "TIGER (paper)": {"recall@5": 0.0521, "ndcg@5": 0.0371, "recall@10": 0.0712, "ndcg@10": 0.0432},
    },
}
COLLEAGUE_SASREC = {  # Beauty's (the only dataset then): written into Beauty's results only
    "source": "recsys.baselines at a 10-minute budget on Beauty, reported by a colleague; not rerun here",
    "sasrec-ce": {"recall@5": 0.0462, "ndcg@5": 0.0272, "recall@10": 0.0723, "ndcg@10": 0.0357},
    "sasrec-bce": "under-trained at that budget (no figures reported)",
    "popularity": {"recall@5": 0.0064, "ndcg@5": 0.0037, "recall@10": 0.0106, "ndcg@10": 0.0051},
}


def published_figures(dataset: str) -> dict[str, Any]:
    """What a results file of ``dataset`` is compared with: that dataset's published rows (and on Beauty the
    colleague's SASRec report)."""
    return {"published": PUBLISHED[dataset]} | ({"colleague_sasrec": COLLEAGUE_SASREC} if dataset == "beauty" else {})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/recsys.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS), help="rows to (re)compute")
    parser.add_argument(
        "--dataset", choices=("beauty", "sports", "toys"), default="beauty", help="only Beauty has titles"
    )
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="stage-1 embeddings are kept here (default runs/bench-recsys[-DATASET]), and under resume/ each "
        "generator's codes and checkpoint: a rerun of the same command goes on from its last validation round "
        "(delete resume/ to start over)",
    )
    parser.add_argument("--out", type=Path, help="default bench/results/recsys.json (recsys_DATASET.json elsewhere)")
    parser.add_argument(
        "--collect",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="train nothing: merge the rows of results files that runs wrote elsewhere (their --out, e.g. in runs/) "
        "into --out and bench/results/recsys.json, with each row's machine facts but not the files' headers",
    )
    parser.add_argument(
        "--chart",
        action="store_true",
        help="train nothing: draw bench/results/recsys.svg (every dataset's test Recall@10 beside the published "
        "figures, and the long generator runs' validation curves) from the results files (--collect draws it too)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    s1 = parser.add_argument_group("SASRec (baseline rows and stage 1)")
    s1.add_argument("--sasrec-minutes", type=float, default=2.5)
    s1.add_argument("--sasrec-epochs", type=int, default=30)
    s1.add_argument("--sasrec-hidden", type=int, default=64)
    s1.add_argument(
        "--sasrec-patience",
        type=int,
        default=3,
        help="validations without improvement before stopping (BCE with one negative learns slowly: give it more)",
    )
    s1.add_argument("--align-weight", type=float, default=0.5)
    s1.add_argument("--align-temperature", type=float, default=0.1)
    parser.add_argument(
        "--text-fields",
        nargs="+",
        choices=("title", "attributes"),
        default=["title"],
        help="the items' semantic side: MiniLM of the title (Beauty only) and/or the attribute ids of "
        "item2attributes.json (Beauty, Sports; anonymous ids, embedded by SVD; see recsys.text_embeddings)",
    )
    g = parser.add_argument_group("semantic IDs and generator")
    g.add_argument("--quantizer", choices=("rqvae", "rkmeans"), default="rqvae")
    g.add_argument("--levels", type=int, nargs="+", default=[256, 256, 256])
    g.add_argument("--rqvae-steps", type=int, default=20_000, help="0: --rqvae-epochs passes (the earlier recipe)")
    g.add_argument("--rqvae-epochs", type=int, default=30)
    g.add_argument("--vq-reduction", choices=("sum", "mean"), default="sum", help="mean: the earlier recipe")
    g.add_argument("--generator-minutes", type=float, default=2.5)
    g.add_argument("--epochs", type=int, default=30, help="generator epochs (the minutes usually stop it first)")
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--d-ff", type=int, default=256)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--encoder-layers", type=int, default=2)
    g.add_argument("--decoder-layers", type=int, default=2)
    g.add_argument("--encoder-unit", choices=("token", "item"), default="item")
    g.add_argument("--user-buckets", type=int, default=0, help="TIGER's hashed user token (0: none)")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--eval-users", type=int, default=1000, help="validation users for selection (0: all)")
    g.add_argument("--patience", type=int, default=3, help="validations without improvement before stopping")
    g.add_argument("--lr-schedule", choices=("constant", "inverse_sqrt", "cosine"), default="constant")
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--eval-steps", type=int, default=0, help="validate every N steps (0: every epoch)")
    g.add_argument("--max-steps", type=int, default=0, help="with --eval-steps: the most optimiser steps")
    g.add_argument("--patience-steps", type=int, default=0, help="with --eval-steps: steps without improvement")
    g.add_argument(
        "--budget-clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what --generator-minutes and --sasrec-minutes count: cpu = this process's CPU time (comparable on a "
        "loaded machine)",
    )
    g.add_argument(
        "--test-only", action="store_true", help="full evaluation on every test user only (skip the validation pass)"
    )
    g.add_argument(
        "--test-users",
        type=int,
        default=0,
        help="evaluate on this many test users (a fixed random sample; 0: every one). A sample is a reduced row",
    )
    g.add_argument("--label", help="row name (default: the variant); lets two recipes of one variant sit side by side")
    g.add_argument("--beam-width", type=int, default=20)
    g.add_argument("--distill-weight", type=float, default=0.1, help="stage 2 (prorec only)")
    args = parser.parse_args(argv)
    suffix = "" if args.dataset == "beauty" else f"_{args.dataset}"
    # The gathered rows of every dataset live in recsys.json; a run writing elsewhere (--out) leaves it alone.
    args.index = RESULTS_DIR / "recsys.json" if args.out is None or args.collect else None
    args.out = args.out or RESULTS_DIR / f"recsys{suffix}.json"
    args.work_dir = args.work_dir or REPO_ROOT / "runs" / f"bench-recsys{suffix.replace('_', '-')}"
    if (
        not args.collect
        and args.dataset != "beauty"
        and "title" in args.text_fields
        and (needing := [m for m in args.only if m in NEED_TITLES])
    ):
        verb = "needs" if len(needing) == 1 else "need"
        parser.error(
            f"--only: {', '.join(needing)} {verb} item titles, which {args.dataset} does not have "
            "(--text-fields attributes uses its attribute ids instead, where it has them)"
        )
    return args


def semantic_side(args: argparse.Namespace, titles: dict | None, split: Any) -> np.ndarray | None:
    """The items' semantic embedding from ``--text-fields`` (dense-id order), or None where there is none; kept in
    the work folder, so that a run on another machine (another BLAS, another scikit-learn: other float bits in the
    attributes' SVD) reads the very bytes the stage-1 embeddings and the kept semantic IDs were made from."""
    raw_ids = split.item_map.raw_ids[1:]
    kept = args.work_dir / f"semantic-{'-'.join(sorted(args.text_fields))}-seed{args.seed}.npy"
    if kept.is_file():
        vectors = np.load(kept)
        if len(vectors) == len(raw_ids):
            return vectors
    vectors = _semantic_vectors(args, titles, raw_ids)
    if vectors is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(kept, binary_writer(lambda handle: np.save(handle, vectors)))
    return vectors


def _semantic_vectors(args: argparse.Namespace, titles: dict | None, raw_ids: np.ndarray) -> np.ndarray | None:
    parts = []
    if "title" in args.text_fields and titles:
        parts.append(embed_item_titles(titles, raw_ids).vectors)
    if "attributes" in args.text_fields:
        attributes = load_item_attributes(args.dataset, find_data_dir(args.data_dir))
        if attributes is None:
            raise SystemExit(f"{args.dataset} has no item2attributes.json: --text-fields attributes is not possible")
        parts.append(attribute_embeddings(attributes, raw_ids, seed=args.seed))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else combine_item_sides(parts)


def clock_name(args: argparse.Namespace) -> str:
    """How a row's budget names the clock it counted (``--budget-clock``)."""
    return "CPU time" if args.budget_clock == "cpu" else "wall-clock"


def sasrec_config(args: argparse.Namespace, n_items: int) -> tuple[SASRecConfig, TrainConfig]:
    model = SASRecConfig(num_items=n_items, hidden=args.sasrec_hidden, loss="ce")
    stage1 = Stage1Config(
        hidden=args.sasrec_hidden,
        epochs=args.sasrec_epochs,
        patience=args.sasrec_patience,
        max_seconds=args.sasrec_minutes * 60,
        budget_clock=args.budget_clock,
    )
    train = stage1_train_config(stage1, args.seed, progress=False)  # the same loop settings as PRORec's stage 1
    return model, train


def run_sasrec(args: argparse.Namespace, split: Any, loss: str, semantic: np.ndarray | None = None) -> dict:
    model_config, train_config = sasrec_config(args, split.num_items)
    model_config = SASRecConfig(**{**asdict(model_config), "loss": loss})
    started = time.monotonic()
    if semantic is None:
        result = train_sasrec(split, model_config, train_config)
    else:
        alignment = AlignmentConfig(weight=args.align_weight, temperature=args.align_temperature)
        result = train_aligned_sasrec(split, semantic, model_config, train_config, alignment)
    seconds = time.monotonic() - started
    embeddings = collaborative_embeddings(result.model)
    row = {
        "test": evaluate_sasrec(result.model, split.test),
        "validation": result.best_validation,
        "train_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for n, p in result.model.named_parameters() if "semantic_projection" not in n),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_by": result.stopped_by,
        "train_loss_per_epoch": [round(log.train_loss, 4) for log in result.history],
        "reduced": f"{args.sasrec_minutes} min budget" if result.stopped_by == "time_budget" else None,
        "steps": len(result.history) * math.ceil(len(split.train_sequences) / train_config.batch_size),
        "budget": f"{args.sasrec_minutes} min {clock_name(args)}, {args.sasrec_epochs} epochs, "
        f"patience {args.sasrec_patience}",
    }
    return {"row": row, "embeddings": embeddings}


def pipeline_config(args: argparse.Namespace, variant: str) -> PipelineConfig:
    return PipelineConfig(
        variant=variant,
        stage1=Stage1Config(hidden=args.sasrec_hidden),
        quantizer=QuantizerConfig(
            method=args.quantizer,
            level_sizes=tuple(args.levels),
            rqvae=RQVAEConfig(steps=args.rqvae_steps or None, epochs=args.rqvae_epochs, vq_reduction=args.vq_reduction),
        ),
        generator=GeneratorShape(
            d_model=args.d_model,
            heads=args.heads,
            encoder_layers=args.encoder_layers,
            decoder_layers=args.decoder_layers,
            d_ff=args.d_ff,
            encoder_unit=args.encoder_unit,
            user_buckets=args.user_buckets,
        ),
        train=GeneratorTrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps,
            patience=args.patience,
            eval_steps=args.eval_steps,
            max_steps=args.max_steps,
            patience_steps=args.patience_steps,
            eval_users=args.eval_users,
            beam_width=args.beam_width,
            distill_weight=args.distill_weight if variant == "prorec" else 0.0,
            seed=args.seed,
            max_seconds=args.generator_minutes * 60,
            budget_clock=args.budget_clock,
            progress=False,
        ),
    )


def load_stage1(work: Path, variant: str) -> dict[str, np.ndarray]:
    needed = {"collab": ["collaborative"], "concat": ["collaborative"], "prorec": ["aligned"]}.get(variant, [])
    out = {}
    for name in needed:
        path = work / f"{name}.npy"
        if not path.is_file():
            raise SystemExit(f"{variant} needs {path}: run `--only sasrec-ce stage1` first")
        out[name] = np.load(path)
    return out


def run_variant(args: argparse.Namespace, variant: str, sequences: dict, titles: dict | None, split: Any) -> dict:
    semantic = semantic_side(args, titles, split)
    stage1 = load_stage1(args.work_dir, variant)
    embeddings = ItemEmbeddings(semantic=semantic, **stage1)
    run = train_pipeline(
        args.dataset,
        sequences,
        pipeline_config(args, variant),
        titles=titles,
        embeddings=embeddings,
        evaluate_full=False if args.test_users else ("test" if args.test_only else True),
        resume_dir=args.work_dir / "resume",
    )
    info = run.info
    if args.test_users:
        users = np.sort(np.random.default_rng(args.seed).choice(len(split.test), args.test_users, replace=False))
        index = run.code_index()
        info["metrics"]["test"] = evaluate_generator(run.model, index, split.test, args.beam_width, users=users)
        info["metrics"]["test_users"] = len(users)
    timings = info["timings"]
    stage1_seconds = {"collab": "sasrec-ce", "concat": "sasrec-ce", "prorec": "stage1"}.get(variant)
    reduced = f"{args.generator_minutes} min budget, small generator"
    if args.test_users:
        reduced += f"; {args.test_users} of {len(split.test)} test users (random sample, seed {args.seed})"
    return {
        "test": info["metrics"]["test"],
        "validation": info["metrics"].get("validation"),
        "train_seconds": round(timings.get("quantizer_seconds", 0) + timings["generator_seconds"], 1),
        "timings": timings,
        "stage1_from": stage1_seconds,
        "parameters": info["model_size"]["parameters"],
        "model_size": info["model_size"],
        "codes": info["codes"],
        "fit": {k: v for k, v in info["fit"].items() if k != "history"},
        "history": [
            {k: v for k, v in h.items() if k in ("epoch", "loss", "codes", "seconds", "validation")}
            for h in info["fit"]["history"]
        ],
        "config": info["config"],
        "reduced": reduced if info["fit"]["stopped_by"] == "time_budget" or args.test_users else "small generator",
        "steps": info["fit"]["steps"],
        "budget": f"{args.generator_minutes} min {clock_name(args)} "
        f"(generator), stopped by {info['fit']['stopped_by']}",
    }


def machine_facts() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


ROW_KEYS = (
    "model",
    "dataset",
    "recall@5",
    "ndcg@5",
    "recall@10",
    "ndcg@10",
    "recall@20",
    "ndcg@20",
    "train_seconds",
    "steps",
    "parameters",
    "budget",
    "reduced",
    "command",
)


def flat_rows(results: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    """One row per model with the keys every results file shares (ROW_KEYS): test metrics on every test user."""
    rows = []
    for name, row in results.items():
        if "test" not in row:
            continue
        flat = {"model": name, "dataset": dataset, **{k: row["test"].get(k) for k in ROW_KEYS[2:8]}}
        flat.update({k: row.get(k) for k in ROW_KEYS[8:]})
        rows.append(flat)
    return rows


def merge(out: Path, rows: dict[str, Any], extra: dict[str, Any], index: Path | None = None) -> dict[str, Any]:
    """Merge ``rows`` into ``out``; ``index``: a results file whose top-level ``rows`` gathers every dataset's rows
    (bench/results/recsys.json), updated with this dataset's."""
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"results": {}}
    report["results"].update(rows)
    report.update(extra)
    dataset = report.get("dataset", "beauty")
    report["rows"] = flat_rows(report["results"], dataset)
    report["table"] = table(report["results"])
    if index is not None and index.resolve() != out.resolve():
        gather(index, report["rows"])
    elif index is not None:  # the index itself: keep the other datasets' rows
        previous = json.loads(out.read_text()).get("rows", []) if out.is_file() else []
        report["rows"] = _replaced(previous, report["rows"])
    atomic_write_text(out, json.dumps(report, indent=2, default=float))
    return report


def collect(files: Sequence[Path], dataset: str, out: Path, index: Path | None) -> dict[str, Any]:
    """Merge the rows of results files written elsewhere into ``out`` (and ``index``): their rows and the machine
    facts of the runs that made them, not their headers (a file written by older code carried Beauty's published
    figures whatever its dataset)."""
    rows: dict[str, Any] = {}
    machines: dict[str, Any] = {}
    for path in files:
        report = json.loads(path.read_text())
        if report.get("dataset", "beauty") != dataset:
            raise SystemExit(f"--collect {path}: its rows are {report.get('dataset')!r}'s, not --dataset {dataset}'s")
        rows.update(report["results"])
        machines.update({k: v for k, v in report.items() if k.startswith("machine_")})
    extra = {"dataset": dataset, **machines}
    if index is None or index.resolve() == out.resolve():
        return merge(out, rows, extra, index=index)
    report = merge(out, rows, extra)
    gather(index, flat_rows(rows, dataset))  # only the collected rows: out's others may differ from the index's
    return report


def gather(index: Path, rows: list[dict[str, Any]]) -> None:
    """Put ``rows`` into the top-level ``rows`` of ``index`` (bench/results/recsys.json), replacing their namesakes."""
    gathered: dict[str, Any] = json.loads(index.read_text()) if index.is_file() else {"results": {}}
    gathered["rows"] = _replaced(gathered.get("rows", []), rows)
    atomic_write_text(index, json.dumps(gathered, indent=2, default=float))


LONG_RUN_STEPS = 10_000  # the validation curves drawn: generator runs of at least this many steps


def draw_chart(results: Path, path: Path) -> None:
    """``charts.recsys_chart`` from the results files in ``results``: the gathered rows of recsys.json, each
    dataset's published TIGER and SASRec, and the validation curves of every long generator run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from charts import GENERATORS, recsys_chart  # matplotlib only for the chart

    published = {
        dataset: {name: row["recall@10"] for name, row in figures.items() if isinstance(row, dict)}
        for dataset, figures in PUBLISHED.items()
    }
    curves: dict[str, list[tuple[int, float]]] = {}
    for file in sorted(results.glob("recsys*.json")):
        report = json.loads(file.read_text())
        for name, row in report.get("results", {}).items():
            history = row.get("history") or []
            if not history or (row.get("steps") or 0) < LONG_RUN_STEPS or not name.startswith(GENERATORS):
                continue
            per_round = row["steps"] / len(history)  # every round the same number of steps
            points = [
                (round(per_round * (i + 1)), h["validation"]["recall@10"])
                for i, h in enumerate(history)
                if "recall@10" in (h.get("validation") or {})
            ]
            if points:
                curves[f"{report.get('dataset', 'beauty')}: {name}"] = points
    rows = json.loads((results / "recsys.json").read_text())["rows"]
    recsys_chart(rows, published, curves, path)


def _replaced(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each (dataset, model) that ``new`` has replaced by it: rows other runs put there are kept."""
    fresh = {(r["dataset"], r["model"]) for r in new}
    return [r for r in rows if (r["dataset"], r["model"]) not in fresh] + new


def table(results: dict[str, Any]) -> str:
    lines = [
        "| model | R@5 | N@5 | R@10 | N@10 | train s | parameters | reduced |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        if "test" not in row:
            continue
        t = row["test"]
        lines.append(
            f"| {name} | {t['recall@5']:.4f} | {t['ndcg@5']:.4f} | {t['recall@10']:.4f} | {t['ndcg@10']:.4f} | "
            f"{row.get('train_seconds', 0)} | {row.get('parameters', 0)} | {row.get('reduced') or ''} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.collect:
        print(collect(args.collect, args.dataset, args.out, args.index)["table"])
    if args.collect or args.chart:
        draw_chart(RESULTS_DIR, RESULTS_DIR / "recsys.svg")
        return 0
    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(limits=args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = find_data_dir(args.data_dir)
    sequences = load_dataset(args.dataset, data_dir).sequences
    titles = load_beauty_titles(data_dir).texts if args.dataset == "beauty" else None
    split = leave_one_out(sequences)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    rows: dict[str, Any] = {}
    for name in [m for m in MODELS if m in args.only]:
        t0 = time.monotonic()
        if name == "popularity":
            rows[name] = {
                "test": evaluate_popularity(split, split.test),
                "validation": evaluate_popularity(split, split.validation),
                "train_seconds": 0.0,
                "parameters": 0,
            }
        elif name == "transitions":
            test, chosen = evaluate_transitions(split, split.test)
            rows[name] = {
                "test": test,
                "validation": chosen["validation"][chosen["setting"]],
                "window": chosen["window"],
                "decay": chosen["decay"],
                "validation_by_setting": chosen["validation"],
                "train_seconds": round(time.monotonic() - t0, 1),  # counting, the decay search and the scoring
                "parameters": 0,
                "budget": "closed form: transition counts, window and decay chosen on validation NDCG@10",
            }
        elif name in ("sasrec-ce", "sasrec-bce"):
            result = run_sasrec(args, split, name.removeprefix("sasrec-"))
            rows[name] = result["row"]
            if name == "sasrec-ce":
                np.save(args.work_dir / "collaborative.npy", result["embeddings"])
        elif name == "stage1":
            semantic = semantic_side(args, titles, split)
            assert semantic is not None  # refused for datasets without titles in parse_args
            result = run_sasrec(args, split, "ce", semantic)
            np.save(args.work_dir / "aligned.npy", result["embeddings"])
            result["row"]["agreement_with_titles"] = alignment_report(result["embeddings"], semantic)
            plain = args.work_dir / "collaborative.npy"
            if plain.is_file():
                result["row"]["plain_sasrec_agreement_with_titles"] = alignment_report(np.load(plain), semantic)
            rows["sasrec-ce-aligned (PRORec stage 1)"] = result["row"]
        else:
            rows[args.label or name] = run_variant(args, name, sequences, titles, split)
        rows_done = rows.get(args.label or name) or rows.get(name) or rows.get("sasrec-ce-aligned (PRORec stage 1)")
        rows_done["command"] = shlex.join([sys.executable, *sys.argv])  # type: ignore[index]
        rows_done["wall_seconds"] = round(time.monotonic() - t0, 1)  # type: ignore[index]
        report = merge(
            args.out,
            rows,
            {
                "dataset": args.dataset,
                "users": len(split.test),
                "items": split.num_items,
                "protocol": "leave-one-out, full ranking over all items, whole test set, history not masked",
                **published_figures(args.dataset),
                f"machine_{name}": {**machine_facts(), "started": started},
            },
            index=args.index,
        )
        print(f"done: {name} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(report["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
