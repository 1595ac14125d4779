"""Informer (Zhou et al., AAAI 2021) on the paper's protocol, beside its published figures, in one run.

1. ProbSparse against full self-attention (``InformerConfig.attn``): seconds per training step (extrapolated to
   an epoch of the full training split) and inference milliseconds per window, on the same data and the same
   initial weights, interleaved repeat by repeat so that the load of a shared machine hits both alike.
2. Accuracy: ETTh1/ETTh2 multivariate at horizons 24/48/168/336/720, ETTm1 multivariate at 24/48/96/288/672 and
   ETTh1 univariate (target OT), each with the official scripts' lookback/label/layer settings and the paper's
   hyperparameters (InformerConfig defaults; Adam lr 1e-4 halved every epoch, 6 epochs, batch 32, patience 3);
   scaled MSE/MAE on every test window (no dropped last batch) next to the published figures. With
   ``--tune-trials N`` an Optuna-tuned model is trained and reported beside the default one.

Every finished configuration is written to the JSON at once (atomically), so a killed run keeps what it did;
``--resume`` carries on from such a file. Bounded CPU runs (``--max-train-windows``, ``--max-val-windows``,
``--epochs``) are flagged in the JSON (``protocol_complete: false`` and a ``reduced`` block on every entry).

Run from the repository root:  .venv/bin/python bench/informer.py --help   (or --quick for a smoke run)
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import optuna
import torch

import forecasting.tuning
from arcast_core.files import atomic_write_text
from arcast_core.runtime import seed_everything
from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, PreparedData, WindowDataset, prepare_data
from forecasting.metrics import error_metrics
from forecasting.models import build_model
from forecasting.models.base import ForecastModel
from forecasting.models.informer import prob_sizes
from forecasting.runs import Run, train_run
from forecasting.tuning import tune

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "informer.json"
DEFAULT_QUICK_OUT = REPO_ROOT / "bench" / "results" / "informer-quick.json"

PAPER_EPOCHS = 6
PAPER_TRAIN = TrainConfig(
    epochs=PAPER_EPOCHS, batch_size=32, lr=1e-4, lr_schedule="halving", patience=3, weight_decay=0.0, progress=False
)
ATTENTIONS = ("prob", "full")
HORIZONS = {"ETTh1": (24, 48, 168, 336, 720), "ETTh2": (24, 48, 168, 336, 720), "ETTm1": (24, 48, 96, 288, 672)}
# The default plan: the paper's multivariate table for all three datasets, its univariate one for ETTh1.
DEFAULT_PLAN = (("ETTh1", "M"), ("ETTh2", "M"), ("ETTm1", "M"), ("ETTh1", "S"))
# Small enough that --quick runs every path in about a minute on 2 cores; never used by a real run.
QUICK_MODEL = {"d_model": 32, "n_heads": 4, "d_ff": 64}


@dataclass(frozen=True)
class ScriptSetting:
    """One line of the official scripts: encoder length, decoder start-token length, layers, ProbSparse factor."""

    seq_len: int
    label_len: int
    e_layers: int = 2
    d_layers: int = 1
    factor: int = 5


S = ScriptSetting
# zhouhaoyi/Informer2020 scripts/ETTh1.sh (commit a7997ac), scripts/ETTh2.sh and scripts/ETTm1.sh (commit a377d6a),
# read through the code-search index. Anything the scripts leave out is main_informer.py's default (factor 5,
# d_model 512, ...), which InformerConfig's defaults match.
SCRIPT_SETTINGS: dict[tuple[str, str], dict[int, ScriptSetting]] = {
    ("ETTh1", "M"): {24: S(48, 48, factor=3), 48: S(96, 48), 168: S(168, 168), 336: S(168, 168), 720: S(336, 336)},
    ("ETTh2", "M"): {
        24: S(48, 48),
        48: S(96, 96),
        168: S(336, 336, 3, 2),
        336: S(336, 168, 3, 2),
        720: S(720, 336, 3, 2),
    },
    ("ETTm1", "M"): {24: S(672, 96), 48: S(96, 48), 96: S(384, 384), 288: S(672, 288), 672: S(672, 384)},
    ("ETTh1", "S"): {24: S(720, 168), 48: S(720, 168), 168: S(720, 336), 336: S(720, 336), 720: S(720, 336)},
    ("ETTh2", "S"): {
        24: S(48, 48, factor=3),
        48: S(96, 96),
        168: S(336, 336),
        336: S(336, 168, 3, 2),
        720: S(336, 336, 3, 2),
    },
    ("ETTm1", "S"): {24: S(96, 48), 48: S(96, 48), 96: S(384, 384), 288: S(384, 384), 672: S(384, 384)},
}
SCRIPT_SOURCE = (
    "zhouhaoyi/Informer2020 scripts/ETTh1.sh @a7997acb, scripts/ETTh2.sh and scripts/ETTm1.sh @a377d6a6 "
    "(read through the code-search index, not run)"
)
# The official main_informer.py defaults --freq to 'h' and the ETTm1 script never sets it, so the published ETTm1
# figures were made with the hourly calendar features (hour, weekday, day, yearday; no minute-of-hour).
SCRIPT_FREQ = {"ETTm1": "1h"}


def script_calendar(dataset: str) -> dict[str, str]:
    """``DataConfig`` fields for the official scripts' calendar: ETTm1's 15-minute rows on the hourly calendar its
    features were made with, the rows taken as they are (gaps "keep": not checked against that hourly grid, which
    the loader would refuse them as off); nothing for the other datasets."""
    freq = SCRIPT_FREQ.get(dataset)
    return {"freq": freq, "gaps": "keep"} if freq else {}


# ../shared/ANCHORS.md (Informer, Table 1/2 of the paper): horizon -> (MSE, MAE) on the standardised scale.
PUBLISHED: dict[tuple[str, str], dict[int, tuple[float, float]]] = {
    ("ETTh1", "M"): {
        24: (0.577, 0.549),
        48: (0.685, 0.625),
        168: (0.931, 0.752),
        336: (1.128, 0.873),
        720: (1.215, 0.896),
    },
    ("ETTh2", "M"): {
        24: (0.720, 0.665),
        48: (1.457, 1.001),
        168: (3.489, 1.515),
        336: (2.723, 1.340),
        720: (3.467, 1.473),
    },
    ("ETTm1", "M"): {
        24: (0.323, 0.369),
        48: (0.494, 0.503),
        96: (0.678, 0.614),
        288: (1.056, 0.786),
        672: (1.192, 0.926),
    },
    ("ETTh1", "S"): {
        24: (0.098, 0.247),
        48: (0.158, 0.319),
        168: (0.183, 0.346),
        336: (0.222, 0.387),
        720: (0.269, 0.435),
    },
}


@dataclass(frozen=True)
class Reduction:
    """How a run departs from the full protocol; all None/paper values is the protocol itself."""

    max_train_windows: int | None
    max_val_windows: int | None
    epochs: int
    model_overrides: tuple[tuple[str, Any], ...] = ()

    def reasons(self) -> list[str]:
        out = []
        if self.max_train_windows is not None:
            out.append(f"training windows subsampled to at most {self.max_train_windows} (evenly spaced)")
        if self.max_val_windows is not None:
            out.append(f"validation (early stopping) windows subsampled to at most {self.max_val_windows}")
        if self.epochs != PAPER_EPOCHS:
            out.append(f"{self.epochs} epochs instead of the paper's {PAPER_EPOCHS}")
        if self.model_overrides:
            out.append(f"model overridden: {dict(self.model_overrides)} (smoke run, not the paper's model)")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_overrides": dict(self.model_overrides), "reasons": self.reasons()}


# --------------------------------------------------------------------------------------------------- helpers


class WindowSubset(WindowDataset):
    """``count`` evenly spaced windows of a split.

    Evenly spaced rather than the first ``count`` or a random draw: a bounded run still sees every season of
    the split, and the same windows on every run.
    """

    def __init__(self, full: WindowDataset, count: int) -> None:
        super().__init__(full.values, full.marks, full.lookback, full.horizon, full.label_len)
        self.index = np.unique(np.linspace(0, len(full) - 1, count).round().astype(np.int64))

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        return super().batch(self.index[index])


def subsample(split: WindowDataset, limit: int | None) -> WindowDataset:
    return split if limit is None or limit >= len(split) else WindowSubset(split, limit)


def reduce_prepared(prepared: PreparedData, reduction: Reduction) -> PreparedData:
    """Train/validation windows bounded as ``reduction`` says; the test split always keeps every window."""
    return replace(
        prepared,
        train=subsample(prepared.train, reduction.max_train_windows),
        val=subsample(prepared.val, reduction.max_val_windows),
    )


@contextmanager
def reduced_tuning_data(reduction: Reduction) -> Iterator[None]:
    """Make Optuna's trials (which prepare their own data) see the same bounded windows as the default run."""
    original = forecasting.tuning.prepare_data

    def prepare(config: DataConfig) -> PreparedData:
        return reduce_prepared(original(config), reduction)

    with mock.patch.object(forecasting.tuning, "prepare_data", prepare):
        yield


