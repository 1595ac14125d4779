"""Command line: python -m forecasting train | tune | export | evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from arcast_core.data_dir import DatasetNotFound
from arcast_core.files import atomic_write_text
from arcast_core.training import TrainConfig
from arcast_core.tuning_args import add_worker_args
from forecasting.data import DataConfig
from forecasting.datasets import KNOWN_DATASETS
from forecasting.loading import DUPLICATE_POLICIES, GAP_POLICIES, MISSING_POLICIES, DataError
from forecasting.models import MODELS
from forecasting.splits import SPLIT_HELP
from forecasting.time_features import normalize_freq
from serving.artifact import ArtifactError, resolve

EXIT_BAD_INPUT = 2
DESCRIPTION = f"""\
Train, tune, export and evaluate forecasting models on benchmark or your own CSV data.

Typical flow:
  python -m forecasting train --model arnet --dataset ETTh1 --lookback 96 --horizon 24 --out runs/etth1
  python -m forecasting export --run runs/etth1 --store models --name etth1-arnet
  python -m forecasting evaluate --store models --name etth1-arnet --horizon 48

Data: a known dataset name ({", ".join(KNOWN_DATASETS)})
or a path to any CSV with a date column and numeric columns. Known datasets are looked up in --data-dir, else
$ARCAST_DATA_DIR, else ../shared/data, and downloaded (checksum-verified) if absent.
"""


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="ETTh1", help="known dataset name or path to a CSV (default ETTh1)")
    group.add_argument(
        "--data-dir", help="folder holding the benchmark data (default: $ARCAST_DATA_DIR or ../shared/data)"
    )
    group.add_argument(
        "--features", choices=["S", "M"], default="S", help="S: forecast the target only; M: every channel"
    )
    group.add_argument("--target", default="OT", help="target column for --features S (default OT)")
    group.add_argument("--lookback", type=int, default=96, help="context length in rows (default 96)")
    group.add_argument("--horizon", type=int, default=24, help="values predicted per model call (default 24)")
    group.add_argument("--label-len", type=int, default=0, help="known values given to a decoder (Informer)")
    group.add_argument(
        "--missing", choices=MISSING_POLICIES, default="error", help="missing-value policy (default: error)"
    )
    group.add_argument("--date-column", default="date", help="name of the timestamp column (default date)")
    group.add_argument(
        "--duplicates",
        choices=DUPLICATE_POLICIES,
        default="error",
        help="rows sharing a timestamp: keep the first, the last, their mean, or stop (default: error)",
    )
    group.add_argument(
        "--gaps",
        choices=GAP_POLICIES,
        default="error",
        help="missing steps in the time grid: insert and fill them, keep the rows as they are, or stop "
        "(default: error)",
    )
    group.add_argument(
        "--na-values",
        type=_comma_list,
        default=[],
        metavar="V1,V2",
        help="cell values that mean missing, e.g. --na-values=-9999,-999 (then handled by --missing)",
    )
    group.add_argument(
        "--freq",
        type=normalize_freq,
        help="sampling step, e.g. 10m, 1h, 1d, 1mo (default: the known dataset's, else inferred from the timestamps)",
    )
    group.add_argument("--split", help=f"train/validation/test split: {SPLIT_HELP} (default: the dataset's protocol)")


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--model", choices=sorted(MODELS), default="arnet", help="model kind (default arnet)")
    group.add_argument("--epochs", type=int, default=20)
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--lr-schedule", choices=["constant", "cosine", "halving", "onecycle"], default="cosine")
    group.add_argument("--patience", type=int, default=5, help="epochs without validation improvement before stopping")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    group.add_argument(
        "--autocast",
        choices=["none", "bf16"],
        default="none",
        help="bf16: training forward passes under bfloat16 autocast (faster on GPUs and CPUs with AVX512-BF16; "
        "weights, validation and the export stay fp32)",
    )
    group.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model parameter, value as JSON (e.g. --param hidden_sizes=[64] --param sparsity=0.3)",
    )


def _data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        dataset=args.dataset,
        features=args.features,
        target=args.target,
        lookback=args.lookback,
        horizon=args.horizon,
        label_len=args.label_len,
        missing=args.missing,
        date_column=args.date_column,
        split=args.split,
        freq=args.freq,
        duplicates=args.duplicates,
        gaps=args.gaps,
        na_values=args.na_values,
        data_dir=args.data_dir,
    )


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        autocast=args.autocast,
    )


def _model_params(items: list[str], option: str = "--param") -> dict[str, Any]:
    """KEY=VALUE items (``--param``, ``--fix``) as a dict, each value read as JSON or else as a bare string."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value  # a bare word such as huber
    return params


