"""Command line: python -m recsys train | tune | export | evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from arcast_core.tuning_args import add_worker_args
from recsys.semantic_ids import VARIANTS

EXIT_BAD_INPUT = 2
SASREC = "sasrec"  # recsys.sasrec_run.VARIANT (not imported here: it pulls in torch before --help)
TRANSITIONS = "transitions"  # recsys.transitions.VARIANT (likewise)
DESCRIPTION = """\
Generative recommendation with semantic IDs (TIGER / PRORec) on the Amazon 2014 5-core benchmarks.

Typical flow:
  python -m recsys train --dataset beauty --variant prorec --out runs/beauty-prorec
  python -m recsys tune --run runs/beauty-prorec --trials 20 --out tuning/beauty-prorec
  python -m recsys train --from-run runs/beauty-prorec --params tuning/beauty-prorec/best_params.json \\
      --out runs/beauty-prorec-tuned
  python -m recsys export --run runs/beauty-prorec-tuned --store models --name beauty-prorec
  python -m recsys evaluate --store models --name beauty-prorec

Variants (the ablations share everything but the item embedding that is quantised):
  tiger   title embeddings (all-MiniLM-L6-v2) alone
  collab  collaborative embeddings (a SASRec's item table) alone
  concat  raw title + raw collaborative embeddings side by side ("semantic domination")
  prorec  stage 1: a SASRec trained with next-item prediction + InfoNCE alignment to the titles; the unit-length
          aligned collaborative and title embeddings are concatenated and quantised; stage 2: the generator is
          also distilled towards both embeddings
  sasrec  no generator: PRORec's stage 1 alone (SASRec-CE, aligned with the titles where they exist), served as
          one score per item (rollout item_scores); on this machine's budgets it ranks better than the generators
          (README, "Recommendations"). `train --variant sasrec` then `export` and `evaluate` as for the others;
          its training flags are the stage-1 ones (--sasrec-*, --align-*, --budget-clock)
  transitions  no training at all: item-to-item transitions within a few steps (sequential rules), decayed over
          the history (window and decay chosen on validation), popularity for ties; a minute to fit, and above
          every generator trained here (README, "Recommendations"): the bar the others must clear. Served as
          item_scores like sasrec
Titles exist for beauty only, so on sports and toys only `collab`, `sasrec` and `transitions` run.

Protocol: leave-one-out (last item test, second last validation), histories of up to 20 items, full ranking over
all items (the beam search returns real items only), Recall@K and NDCG@K, the history not masked. The data is read
from --data-dir, else $ARCAST_DATA_DIR, else ../shared/data. Runs use one torch thread by default (--threads):
on a shared CPU more threads were measured to be many times slower.
"""


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=("beauty", "sports", "toys"), default="beauty")
    group.add_argument("--data-dir", help="benchmark data folder (default: $ARCAST_DATA_DIR or ../shared/data)")
    group.add_argument(
        "--slice-items",
        type=int,
        help="keep only the N most interacted items (with --slice-users: a dense slice for quick runs, not figures)",
    )
    group.add_argument("--slice-users", type=int, default=4000, help="users kept in a slice (default 4000)")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    s1 = parser.add_argument_group("stage 1 (SASRec item embeddings, alignment)")
    s1.add_argument("--sasrec-hidden", type=int, default=64)
    s1.add_argument("--sasrec-epochs", type=int, default=30)
    s1.add_argument("--sasrec-minutes", type=float, help="budget per SASRec (wall-clock unless --budget-clock cpu)")
    s1.add_argument(
        "--sasrec-patience", type=int, default=3, help="epochs without a better validation NDCG@10 before stopping"
    )
    s1.add_argument("--align-weight", type=float, default=0.5, help="InfoNCE weight against next-item CE")
    s1.add_argument("--align-temperature", type=float, default=0.1)
    q = parser.add_argument_group("semantic IDs")
    q.add_argument("--quantizer", choices=("rqvae", "rkmeans"), default="rqvae", help="RQ-VAE or residual k-means")
    q.add_argument(
        "--levels", type=int, nargs="+", default=[256, 256, 256], help="codes per level (a dedup code is added)"
    )
    q.add_argument(
        "--rqvae-steps",
        type=int,
        default=20_000,
        help="RQ-VAE optimiser steps (default 20000; 0: --rqvae-epochs passes instead, the earlier recipe)",
    )
    q.add_argument("--rqvae-epochs", type=int, default=30, help="RQ-VAE passes when --rqvae-steps is 0")
    q.add_argument(
        "--vq-reduction",
        choices=("sum", "mean"),
        default="sum",
        help="codebook/commitment terms summed over latent dimensions (reference) or averaged (earlier runs)",
    )
    g = parser.add_argument_group("generator")
    g.add_argument("--d-model", type=int, default=128)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--encoder-layers", type=int, default=2)
    g.add_argument("--decoder-layers", type=int, default=2)
    g.add_argument("--d-ff", type=int, default=512)
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument(
        "--encoder-unit",
        choices=("token", "item"),
        default="token",
        help="token: one encoder position per code token (TIGER); item: one per history item (4x cheaper)",
    )
    g.add_argument(
        "--user-buckets",
        type=int,
        default=0,
        help="TIGER's hashed user token with this many buckets (0: none; training and torch evaluation only, "
        "export refuses it)",
    )
    t = parser.add_argument_group("generator training")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--patience", type=int, default=3, help="evaluations without improvement before stopping")
    t.add_argument(
        "--lr-schedule",
        choices=("constant", "inverse_sqrt", "cosine"),
        default="constant",
        help="after --warmup-steps; inverse_sqrt is TIGER's",
    )
    t.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
    t.add_argument(
        "--eval-steps", type=int, default=0, help="validate every N steps (0: every epoch); steps then count"
    )
    t.add_argument("--max-steps", type=int, default=0, help="with --eval-steps: the most optimiser steps")
    t.add_argument(
        "--patience-steps", type=int, default=0, help="with --eval-steps: steps without improvement before stopping"
    )
    t.add_argument("--eval-users", type=int, default=2000, help="validation users for selection (0: all)")
    t.add_argument("--beam-width", type=int, default=20)
    t.add_argument("--distill-weight", type=float, help="stage-2 weight (default 0.1 for prorec, 0 otherwise)")
    t.add_argument("--distill-temperature", type=float, default=0.1)
    t.add_argument("--minutes", type=float, help="budget for the generator (wall-clock unless --budget-clock cpu)")
    t.add_argument(
        "--budget-clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what --minutes and --sasrec-minutes count: cpu = this process's CPU time (the same training on a "
        "loaded machine)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", help="default: cuda when available, else cpu")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def _pipeline_config(args: argparse.Namespace, variant: str) -> Any:
    from recsys.alignment import AlignmentConfig
    from recsys.prorec_training import GeneratorShape, GeneratorTrainConfig, PipelineConfig, Stage1Config
    from recsys.quantizer import QuantizerConfig, RQVAEConfig

    distill = args.distill_weight if args.distill_weight is not None else (0.1 if variant == "prorec" else 0.0)
    return PipelineConfig(
        variant=variant,
        stage1=Stage1Config(
            hidden=args.sasrec_hidden,
            epochs=args.sasrec_epochs,
            patience=args.sasrec_patience,
            max_seconds=args.sasrec_minutes * 60 if args.sasrec_minutes else None,
            budget_clock=args.budget_clock,
            alignment=AlignmentConfig(weight=args.align_weight, temperature=args.align_temperature),
        ),
        quantizer=QuantizerConfig(
            method=args.quantizer,
            level_sizes=tuple(args.levels),
            rqvae=RQVAEConfig(steps=args.rqvae_steps or None, epochs=args.rqvae_epochs, vq_reduction=args.vq_reduction),
            seed=args.seed,
        ),
        generator=GeneratorShape(
            d_model=args.d_model,
            heads=args.heads,
            encoder_layers=args.encoder_layers,
            decoder_layers=args.decoder_layers,
            d_ff=args.d_ff,
            dropout=args.dropout,
            encoder_unit=args.encoder_unit,
            user_buckets=args.user_buckets,
        ),
        train=GeneratorTrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            patience=args.patience,
            lr_schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps,
            eval_steps=args.eval_steps,
            max_steps=args.max_steps,
            patience_steps=args.patience_steps,
            eval_users=args.eval_users,
            beam_width=args.beam_width,
            distill_weight=distill,
            distill_temperature=args.distill_temperature,
            seed=args.seed,
            device=args.device,
            max_seconds=args.minutes * 60 if args.minutes else None,
            budget_clock=args.budget_clock,
            progress=True,
        ),
    )


def data_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"dataset": args.dataset, "slice": None}
    if args.slice_items:
        spec["slice"] = {"top_items": args.slice_items, "max_users": args.slice_users}
    return spec


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _print_metrics(metrics: dict[str, dict[str, float]]) -> None:
    for split, values in metrics.items():
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        print(f"{split:<18} {shown}")


def cmd_train(args: argparse.Namespace) -> int:
    from arcast_core.data_dir import find_data_dir
    from recsys.data import load_beauty_titles
    from recsys.prorec_training import load_run, load_sequences, retrain_generator, save_run, train_pipeline
    from recsys.tuning import apply_settings, settings_from_file

    _set_threads(args.threads)
    if args.variant == SASREC:
        return _train_sasrec(args)
    if args.variant == TRANSITIONS:
        return _train_transitions(args)
    if args.from_run:
        base = load_run(args.from_run)
        spec = base.info.get("data", {"dataset": base.info["dataset"], "slice": None})
        config = _pipeline_config(args, base.variant)
        if args.params:
            config = apply_settings(config, settings_from_file(args.params))
        run = retrain_generator(base, load_sequences(spec, args.data_dir), config, args.resume_dir)
    else:
        spec = data_spec(args)
        config = _pipeline_config(args, args.variant)
        if args.params:
            config = apply_settings(config, settings_from_file(args.params))
        titles = load_beauty_titles(find_data_dir(args.data_dir)).texts if args.dataset == "beauty" else None
        sequences = load_sequences(spec, args.data_dir)
        run = train_pipeline(args.dataset, sequences, config, titles=titles, resume_dir=args.resume_dir)
    run.info["data"] = spec
    save_run(run, args.out)
    _print_metrics(run.info["metrics"])
    print(f"saved run to {args.out} ({run.info['timings']})")
    return 0


def _train_sasrec(args: argparse.Namespace) -> int:
    from arcast_core.data_dir import find_data_dir
    from recsys.data import load_beauty_titles
    from recsys.prorec_training import load_sequences
    from recsys.sasrec_run import save_sasrec_run, train_sasrec_run

    if args.from_run or args.params:
        raise ValueError("--from-run and --params retrain a generator; --variant sasrec has none")
    spec = data_spec(args)
    titles = load_beauty_titles(find_data_dir(args.data_dir)).texts if args.dataset == "beauty" else None
    stage1 = _pipeline_config(args, "prorec").stage1
    sequences = load_sequences(spec, args.data_dir)
    run = train_sasrec_run(args.dataset, sequences, stage1, titles, seed=args.seed, resume_dir=args.resume_dir)
    run.info["data"] = spec
    save_sasrec_run(run, args.out)
    _print_metrics(run.info["metrics"])
    print(f"saved run to {args.out} ({run.info['timings']})")
    return 0


def _train_transitions(args: argparse.Namespace) -> int:
    from arcast_core.data_dir import find_data_dir
    from recsys.data import load_beauty_titles
    from recsys.prorec_training import load_sequences
    from recsys.transitions import save_transitions_run, train_transitions_run

    if args.from_run or args.params:
        raise ValueError("--from-run and --params retrain a generator; --variant transitions has none")
    spec = data_spec(args)
    titles = load_beauty_titles(find_data_dir(args.data_dir)).texts if args.dataset == "beauty" else None
    run = train_transitions_run(args.dataset, load_sequences(spec, args.data_dir), titles)
    run.info["data"] = spec
    save_transitions_run(run, args.out)
    _print_metrics(run.info["metrics"])
    print(f"saved run to {args.out} (window {run.model.window}, decay {run.model.decay}; {run.info['timings']})")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from arcast_core.tuning import BEST_PARAMS_FILE, Heartbeat
    from recsys.prorec_training import load_run
    from recsys.tuning import tune_generator

    _set_threads(args.threads)
    run = load_run(args.run)
    config = replace(_pipeline_config(args, run.variant), max_history=run.model.config.max_history)
    result = tune_generator(
        args.run,
        config,
        args.trials,
        args.out,
        data_dir=args.data_dir,
        storage=args.storage,
        study_name=args.study,
        timeout=args.timeout,
        seed=args.seed,
        workers=args.workers,
        heartbeat=Heartbeat(args.heartbeat, args.grace),
        space=args.space,
    )
    print(json.dumps({k: result[k] for k in ("study", "n_trials", "best_value", "params")}, indent=2))
    print(f"best parameters written to {Path(args.out) / BEST_PARAMS_FILE}")
    return 0


def _parity_histories(spec: dict[str, Any] | None, max_history: int, args: argparse.Namespace) -> np.ndarray | None:
    """A fixed random sample of real test users for an export's parity check (None without a data spec)."""
    from recsys.prorec_training import load_sequences
    from recsys.split import leave_one_out

    if spec is None:
        return None
    split = leave_one_out(load_sequences(spec, args.data_dir), max_history=max_history)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(split.test), min(args.parity_users, len(split.test)), replace=False)
    return split.test.histories[np.sort(pick)]