def data_config(dataset: str, features: str, horizon: int, data_dir: str | None) -> DataConfig:
    setting = SCRIPT_SETTINGS[(dataset, features)][horizon]
    return DataConfig(
        dataset=dataset,
        features=features,  # type: ignore[arg-type]
        target="OT",
        lookback=setting.seq_len,
        horizon=horizon,
        label_len=setting.label_len,
        data_dir=data_dir,
        **script_calendar(dataset),  # type: ignore[arg-type]
    )


def model_params(
    dataset: str, features: str, horizon: int, overrides: dict[str, Any], eval_sampling: str
) -> dict[str, Any]:
    """The script's layers and factor; everything else InformerConfig's (the paper's) defaults."""
    setting = SCRIPT_SETTINGS[(dataset, features)][horizon]
    params = {"e_layers": setting.e_layers, "d_layers": setting.d_layers, "factor": setting.factor}
    return {**params, "eval_sampling": eval_sampling, **overrides}


def last_value_metrics(split: WindowDataset) -> dict[str, float]:
    """The last observed value repeated over the horizon, on the same windows: a floor any model should beat."""
    batch = split.batch(np.arange(len(split)))
    x, y = batch["x"].numpy(), batch["y"].numpy()
    return error_metrics(np.repeat(x[:, -1:, :], y.shape[1], axis=1), y)


