"""Collaborative baselines on the leave-one-out protocol, printed as JSON.

    python -m recsys.baselines --dataset beauty --models popularity transitions sasrec-ce sasrec-bce \\
        --hidden 64 --layers 2 --epochs 30 --max-minutes 10

SASRec is selected on validation NDCG@10 and reported on test; popularity has nothing to select; transitions
(``recsys.transitions``) chooses its window and history decay on validation NDCG@10. All metrics use
full ranking over every item without masking the history (the published tables' protocol, shared/ANCHORS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from arcast_core.data_dir import find_data_dir
from arcast_core.runtime import pick_device
from arcast_core.training import TrainConfig
from recsys.data import load_dataset
from recsys.models.sasrec import Loss, SASRecConfig
from recsys.popularity import evaluate_popularity
from recsys.split import LeaveOneOutSplit, leave_one_out
from recsys.training import evaluate_sasrec, save_sasrec, train_sasrec
from recsys.transitions import evaluate_transitions

MODELS = ("popularity", "transitions", "sasrec-ce", "sasrec-bce")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recsys.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("beauty", "sports", "toys"), default="beauty")
    parser.add_argument("--data-dir", default=None, help="benchmark data folder (default: see recsys.data)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--max-history", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--max-minutes", type=float, default=None, help="training wall-clock budget per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--save-dir", default=None, help="write each trained SASRec checkpoint here")
    parser.add_argument("--exclude-history", action="store_true", help="mask history items (not the published way)")
    parser.add_argument("--progress", action="store_true", help="show tqdm progress bars on stderr")
    return parser.parse_args(argv)


def run_sasrec(split: LeaveOneOutSplit, loss: str, args: argparse.Namespace) -> dict[str, Any]:
    model_config = SASRecConfig(
        num_items=split.num_items,
        max_len=args.max_history,
        hidden=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        dropout=args.dropout,
        loss=cast(Loss, loss),
    )
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_schedule="constant",
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        eval_batch_size=1024,
        progress=args.progress,
    )
    started = time.monotonic()
    result = train_sasrec(split, model_config, train_config)
    train_seconds = time.monotonic() - started
    if args.save_dir:
        save_sasrec(result.model, Path(args.save_dir) / f"{args.dataset}-sasrec-{loss}.pt")
    return {
        "test": evaluate_sasrec(result.model, split.test, exclude_history=args.exclude_history),
        "validation": result.best_validation,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_by": result.stopped_by,
        "train_seconds": round(train_seconds, 1),
        "train_loss_per_epoch": [round(log.train_loss, 4) for log in result.history],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dataset = load_dataset(args.dataset, find_data_dir(args.data_dir))
    split = leave_one_out(dataset.sequences, max_history=args.max_history)
    report: dict[str, Any] = {
        "dataset": args.dataset,
        "users": len(split.test),
        "items": split.num_items,
        "protocol": "leave-one-out, full ranking, history " + ("masked" if args.exclude_history else "not masked"),
        "device": str(pick_device(args.device)),
        "args": vars(args),
        "results": {},
    }
    for name in args.models:
        if name == "popularity":
            report["results"][name] = {
                "test": evaluate_popularity(split, split.test, exclude_history=args.exclude_history),
                "validation": evaluate_popularity(split, split.validation, exclude_history=args.exclude_history),
            }
        elif name == "transitions":
            test, chosen = evaluate_transitions(split, split.test, exclude_history=args.exclude_history)
            report["results"][name] = {"test": test, **chosen}
        else:
            report["results"][name] = run_sasrec(split, name.removeprefix("sasrec-"), args)
        print(f"done: {name}", file=sys.stderr, flush=True)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