def cmd_export(args: argparse.Namespace) -> int:
    from recsys.export import export_run
    from recsys.prorec_training import load_run
    from recsys.sasrec_export import export_sasrec_run
    from recsys.sasrec_run import is_sasrec_run, load_sasrec_run
    from recsys.transitions import export_transitions_run, is_transitions_run, load_transitions_run

    _set_threads(args.threads)
    where = (args.store, args.name, args.version)
    if (is_sasrec_run(args.run) or is_transitions_run(args.run)) and args.beam_width:
        raise ValueError("--beam-width: this run ranks every item; it has no beam")
    if is_sasrec_run(args.run):
        sasrec = load_sasrec_run(args.run)
        histories = _parity_histories(sasrec.info.get("data"), sasrec.model.config.max_len, args)
        artifact = export_sasrec_run(sasrec, *where, histories=histories, top_k=args.top_k)
        engine = "torch ranking"
    elif is_transitions_run(args.run):
        counts = load_transitions_run(args.run)
        histories = _parity_histories(counts.info.get("data"), counts.max_history, args)
        artifact = export_transitions_run(counts, *where, histories=histories, top_k=args.top_k)
        engine = "torch ranking"
    else:
        run = load_run(args.run)
        histories = _parity_histories(run.info.get("data"), run.model.config.max_history, args)
        artifact = export_run(
            run,
            args.store,
            args.name,
            version=args.version,
            histories=histories,
            top_k=args.top_k,
            beam_width=args.beam_width,
        )
        engine = "torch beam search"
    print(f"exported {artifact.name} version {artifact.version} to {artifact.path}")
    print(f"parity (onnxruntime vs {engine}): {json.dumps(artifact.manifest.parity)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recsys.export import evaluate_artifact
    from recsys.prorec_training import evaluate_run
    from recsys.sasrec_run import evaluate_sasrec_run, is_sasrec_run
    from recsys.transitions import evaluate_transitions_run, is_transitions_run

    _set_threads(args.threads)
    if bool(args.run) == bool(args.store and args.name):
        raise ValueError("give either --run RUN (torch) or --store STORE --name NAME (the artifact, as served)")
    if args.run:
        run = args.run
        if is_sasrec_run(run):
            report = evaluate_sasrec_run(run, args.split, args.data_dir, args.limit, args.exclude_seen)
        elif is_transitions_run(run):
            report = evaluate_transitions_run(run, args.split, args.data_dir, args.limit, args.exclude_seen)
        else:
            report = evaluate_run(run, args.split, args.data_dir, args.limit, args.exclude_seen, args.beam_width)
    else:
        where = (args.store, args.name, args.version)
        report = evaluate_artifact(*where, args.split, args.data_dir, args.limit, args.exclude_seen, args.beam_width)
    print(f"{report['model']} on {report['dataset']} {report['split']} ({report['users']} users, {report['engine']})")
    _print_metrics({report["split"]: report["metrics"]})
    if not report["data_matches_training"]:
        print("warning: the data differs from the data the model was trained on", file=sys.stderr)
    if args.json:
        from arcast_core.files import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recsys", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train stage 1, the semantic IDs and the generator; save a run folder",
        description="Train the variant end to end: the SASRec(s) it needs (stage 1, with alignment for prorec), "
        "its semantic IDs (RQ-VAE or residual k-means, plus a dedup code so every item's code is unique) and the "
        "generator (with distillation for prorec), selected on validation NDCG@10 of the constrained beam search. "
        "Reports validation and test metrics on every user and writes a run folder for export and tuning. "
        "--from-run reuses a run's stage 1 and semantic IDs and retrains only the generator.",
    )
    _add_data_args(train)
    train.add_argument(
        "--variant",
        choices=(*VARIANTS, SASREC, TRANSITIONS),
        default="prorec",
        help="a generator's semantic IDs (tiger, collab, concat, prorec) or no generator at all (sasrec, transitions)",
    )
    _add_model_args(train)
    train.add_argument("--from-run", help="reuse this run's embeddings and semantic IDs (and its data)")
    train.add_argument("--params", help="best_params.json from `tune`: use the tuned generator settings")
    train.add_argument("--out", required=True, help="run folder to write")
    train.add_argument(
        "--resume-dir",
        type=Path,
        help="keep stage 1's embeddings, the semantic IDs and each training's checkpoint here: the same command run "
        "again after a stop goes on from the last epoch or validation round instead of starting over",
    )
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser(
        "tune",
        help="tune the generator's hyperparameters with Optuna",
        description="Search the generator's size and training settings (and the distillation weight for prorec) "
        "with Optuna's TPE sampler, pruning trials by median validation NDCG@10 after each epoch; stage 1 and the "
        "semantic IDs of --run are reused. Resumable: run again with the same --storage and --study to add trials "
        "(a PostgreSQL URL lets commands on several machines share one study). Writes best_params.json to --out. "
        "--workers N runs N processes on one study (it needs a PostgreSQL --storage); a worker killed mid-trial has "
        "its trial marked failed once its heartbeat is older than --grace seconds, and run again.",
    )
    tune.add_argument("--run", required=True, help="run folder whose embeddings and semantic IDs are reused")
    tune.add_argument("--data-dir", help="benchmark data folder")
    _add_model_args(tune)
    tune.add_argument("--trials", type=int, default=20, help="trials to run now (default 20)")
    tune.add_argument(
        "--space",
        choices=("size", "small"),
        default="size",
        help="size: the generator's size up to TIGER's depth, item or token encoder, warm-up, each trial under the "
        "same --minutes budget (default); small: d_model 64/128, 1-3 layers (the earlier studies)",
    )
    tune.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    tune.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/optuna.db; PostgreSQL to share)")
    tune.add_argument("--study", help="study name (default prorec-DATASET-VARIANT)")
    add_worker_args(tune)
    tune.add_argument("--out", required=True, help="folder for the study database and best_params.json")
    tune.set_defaults(func=cmd_tune)

    export = sub.add_parser(
        "export",
        help="export a run to an ONNX artifact in a model store",
        description="Export the generator as an encoder graph and a decoder-step graph with a KV cache, plus the "
        "code table, item ids, prefix trie and titles; check that the onnxruntime beam search returns the torch "
        "beam search's top-k for a sample of test users; publish atomically as STORE/NAME/VERSION.",
    )
    export.add_argument("--run", required=True, help="run folder written by `train`")
    export.add_argument("--store", required=True, help="model store folder")
    export.add_argument("--name", required=True, help="model name in the store")
    export.add_argument("--version", help="version to publish (default: the next integer)")
    export.add_argument("--top-k", type=int, default=10, help="default number of recommendations (default 10)")
    export.add_argument("--beam-width", type=int, help="default beam width (default: the run's)")
    export.add_argument("--parity-users", type=int, default=64, help="test users in the parity check (default 64)")
    export.add_argument("--data-dir", help="benchmark data folder")
    export.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    export.set_defaults(func=cmd_export)

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate an artifact (onnxruntime, as served) or a run (torch)",
        description="Recall@5/10/20 and NDCG@5/10/20 of the constrained beam search on every user of the split "
        "(or the first --limit), full ranking, the history not masked unless --exclude-seen.",
    )
    evaluate.add_argument("--store", help="model store folder")
    evaluate.add_argument("--name", help="model name")
    evaluate.add_argument("--version", help="version (default latest)")
    evaluate.add_argument("--run", help="evaluate this run folder with torch instead")
    evaluate.add_argument("--split", choices=("val", "test"), default="test")
    evaluate.add_argument("--limit", type=int, help="only the first N users")
    evaluate.add_argument("--beam-width", type=int, default=20, help="beam width (default 20, which gives @20)")
    evaluate.add_argument("--exclude-seen", action="store_true", help="never recommend history items")
    evaluate.add_argument("--data-dir", help="benchmark data folder")
    evaluate.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    evaluate.add_argument("--json", help="also write the report to this JSON file")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from recsys.data import DataFormatError
    from serving.artifact import ArtifactError

    try:
        return args.func(args)
    except (DataFormatError, ArtifactError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