def sizes(factor: int, length: int) -> dict[str, int]:
    """ProbSparse's sampled keys and active queries in a self-attention over ``length`` positions."""
    sample_k, n_top = prob_sizes(factor, length, length)
    return {"length": length, "sample_k": sample_k, "n_top": n_top}


def median(values: list[float]) -> float:
    return statistics.median(values)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def machine_facts(threads: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda_available": torch.cuda.is_available(),
        "torch_num_threads": threads,
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "optuna": optuna.__version__,
        },
    }


# ------------------------------------------------------------------------------------------- results file


class ResultsFile:
    """The JSON document, rewritten atomically after every finished configuration."""

    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path, self.doc = path, doc

    @classmethod
    def open(cls, path: Path, header: dict[str, Any], resume: bool) -> ResultsFile:
        doc: dict[str, Any] = {"timing": [], "accuracy": [], "invocations": []}
        if resume and path.is_file():
            doc = json.loads(path.read_text())
        doc.update({k: v for k, v in header.items() if k != "invocation"})
        doc["invocations"].append(header["invocation"])
        results = cls(path, doc)
        results.write()
        return results

    def done(self, section: str, key: str, reduction: Reduction) -> bool:
        """Already in the file with the same reduction (a resumed run skips it)."""
        reduced = reduction.as_dict()
        return any(e["key"] == key and e["reduced"] == reduced for e in self.doc[section])

    def add(self, section: str, entry: dict[str, Any]) -> None:
        self.doc[section] = [e for e in self.doc[section] if e["key"] != entry["key"]] + [entry]
        self.refresh()

    def refresh(self) -> None:
        reasons = sorted({r for s in ("timing", "accuracy") for e in self.doc[s] for r in e["reduced"]["reasons"]})
        self.doc["protocol_complete"] = not reasons and not self.doc.get("quick")
        self.doc["reductions_present"] = reasons
        self.doc["markdown"] = markdown(self.doc)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.doc, indent=2))