def cmd_train(args: argparse.Namespace) -> int:
    from arcast_core.distributed import finish_distributed, is_main_process
    from forecasting.data import prepare_data
    from forecasting.runs import save_run, train_run

    data, train, params = _data_config(args), _train_config(args), _model_params(args.param)
    if args.params:
        best = json.loads(Path(args.params).read_text())["settings"]
        data = DataConfig(**{**best["data"], "data_dir": args.data_dir})
        train = TrainConfig(**{**best["train"], "epochs": args.epochs, "progress": True})
        params = {**best["model"], **params}
    try:
        prepared = prepare_data(data)
        if is_main_process():
            print(prepared.split_summary())
        run = train_run(args.model, data, params, train, prepared=prepared)
    finally:
        finish_distributed()
    if not is_main_process():
        return 0  # under torchrun every rank ends with the same model: rank 0 alone reports and saves it
    save_run(run, args.out)
    _print_metrics(run.metrics)
    best = "the warm start" if run.fit["best_epoch"] < 0 else f"best epoch {run.fit['best_epoch']}"
    print(f"saved run to {args.out} ({best}, {run.fit['seconds']:.1f} s)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from arcast_core.distributed import distributed_context
    from arcast_core.tuning import BEST_PARAMS_FILE, Heartbeat
    from forecasting.data import prepare_data
    from forecasting.tuning import tune

    if distributed_context() is not None:
        raise ValueError("tune starts its own worker processes (--workers N): run it without torchrun")
    print(prepare_data(_data_config(args)).split_summary())  # the lookback may vary per trial: the split does not
    result = tune(
        args.model,
        _data_config(args),
        _train_config(args),
        args.trials,
        args.out,
        storage=args.storage,
        study_name=args.study,
        timeout=args.timeout,
        seed=args.seed,
        workers=args.workers,
        heartbeat=Heartbeat(args.heartbeat, args.grace),
        folds=args.folds,
        pins=_model_params(args.fix, "--fix"),
    )
    print(json.dumps({k: result[k] for k in ("study", "n_trials", "folds", "best_value", "params")}, indent=2))
    print(f"best parameters written to {Path(args.out) / BEST_PARAMS_FILE}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from forecasting.export import export_run
    from forecasting.runs import load_run

    artifact = export_run(
        load_run(args.run),
        args.store,
        args.name,
        version=args.version,
        max_horizon=args.max_horizon,
        rollout=args.rollout,
    )
    print(f"exported {artifact.name} version {artifact.version} to {artifact.path}")
    print(
        "parity (max |onnxruntime - torch|; rms_ratio_*: the gate, see kv_parity_failures): "
        + ", ".join(f"{k}={v:.1e}" for k, v in artifact.manifest.parity.items())
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from forecasting.evaluate import evaluate_artifact

    path = resolve(args.store, args.name, args.version)
    report = evaluate_artifact(
        path, horizon=args.horizon, split=args.split, data_dir=args.data_dir, dataset=args.dataset
    )
    print(
        f"{report['model']} v{report['version']} on {report['dataset']} {report['split']} "
        f"({report['windows']} windows, horizon {report['horizon']})"
    )
    print(report["split_summary"])
    _print_metrics({report["split"]: report["metrics"]})
    if not report["data_matches_training"]:
        print("warning: the data file differs from the one the model was trained on", file=sys.stderr)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report, indent=2))
    return 0


def _print_metrics(metrics: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"{'split':<6} {'MSE':>9} {'MAE':>9} {'MSE (orig)':>12} {'MAE (orig)':>12}")
    for split, m in metrics.items():
        s, o = m["scaled"], m["original"]
        print(f"{split:<6} {s['mse']:>9.4f} {s['mae']:>9.4f} {o['mse']:>12.4f} {o['mae']:>12.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m forecasting", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train a model and save a run folder",
        description="Train a model on the training split with early stopping on the validation "
        "split, report scaled and original-unit metrics on every validation and test "
        "window, and save a run folder (run.json + model.pt) for export.",
    )
    _add_data_args(train)
    _add_train_args(train)
    train.add_argument("--params", help="best_params.json from `tune`: use the tuned settings")
    train.add_argument("--out", required=True, help="run folder to write")
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser(
        "tune",
        help="tune a model's hyperparameters with Optuna",
        description="Search the model's hyperparameters (and lookback) with Optuna's TPE sampler, "
        "pruning poor trials early on validation loss. Resumable: run again with the "
        "same --storage and --study to add trials. Writes best_params.json to --out. "
        "--workers N runs N processes on one study (it needs a PostgreSQL --storage); the same "
        "command on other machines joins the study. A worker killed mid-trial has its trial "
        "marked failed once its heartbeat is older than --grace seconds, and run again.",
    )
    _add_data_args(tune)
    _add_train_args(tune)
    tune.add_argument("--trials", type=int, default=20, help="trials to run now (default 20)")
    tune.add_argument(
        "--folds",
        type=int,
        default=1,
        help="rolling-origin folds per trial (default 1: the validation split alone). K > 1 trains and validates "
        "each trial on K folds of the training + validation period, the last one the validation split, the earlier "
        "ones validating on blocks (the validation split's length or shorter) just before it, and minimises the "
        "mean validation MSE: settings that fit one validation period alone lose",
    )
    tune.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="hold a search-space parameter at a value, as JSON (e.g. --fix lookback=168 --fix norm=last)",
    )
    tune.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    tune.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/optuna.db; PostgreSQL to share)")
    tune.add_argument("--study", help="study name (default derived from model, dataset and horizon)")
    add_worker_args(tune)
    tune.add_argument("--out", required=True, help="folder for the study database and best_params.json")
    tune.set_defaults(func=cmd_tune)

    export = sub.add_parser(
        "export",
        help="export a run to an ONNX artifact in a model store",
        description="Export a trained run to ONNX, check onnxruntime against torch, and publish "
        "it atomically as STORE/NAME/VERSION with a manifest and checksums.",
    )
    export.add_argument("--run", required=True, help="run folder written by `train`")
    export.add_argument("--store", required=True, help="model store folder")
    export.add_argument("--name", required=True, help="model name in the store")
    export.add_argument("--version", help="version to publish (default: the next integer)")
    export.add_argument("--max-horizon", type=int, help="largest horizon served (default 30 model steps)")
    export.add_argument(
        "--rollout",
        choices=("growing", "sliding"),
        help="AutoTimes: the rollout served by default: growing (KV cache) or sliding (the official loop: a fixed "
        "window re-normalised every segment); default: the run's own (model parameter rollout, else sliding, or "
        "its train_rollout for a model trained past the lookback, train_segments > 1)",
    )
    export.set_defaults(func=cmd_export)

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate an exported artifact on every test window",
        description="Run the exported artifact with onnxruntime exactly as served, over every "
        "window of the split, and print scaled (published protocol) and "
        "original-unit MSE/MAE.",
    )
    evaluate.add_argument("--store", required=True, help="model store folder")
    evaluate.add_argument("--name", required=True, help="model name")
    evaluate.add_argument("--version", help="version (default latest)")
    evaluate.add_argument("--horizon", type=int, help="forecast horizon (default: the model's step; longer rolls out)")
    evaluate.add_argument("--split", choices=["val", "test"], default="test")
    evaluate.add_argument("--dataset", help="evaluate on another file with the same columns (default: training data)")
    evaluate.add_argument("--data-dir", help="folder holding the benchmark data")
    evaluate.add_argument("--json", help="also write the full report to this JSON file")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (DataError, DatasetNotFound, ArtifactError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