# ------------------------------------------------------------------------------- 1. ProbSparse vs full


def _train_step(model: ForecastModel, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    model.train()
    started = time.perf_counter()
    loss = model.loss(batch, 0.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


@torch.no_grad()
def _infer(model: ForecastModel, batch: dict[str, torch.Tensor]) -> float:
    model.eval()
    started = time.perf_counter()
    model.predict(batch)
    return time.perf_counter() - started


def bench_timing(
    dataset: str,
    horizon: int,
    steps: int,
    repeats: int,
    reduction: Reduction,
    eval_sampling: str,
    data_dir: str | None,
    seed: int,
) -> dict[str, Any]:
    """Seconds per training step and per inference window, ProbSparse against full attention, interleaved.

    Both models are built from the same seed (attention has no weights, so they start identical) and see the
    same training batches and the same test windows; each repeat runs both, in alternating order.
    """
    data = data_config(dataset, "M", horizon, data_dir)
    prepared = prepare_data(data)
    batch_size = PAPER_TRAIN.batch_size
    rng = np.random.default_rng(seed)
    batches = [prepared.train.batch(rng.choice(len(prepared.train), batch_size, replace=False)) for _ in range(steps)]
    infer_batch = prepared.test.batch(np.arange(batch_size))
    single = prepared.test.batch(np.arange(1))
    params = model_params(dataset, "M", horizon, dict(reduction.model_overrides), eval_sampling)
    models, optimizers = {}, {}
    for attn in ATTENTIONS:
        seed_everything(seed)
        models[attn] = build_model("informer", {**params, "attn": attn}, prepared.facts())
        # Adam = the project's AdamW with weight_decay 0 (what fit() uses), the paper's optimiser.
        optimizers[attn] = torch.optim.Adam(models[attn].parameters(), lr=PAPER_TRAIN.lr)
        _train_step(models[attn], optimizers[attn], batches[0])  # warm-up: allocator, first-call costs; untimed
        _infer(models[attn], infer_batch)
    times: dict[str, dict[str, list[float]]] = {a: {"step": [], "batch": [], "single": []} for a in ATTENTIONS}
    for rep in range(repeats):
        for attn in ATTENTIONS if rep % 2 == 0 else ATTENTIONS[::-1]:
            times[attn]["step"] += [_train_step(models[attn], optimizers[attn], b) for b in batches]
            times[attn]["batch"].append(_infer(models[attn], infer_batch))
            times[attn]["single"].append(_infer(models[attn], single))
        print(
            f"  timing {dataset} h={horizon} repeat {rep + 1}/{repeats}: "
            + ", ".join(f"{a} {median(times[a]['step']):.2f} s/step" for a in ATTENTIONS),
            flush=True,
        )
    steps_per_epoch = math.ceil(len(prepared.train) / batch_size)
    cfg = models["prob"].config
    per_attn = {
        attn: {
            "train_step_seconds": t["step"],
            "train_step_median_s": median(t["step"]),
            "epoch_seconds_estimated": median(t["step"]) * steps_per_epoch,
            "infer_batch_seconds": t["batch"],
            "infer_ms_per_window_batch32": 1000 * median(t["batch"]) / batch_size,
            "infer_ms_batch1": 1000 * median(t["single"]),
        }
        for attn, t in times.items()
    }
    dec_len = cfg.label_len + cfg.pred_len
    return {
        "key": f"timing-{dataset}-M-h{horizon}",
        "dataset": dataset,
        "features": "M",
        "horizon": horizon,
        "seq_len": cfg.seq_len,
        "label_len": cfg.label_len,
        "model_config": {k: v for k, v in asdict(cfg).items() if k != "attn"},
        "batch_size": batch_size,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "order": "per repeat both attentions, alternating which goes first; one untimed warm-up step each",
        "train_windows_full_split": len(prepared.train),
        "steps_per_epoch_full_split": steps_per_epoch,
        "epoch_estimate": "median train-step seconds x steps per epoch of the full training split (no validation)",
        "probsparse_sizes": {
            "encoder_first_layer": sizes(cfg.factor, cfg.seq_len),
            "decoder_self": sizes(cfg.factor, dec_len),
        },
        "attention": per_attn,
        "full_over_prob": {
            "train_step": per_attn["full"]["train_step_median_s"] / per_attn["prob"]["train_step_median_s"],
            "infer_batch32": per_attn["full"]["infer_ms_per_window_batch32"]
            / per_attn["prob"]["infer_ms_per_window_batch32"],
            "infer_batch1": per_attn["full"]["infer_ms_batch1"] / per_attn["prob"]["infer_ms_batch1"],
        },
        "reduced": reduction.as_dict(),
        "finished_at": now(),
    }


# ------------------------------------------------------------------------------------------- 2. accuracy


def _epoch_clock() -> tuple[list[float], Callable[[int, float], None]]:
    """A train_run on_epoch callback recording when each epoch (training + validation pass) ended."""
    marks = [time.perf_counter()]

    def on_epoch(epoch: int, val_loss: float) -> None:
        marks.append(time.perf_counter())

    return marks, on_epoch


def _run_entry(
    run: Run, prepared: PreparedData, full: PreparedData, marks: list[float], started: float
) -> dict[str, Any]:
    """What one trained model gives the JSON: settings, windows used, per-epoch times, metrics."""
    test_windows = len(full.test)
    return {
        "data": run.data.as_dict(),
        "model_params": run.model_params,
        "model_config": asdict(run.model.config),
        "train": asdict(run.train),
        "windows": {
            "train_used": len(prepared.train),
            "train_full_split": len(full.train),
            "val_used": len(prepared.val),
            "val_full_split": len(full.val),
            "test": test_windows,
            # The official loader (drop_last=True, batch 32) would have skipped these test windows.
            "test_dropped_by_official_loader": test_windows % PAPER_TRAIN.batch_size,
        },
        "fit": run.fit,
        "epoch_seconds_incl_validation": [b - a for a, b in itertools.pairwise(marks)],
        "val": run.metrics["val"],
        "test": run.metrics["test"],
        "seconds": time.perf_counter() - started,
    }


def train_and_score(
    kind_params: dict[str, Any], data: DataConfig, train: TrainConfig, full: PreparedData, reduction: Reduction
) -> dict[str, Any]:
    started = time.perf_counter()
    prepared = reduce_prepared(full, reduction)
    marks, on_epoch = _epoch_clock()
    run = train_run("informer", data, kind_params, train, prepared=prepared, on_epoch=on_epoch)
    return _run_entry(run, prepared, full, marks, started)


def tuned_entry(
    data: DataConfig,
    base_params: dict[str, Any],
    train: TrainConfig,
    full: PreparedData,
    reduction: Reduction,
    trials: int,
    tune_epochs: int,
    work_dir: Path,
) -> dict[str, Any]:
    """Optuna (the registry's Informer search space, on the validation split), then the best retrained."""
    started = time.perf_counter()
    with reduced_tuning_data(reduction):
        best = tune(
            "informer",
            data,
            replace(train, epochs=tune_epochs),
            n_trials=trials,
            out_dir=work_dir / f"tune-{data.dataset}-{data.features}-h{data.horizon}",
            seed=train.seed,
        )
    settings = best["settings"]
    tuned_data = DataConfig(**{**settings["data"], "data_dir": data.data_dir})
    # Exactly what the best trial trained (the search space's model settings), with this run's eval sampling.
    params = {**settings["model"], "eval_sampling": base_params["eval_sampling"]}
    tuned_train = TrainConfig(**{**settings["train"], "epochs": train.epochs, "progress": False})
    tuned_full = prepare_data(tuned_data) if tuned_data != data else full
    entry = train_and_score(params, tuned_data, tuned_train, tuned_full, reduction)
    entry["tuning"] = {
        "trials": best["n_trials"],
        "epochs_per_trial": tune_epochs,
        "best_trial": best["best_trial"],
        "best_val_mse": best["best_value"],
        "params": best["params"],
        "seconds": time.perf_counter() - started,
    }
    entry["seconds"] = time.perf_counter() - started
    return entry


def bench_config(
    dataset: str,
    features: str,
    horizon: int,
    variant: str,
    reduction: Reduction,
    args: argparse.Namespace,
    work_dir: Path,
) -> dict[str, Any]:
    data = data_config(dataset, features, horizon, args.data_dir)
    params = model_params(dataset, features, horizon, dict(reduction.model_overrides), args.eval_sampling)
    train = replace(PAPER_TRAIN, epochs=reduction.epochs, seed=args.seed)
    full = prepare_data(data)
    if variant == "default":
        entry = train_and_score(params, data, train, full, reduction)
    else:
        tune_epochs = args.tune_epochs or reduction.epochs
        entry = tuned_entry(data, params, train, full, reduction, args.tune_trials, tune_epochs, work_dir)
    published = PUBLISHED.get((dataset, features), {}).get(horizon)
    return {
        "key": f"{dataset}-{features}-h{horizon}-{variant}",
        "dataset": dataset,
        "features": features,
        "horizon": horizon,
        "variant": variant,
        "script_setting": asdict(SCRIPT_SETTINGS[(dataset, features)][horizon]),
        **entry,
        "published": None if published is None else {"mse": published[0], "mae": published[1]},
        "last_value_test_scaled": last_value_metrics(full.test),
        "reduced": reduction.as_dict(),
        "finished_at": now(),
    }


# ------------------------------------------------------------------------------------------------- reporting


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def timing_table(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| data, horizon | seq/label | attention | train s/step | est. s/epoch (steps) "
        "| infer ms/window (batch 32) | infer ms (batch 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        for attn in ATTENTIONS:
            a = e["attention"][attn]
            lines.append(
                f"| {e['dataset']} M, {e['horizon']} | {e['seq_len']}/{e['label_len']} | {attn} "
                f"| {a['train_step_median_s']:.2f} "
                f"| {a['epoch_seconds_estimated']:.0f} ({e['steps_per_epoch_full_split']}) "
                f"| {a['infer_ms_per_window_batch32']:.1f} | {a['infer_ms_batch1']:.1f} |"
            )
        r = e["full_over_prob"]
        lines.append(
            f"| {e['dataset']} M, {e['horizon']} | | full / prob | {r['train_step']:.2f}x | "
            f"| {r['infer_batch32']:.2f}x | {r['infer_batch1']:.2f}x |"
        )
    return lines


def accuracy_table(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| data | horizon | variant | seq/label | train windows | epochs (best) | test windows | MSE | MAE "
        "| published MSE | published MAE | last value MSE/MAE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        s, p, w, lv = e["test"]["scaled"], e["published"] or {}, e["windows"], e["last_value_test_scaled"]
        train_w = f"{w['train_used']}/{w['train_full_split']}"
        lines.append(
            f"| {e['dataset']} {e['features']} | {e['horizon']} | {e['variant']} "
            f"| {e['data']['lookback']}/{e['data']['label_len']} | {train_w} "
            f"| {e['fit']['epochs_run']} ({e['fit']['best_epoch'] + 1}) | {w['test']} "
            f"| {s['mse']:.3f} | {s['mae']:.3f} | {_fmt(p.get('mse'))} | {_fmt(p.get('mae'))} "
            f"| {lv['mse']:.3f}/{lv['mae']:.3f} |"
        )
    return lines


def markdown(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    if doc.get("timing"):
        lines += ["### ProbSparse vs full attention (same data, same initial weights, interleaved)", ""]
        lines += [*timing_table(doc["timing"]), ""]
    if doc.get("accuracy"):
        lines += ["### Accuracy, scaled, every test window", ""]
        lines += [*accuracy_table(doc["accuracy"]), ""]
    if doc.get("reductions_present"):
        lines += ["Reduced run (not the full protocol): " + "; ".join(doc["reductions_present"]), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- CLI


SECTIONS = ("timing", "accuracy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Informer on the paper's ETT protocol beside its published figures, "
        "and ProbSparse vs full attention timing. Without flags: the whole protocol (days on a CPU).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run of every path with a tiny model (a minute)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results JSON (default {DEFAULT_OUT.relative_to(REPO_ROOT)}; "
        f"with --quick {DEFAULT_QUICK_OUT.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the entries already in --out and skip those configurations"
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--datasets", nargs="+", choices=sorted(HORIZONS), default=None, help="accuracy datasets")
    parser.add_argument(
        "--features",
        nargs="+",
        choices=("M", "S"),
        default=None,
        help="M multivariate, S univariate (OT); default: M for every dataset and S for ETTh1 (the paper's tables)",
    )
    parser.add_argument(
        "--horizons", type=int, nargs="+", default=None, help="accuracy horizons (default: each dataset's five)"
    )
    parser.add_argument("--epochs", type=int, default=PAPER_EPOCHS, help=f"training epochs (paper {PAPER_EPOCHS})")
    parser.add_argument(
        "--max-train-windows",
        type=int,
        default=None,
        help="train on at most this many evenly spaced training windows (a bounded CPU run; flagged as reduced)",
    )
    parser.add_argument(
        "--max-val-windows",
        type=int,
        default=None,
        help="early-stop on at most this many evenly spaced validation windows (flagged); test always uses all",
    )
    parser.add_argument("--tune-trials", type=int, default=0, help="Optuna trials per configuration (0: no tuning)")
    parser.add_argument("--tune-epochs", type=int, default=None, help="epochs per Optuna trial (default: --epochs)")
    parser.add_argument(
        "--timing-dataset", choices=sorted(HORIZONS), default="ETTh1", help="dataset of the timing section (M)"
    )
    parser.add_argument(
        "--timing-horizons", type=int, nargs="+", default=[48, 336], help="horizons of the timing section"
    )
    parser.add_argument("--timing-steps", type=int, default=3, help="timed training steps per repeat")
    parser.add_argument("--timing-repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument(
        "--eval-sampling",
        choices=("even", "random"),
        default="even",
        help="ProbSparse key sampling in eval: 'even' (deterministic, the project's) or 'random' (official code)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on the shared 2-core machine one thread trained 4-5x faster than two)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="benchmark data folder (default: as the product finds it)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep Optuna studies here (default: temporary)")
    args = parser.parse_args(argv)
    if args.quick:
        quick_defaults(args)
    return args


def quick_defaults(args: argparse.Namespace) -> None:
    """Every path, tiny: one horizon, one epoch, 64 windows, a small model (flagged as a smoke run)."""
    args.datasets = args.datasets or ["ETTh1"]
    args.features = args.features or ["M"]
    args.horizons = args.horizons or [24]
    args.epochs = 1 if args.epochs == PAPER_EPOCHS else args.epochs
    args.max_train_windows = args.max_train_windows or 64
    args.max_val_windows = args.max_val_windows or 64
    args.timing_horizons = args.timing_horizons if args.timing_horizons != [48, 336] else [48]
    args.timing_steps, args.timing_repeats = 1, 1


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(dataset, features, horizon) to run, in the paper's table order."""
    if args.features is None:
        pairs = [p for p in DEFAULT_PLAN if args.datasets is None or p[0] in args.datasets]
    else:
        pairs = [(d, f) for f in args.features for d in (args.datasets or sorted(HORIZONS))]
    out = [(d, f, h) for d, f in pairs for h in HORIZONS[d] if args.horizons is None or h in args.horizons]
    if args.horizons and not out:
        raise SystemExit(f"no selected dataset has horizons {args.horizons} (ETTh: 24/48/168/336/720, ETTm1: ...672)")
    return out


def header(args: argparse.Namespace, argv: list[str] | None, reduction: Reduction) -> dict[str, Any]:
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench/informer.py", *argv])
    return {
        "benchmark": "informer",
        "command": command,
        "cwd": os.getcwd(),
        "quick": args.quick,
        "machine": machine_facts(args.threads),
        "protocol": {
            "script_settings_source": SCRIPT_SOURCE,
            "calendar_freq_overrides": SCRIPT_FREQ,
            "train_config": asdict(PAPER_TRAIN),
            "optimizer": "torch AdamW with weight_decay 0 (= Adam), lr 1e-4, halved every epoch from epoch 2",
            "published_source": "../shared/ANCHORS.md (Informer section)",
            "eval_sampling": args.eval_sampling,
            "metrics": "MSE/MAE on the standardised scale over every test window, every step and channel",
        },
        "invocation": {"command": command, "started_at": now(), "args": {k: str(v) for k, v in vars(args).items()}},
        "reduction": reduction.as_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or (DEFAULT_QUICK_OUT if args.quick else DEFAULT_OUT)
    reduction = Reduction(
        max_train_windows=args.max_train_windows,
        max_val_windows=args.max_val_windows,
        epochs=args.epochs,
        model_overrides=tuple(sorted(QUICK_MODEL.items())) if args.quick else (),
    )
    # Timing trains no epochs and sees no window limits: only a smoke run's model override reduces it.
    timing_reduction = Reduction(None, None, PAPER_EPOCHS, reduction.model_overrides)
    configs = plan(args) if "accuracy" in args.only else []
    results = ResultsFile.open(out, header(args, argv, reduction), args.resume)
    began = time.perf_counter()
    if "timing" in args.only:
        for horizon in args.timing_horizons:
            if results.done("timing", f"timing-{args.timing_dataset}-M-h{horizon}", timing_reduction):
                continue
            print(f"timing: {args.timing_dataset} M h={horizon}, prob vs full", flush=True)
            results.add(
                "timing",
                bench_timing(
                    args.timing_dataset,
                    horizon,
                    args.timing_steps,
                    args.timing_repeats,
                    timing_reduction,
                    args.eval_sampling,
                    args.data_dir,
                    args.seed,
                ),
            )
    variants = ["default", "tuned"] if args.tune_trials > 0 else ["default"]
    with tempfile.TemporaryDirectory(prefix="informer-bench-") as tmp:
        work_dir = (args.work_dir or Path(tmp)) / dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        for dataset, features, horizon in configs:
            for variant in variants:
                if results.done("accuracy", f"{dataset}-{features}-h{horizon}-{variant}", reduction):
                    continue
                print(f"accuracy: {dataset} {features} h={horizon} ({variant})", flush=True)
                entry = bench_config(dataset, features, horizon, variant, reduction, args, work_dir)
                results.add("accuracy", entry)
                s = entry["test"]["scaled"]
                print(
                    f"  test MSE {s['mse']:.4f} MAE {s['mae']:.4f} on {entry['windows']['test']} windows "
                    f"(published {entry['published']}), {entry['seconds']:.0f} s",
                    flush=True,
                )
    results.doc["invocations"][-1].update(finished_at=now(), seconds=time.perf_counter() - began)
    results.doc["finished_at"] = now()
    results.doc["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results.refresh()
    print(f"\n{results.doc['markdown']}")
    print(f"wrote {out} ({time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
