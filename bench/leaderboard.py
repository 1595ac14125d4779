"""One leaderboard: every forecasting model kind on each published protocol, beside the papers' figures.

Rows go to ``bench/results/leaderboard.json`` (a top-level ``rows`` list), one per (protocol, dataset, features,
horizon, model), each with ``mse``/``mae`` on the standardised scale over every test window, as the exported
artifact is served (onnxruntime, the served rollout): ``forecasting.evaluate.evaluate_artifact``. A row is added
the moment it is finished (atomically, under a file lock, so two runs may share the file) and a finished row is
never rerun (but with ``--rerun``): run the same command again to resume. ``--readme`` rewrites the README's table
(and its chart) from the file.

Protocols (see ../shared/ANCHORS.md):

- ``informer``: ETTh1, ETTh2, ETTm1 multivariate at their five horizons and ETTh1 univariate (OT), the official
  scripts' lookback/label lengths (``bench/informer.py``: SCRIPT_SETTINGS), 12/4/4-month splits;
- ``autotimes``: ETTh1 multivariate, lookback 672, horizons 96/192/336/720; one model per kind trained for the
  next 96 values and rolled out to every horizon (AutoTimes' "one-for-all");
- ``arnet``: ETTh1 univariate (OT), lookback 168, horizons 24/48/168 (the AR-Net setting of the README).

Models: the baselines (``naive``, ``seasonal_naive`` with one day as the season, ``linear`` with its options
chosen on validation), ``arnet`` (tuned with Optuna on rolling-origin folds), ``informer`` and ``informer-revin``
(width, depth and rate chosen by Optuna within a CPU budget; see ``informer_rows``), and the papers' rows.

Run from the repository root:  .venv/bin/python bench/leaderboard.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from arcast_core.files import atomic_write_text, exclusive_lock
from arcast_core.training import TrainConfig
from arcast_core.tuning import resumed_sampler_seed
from forecasting.data import DataConfig, prepare_data
from forecasting.evaluate import evaluate_artifact
from forecasting.export import export_run
from forecasting.runs import Run, train_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from charts import leaderboard_chart
from informer import HORIZONS, PAPER_TRAIN, PUBLISHED, SCRIPT_SETTINGS, script_calendar

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "leaderboard.json"
README = REPO_ROOT / "README.md"
CHART = REPO_ROOT / "bench" / "results" / "leaderboard.svg"
README_START, README_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
ROWS_PER_DAY = {"ETTh1": 24, "ETTh2": 24, "ETTm1": 96, "ETTm2": 96}
INFORMER_PLAN = (("ETTh1", "M"), ("ETTh2", "M"), ("ETTm1", "M"), ("ETTh1", "S"))
AUTOTIMES_HORIZONS, AUTOTIMES_LOOKBACK, AUTOTIMES_STEP = (96, 192, 336, 720), 672, 96
ARNET_HORIZONS, ARNET_LOOKBACK = (24, 48, 168), 168
BASELINES = ("naive", "seasonal_naive", "linear")
MODELS = (*BASELINES, "arnet", "informer", "informer-revin")

# Published figures (../shared/ANCHORS.md): the AutoTimes paper's per-horizon ETTh1 (LLaMA-7B) and its DLinear
# average over the four horizons (per-horizon DLinear figures are not in ANCHORS.md, so only the average is a row).
AUTOTIMES_PAPER = {96: (0.360, 0.400), 192: (0.388, 0.419), 336: (0.401, 0.429), 720: (0.406, 0.440)}
DLINEAR_PAPER_AVERAGE = (0.426, 0.444)
PAPER_SOURCES = {
    "informer-paper": "Zhou et al., AAAI 2021, Tables 1-2 (../shared/ANCHORS.md)",
    "autotimes-paper": "Liu et al., NeurIPS 2024, ETTh1 per horizon, LLaMA-7B (../shared/ANCHORS.md)",
    "dlinear-paper": "AutoTimes paper's DLinear row, average of 96/192/336/720 (../shared/ANCHORS.md)",
}


@dataclass(frozen=True)
class Task:
    """One (protocol, dataset, features, horizon) cell: the data every model of the row is trained and tested on."""

    protocol: str
    dataset: str
    features: str
    horizon: int
    lookback: int
    label_len: int = 0
    train_horizon: int | None = None  # one-for-all: the step a model is trained for, rolled out to ``horizon``

    def data(self, data_dir: str | None, model: str, horizon: int | None = None) -> DataConfig:
        informer = model.startswith("informer")
        return DataConfig(
            dataset=self.dataset,
            features=self.features,  # type: ignore[arg-type]
            lookback=self.lookback,
            horizon=horizon or self.train_horizon or self.horizon,
            label_len=self.label_len if informer else 0,
            data_dir=data_dir,
            **(script_calendar(self.dataset) if informer else {}),  # type: ignore[arg-type]
        )


def protocol_tasks(protocol: str) -> list[Task]:
    if protocol == "informer":
        out = []
        for dataset, features in INFORMER_PLAN:
            for horizon in HORIZONS[dataset]:
                s = SCRIPT_SETTINGS[(dataset, features)][horizon]
                out.append(Task(protocol, dataset, features, horizon, s.seq_len, s.label_len))
        return out
    if protocol == "autotimes":
        return [
            Task(protocol, "ETTh1", "M", h, AUTOTIMES_LOOKBACK, train_horizon=AUTOTIMES_STEP)
            for h in AUTOTIMES_HORIZONS
        ]
    if protocol == "arnet":
        return [Task(protocol, "ETTh1", "S", h, ARNET_LOOKBACK) for h in ARNET_HORIZONS]
    raise ValueError(f"unknown protocol {protocol!r}")


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["protocol"], row["dataset"], row["features"], row["horizon"], row["model"])


# ------------------------------------------------------------------------------------------- results file


class Leaderboard:
    """The rows file. Every change re-reads the file under an exclusive lock, so concurrent runs never lose rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with exclusive_lock(self.lock_path):
            yield json.loads(self.path.read_text()) if self.path.is_file() else {"rows": []}

    def rows(self) -> list[dict[str, Any]]:
        with self._locked() as doc:
            return list(doc["rows"])

    def has(self, key: tuple[Any, ...]) -> bool:
        return any(row_key(r) == key for r in self.rows())

    def add(self, row: dict[str, Any]) -> None:
        with self._locked() as doc:
            rows = [r for r in doc["rows"] if row_key(r) != row_key(row)] + [row]
            doc["rows"] = sorted(rows, key=sort_key)
            doc["about"] = __doc__.split("\n\n")[0] if __doc__ else ""
            doc["updated_at"] = now()
            atomic_write_text(self.path, json.dumps(doc, indent=2))


def sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    protocols = ("informer", "autotimes", "arnet")
    model_order = (
        *MODELS,
        "informer-gpu",
        "autotimes",
        "autotimes-gpu",
        "informer-paper",
        "autotimes-paper",
        "dlinear-paper",
    )
    return (
        protocols.index(row["protocol"]) if row["protocol"] in protocols else 9,
        row["dataset"],
        row["features"],
        row["horizon"] if isinstance(row["horizon"], int) else 10**6,
        model_order.index(row["model"]) if row["model"] in model_order else 99,
    )


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- one row


@dataclass
class Trained:
    """A trained run and what the row reports about how it was made."""

    run: Run
    train_seconds: float
    budget: str
    reduced: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def evaluate_row(task: Task, model: str, trained: Trained, command: str, data_dir: str | None) -> dict[str, Any]:
    """Export the run, evaluate the artifact as served on every test window of ``task``, and build the row."""
    with tempfile.TemporaryDirectory(prefix="leaderboard-") as store:
        artifact = export_run(trained.run, store, "m", max_horizon=max(task.horizon, trained.run.model.step))
        report = evaluate_artifact(artifact.path, horizon=task.horizon, data_dir=data_dir, progress=False)
    scaled = report["metrics"]["scaled"]
    return {
        "protocol": task.protocol,
        "dataset": task.dataset,
        "features": task.features,
        "horizon": task.horizon,
        "model": model,
        "mse": scaled["mse"],
        "mae": scaled["mae"],
        "windows": report["windows"],
        "train_seconds": round(trained.train_seconds, 2),
        "budget": trained.budget,
        "reduced": bool(trained.reduced),
        "reduced_reasons": trained.reduced,
        "command": command,
        "lookback": trained.run.model.context_length,
        "step": trained.run.model.step,
        "val_mse": trained.run.fit["best_val_loss"],
        "details": trained.details,
        "finished_at": now(),
    }


def timed_train(
    kind: str, data: DataConfig, params: dict[str, Any], train: TrainConfig, **kw: Any
) -> tuple[Run, float]:
    started = time.perf_counter()
    run = train_run(kind, data, params, train, evaluate_test=False, **kw)
    return run, time.perf_counter() - started


# ------------------------------------------------------------------------------------------- baselines

CLOSED_FORM = TrainConfig(epochs=1, progress=False)


def baseline(task: Task, kind: str, data_dir: str | None) -> Trained:
    """naive / seasonal_naive (one day as the season) / linear (options chosen on validation, ridge in closed form)."""
    data = task.data(data_dir, kind)
    if kind == "naive":
        run, seconds = timed_train(kind, data, {}, CLOSED_FORM)
        return Trained(run, seconds, "none (no parameters)")
    if kind == "seasonal_naive":
        run, seconds = timed_train(kind, data, {"period": ROWS_PER_DAY[task.dataset]}, CLOSED_FORM)
        return Trained(run, seconds, "none (no parameters)", details={"period": ROWS_PER_DAY[task.dataset]})
    if kind == "linear":
        return linear_on_validation(task, data)
    raise ValueError(kind)


def linear_on_validation(task: Task, data: DataConfig) -> Trained:
    """Each input normalisation x decomposition with shared weights, then (M) per-channel weights on the best of
    them; each ridge-fitted with its penalty chosen on validation. The lowest validation MSE is the row."""
    prepared = prepare_data(data)
    started = time.perf_counter()
    tried: list[dict[str, Any]] = []

    def fit(params: dict[str, Any]) -> Run:
        run, _ = timed_train("linear", data, params, CLOSED_FORM, prepared=prepared)
        tried.append({**params, "alpha": run.model.config.alpha, "val_mse": run.fit["best_val_loss"]})
        return run

    runs = [fit({"norm": n, "decomposition": d}) for n in ("none", "last", "mean") for d in (False, True)]
    best = min(runs, key=lambda r: r.fit["best_val_loss"])
    if task.features == "M":
        per_channel = fit({**best.model_params, "per_channel": True})
        best = min((best, per_channel), key=lambda r: r.fit["best_val_loss"])
    return Trained(
        best,
        time.perf_counter() - started,
        f"closed form: {len(tried)} option sets x {len(best.model.config.alphas)} ridge penalties on validation",
        details={"chosen": best.model_params, "alpha": best.model.config.alpha, "tried": tried},
    )


# ------------------------------------------------------------------------------------------- AR-Net


def arnet(task: Task, data_dir: str | None, folds: int, trials: int, epochs: int, work_dir: Path) -> Trained:
    """AR-Net tuned by Optuna on rolling-origin folds (``tune --folds``), retrained on the training split."""
    from arcast_core.tuning import BEST_PARAMS_FILE
    from forecasting.tuning import tune

    data = task.data(data_dir, "arnet")
    base = TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, patience=5, progress=False)
    out = work_dir / f"arnet-{task.protocol}-{task.dataset}-{task.features}-h{task.horizon}-folds{folds}"
    started = time.perf_counter()
    # The protocol's lookback is pinned, so AR-Net sees the same windows as the baselines of its row.
    tune("arnet", data, base, trials, out, folds=folds, seed=0, pins={"lookback": task.lookback})
    best = json.loads((out / BEST_PARAMS_FILE).read_text())["settings"]
    run, _ = timed_train(
        "arnet",
        DataConfig(**{**best["data"], "data_dir": data_dir}),
        best["model"],
        TrainConfig(**{**best["train"], "progress": False}),
    )
    seconds = time.perf_counter() - started
    return Trained(
        run,
        seconds,
        f"Optuna {trials} trials x up to {base.epochs} epochs on {folds} rolling-origin folds, then one retrain",
        details={"settings": best, "folds": folds, "trials": trials},
    )


# ------------------------------------------------------------------------------------------- Informer

# What Optuna may choose for the CPU plan; everything else is the paper's (InformerConfig defaults, the scripts'
# lengths, factor and decoder layers, Adam halving every epoch, batch 32, patience 3).
INFORMER_WIDTHS = (32, 64)
INFORMER_RATES = (1e-4, 3e-3)


def informer_params(task: Task, width: int, e_layers: int, revin: bool) -> dict[str, Any]:
    s = SCRIPT_SETTINGS[(task.dataset, task.features)][task.horizon]
    return {
        "d_model": width,
        "n_heads": 8 if width >= 64 else 4,
        "d_ff": 4 * width,
        "e_layers": e_layers,
        "d_layers": s.d_layers,
        "factor": s.factor,
        "revin": revin,
    }


def informer_name(revin: bool) -> str:
    return "informer-revin" if revin else "informer"


def cheapest_task(dataset: str, features: str) -> Task:
    """The configuration of a dataset with the shortest sequences: where width search costs least."""
    tasks = [t for t in protocol_tasks("informer") if (t.dataset, t.features) == (dataset, features)]
    return min(tasks, key=lambda t: (t.lookback + t.label_len + t.horizon, t.horizon))


SEARCH_SPACE = {
    "d_model": optuna.distributions.CategoricalDistribution(list(INFORMER_WIDTHS)),
    "e_layers": optuna.distributions.IntDistribution(1, 2),
    "lr": optuna.distributions.FloatDistribution(*INFORMER_RATES, log=True),
}


def informer_choice(
    task: Task, revin: bool, trials: int, data_dir: str | None, work_dir: Path, known: Sequence[dict[str, Any]] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Width, encoder depth and rate chosen by Optuna (TPE) on validation at the dataset's cheapest configuration.

    Each trial trains one epoch over every training window; the study lives in ``work_dir`` (SQLite) and resumes.
    ``known``: trials already run (``{d_model, e_layers, lr, val_mse}``, as the finished rows of the leaderboard
    record them), added to the study first, so a fresh checkout does not search again.
    """
    probe = cheapest_task(task.dataset, task.features)
    model = informer_name(revin)
    name = f"{model}-{probe.dataset}-{probe.features}-h{probe.horizon}"
    work_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name,
        storage=f"sqlite:///{work_dir / f'{model}-width.db'}",  # one file per model: SQLite dislikes two creators
        load_if_exists=True,
        direction="minimize",
    )
    study.sampler = optuna.samplers.TPESampler(seed=resumed_sampler_seed(0, len(study.trials)))
    done = {
        tuple(t.params[k] for k in SEARCH_SPACE) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
    }
    for trial in known:
        params = {k: trial[k] for k in SEARCH_SPACE}
        if tuple(params.values()) not in done:
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=SEARCH_SPACE, value=trial["val_mse"])
            )
            done.add(tuple(params.values()))
    prepared = prepare_data(probe.data(data_dir, model))

    def objective(trial: optuna.Trial) -> float:
        width = trial.suggest_categorical("d_model", list(INFORMER_WIDTHS))
        e_layers = trial.suggest_int("e_layers", 1, 2)
        lr = trial.suggest_float("lr", *INFORMER_RATES, log=True)
        params = informer_params(probe, width, e_layers, revin)
        train = replace(PAPER_TRAIN, epochs=1, lr=lr)
        run, _ = timed_train("informer", prepared.config, params, train, prepared=prepared)
        return float(run.fit["best_val_loss"])

    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(finished) < trials:
        study.optimize(objective, n_trials=trials - len(finished))
    best = study.best_trial
    summary = {
        "probe": f"{probe.dataset} {probe.features} h{probe.horizon} (seq {probe.lookback}, label {probe.label_len})",
        "trials": [
            {**t.params, "val_mse": t.value} for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
        ],
        "seconds": sum(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in study.trials
            if t.datetime_complete and t.datetime_start
        ),
    }
    return best.params, summary


def informer(
    task: Task,
    revin: bool,
    trials: int,
    max_seconds: float,
    data_dir: str | None,
    work_dir: Path,
    known: Sequence[dict[str, Any]] = (),
) -> Trained:
    """Informer on every training window of ``task`` with the chosen width, the paper's schedule, a time budget."""
    choice, search = informer_choice(task, revin, trials, data_dir, work_dir, known)
    params = informer_params(task, choice["d_model"], choice["e_layers"], revin)
    # The budget counts this process's CPU time: on a shared machine a wall-clock one bought 1 to 3 epochs by
    # chance. Validation and test at the paper's batch: 256 windows of 1,056 decoder rows took gigabytes each.
    train = replace(
        PAPER_TRAIN,
        lr=choice["lr"],
        max_seconds=max_seconds,
        budget_clock="cpu",
        eval_batch_size=PAPER_TRAIN.batch_size,
        progress=True,  # a row trains for up to hours: each epoch's bar on stderr (the width search stays quiet)
        # a row killed mid-way (an epoch at ETTm1 672 is most of an hour) goes on from its last epoch
        checkpoint=str(
            work_dir / "checkpoints" / f"{informer_name(revin)}-{task.dataset}-{task.features}-h{task.horizon}.pt"
        ),
    )
    run, seconds = timed_train("informer", task.data(data_dir, "informer"), params, train)
    reasons = [
        f"d_model {params['d_model']} (d_ff {params['d_ff']}), {params['e_layers']} encoder layer(s) and lr "
        f"{choice['lr']:.1e} chosen by Optuna on {search['probe']} instead of the paper's 512/2048, 2 layers, 1e-4",
    ]
    if run.fit["epochs_run"] < PAPER_TRAIN.epochs and len(run.fit["history"]) >= 1:
        stopped_early = run.fit["epochs_run"] - 1 - run.fit["best_epoch"] >= PAPER_TRAIN.patience
        if not stopped_early:
            reasons.append(f"{run.fit['epochs_run']} of {PAPER_TRAIN.epochs} epochs within {max_seconds:.0f} CPU-s")
    if revin:
        reasons.append("instance normalisation (RevIN without its affine) added: not in the paper")
    return Trained(
        run,
        seconds,
        f"{max_seconds:.0f} CPU-s per row (checked after each epoch) + width search ({len(search['trials'])} "
        f"trials x 1 epoch, {search['seconds']:.0f} s, shared by the dataset's rows); 1 torch thread",
        reduced=reasons,
        details={"params": params, "lr": choice["lr"], "search": search, "fit": run.fit},
    )


# ------------------------------------------------------------------------------------------- papers' rows


def paper_rows() -> list[dict[str, Any]]:
    rows = []

    def add(protocol: str, dataset: str, features: str, horizon: int | str, model: str, mse: float, mae: float):
        rows.append(
            {
                "protocol": protocol,
                "dataset": dataset,
                "features": features,
                "horizon": horizon,
                "model": model,
                "mse": mse,
                "mae": mae,
                "windows": None,
                "train_seconds": None,
                "budget": None,
                "reduced": False,
                "command": None,
                "source": PAPER_SOURCES[model],
            }
        )

    for (dataset, features), by_horizon in PUBLISHED.items():
        for horizon, (mse, mae) in by_horizon.items():
            add("informer", dataset, features, horizon, "informer-paper", mse, mae)
            if (dataset, features) == ("ETTh1", "S") and horizon in ARNET_HORIZONS:
                add("arnet", dataset, features, horizon, "informer-paper", mse, mae)
    for horizon, (mse, mae) in AUTOTIMES_PAPER.items():
        add("autotimes", "ETTh1", "M", horizon, "autotimes-paper", mse, mae)
    add("autotimes", "ETTh1", "M", "avg", "dlinear-paper", *DLINEAR_PAPER_AVERAGE)
    return rows


# ------------------------------------------------------------------------------------------- collected rows

# bench/autotimes.py runs on the autotimes protocol; the leaderboard's row is the one most accurate on validation.
AUTOTIMES_RUNS = tuple(
    REPO_ROOT / "bench" / "results" / f
    for f in (
        "autotimes-recipe.json",
        "autotimes-mlp.json",
        "autotimes-k8.json",
        "autotimes-full.json",
        "autotimes-mlp1.json",
        "autotimes-roll3.json",
        "autotimes-ep3.json",
        # the selected recipe (autotimes-mlp.json, seed 0) with seeds 1 and 2, each added before it was scored
        "autotimes-seed1.json",
        "autotimes-seed2.json",
        # the every-window recipe (autotimes-full.json) trained 5 epochs from scratch, added before it was scored
        "autotimes-ep5.json",
        # the selected recipe with the paper's timestamp embeddings (variant "timestamps"), added before it was scored
        "autotimes-ts.json",
        # the every-window recipe (autotimes-full.json) trained again under the current code (its maps' dropout
        # draws from another generator since 7f58588, after that run), added before it was scored
        "autotimes-full2.json",
        # the official ETTh1 script's recipe as it is (timestamps, linear maps, 10 epochs of every window, 256 series a
        # step = 37 windows of 7 channels, 5e-4 cosine), added before it was scored
        "autotimes-paper.json",
        # the selected recipe and the every-window recipe with the official loader's batches (--mix-channels: a
        # step's series drawn from every window and channel), each added before it was scored
        "autotimes-mix.json",
        # (autotimes-full-mix.json scored every 2nd test window; chosen on validation, its finished checkpoint was
        # scored again on every test window: the same command but --test-stride and --out, validation bit for bit)
        "autotimes-full-mix-test1.json",
    )
)


def variant_of(scored: str) -> str:
    """The variant of an ``accuracy`` key such as ``"timestamps, sliding"``."""
    return scored.split(", ")[0]


def autotimes_choice(paths: Sequence[Path] = AUTOTIMES_RUNS) -> tuple[Path, str] | None:
    """The run and rollout whose test scores are the leaderboard's AutoTimes rows: of the runs that chose their
    served rollout on validation (``--val-stride``, JSON ``rollout_choice``) and scored it on test, the lowest
    validation average MSE of that rollout (every run's validation windows alike: the same ``val_stride``).
    None while no run has both."""
    runs = []
    for path in paths:
        doc = json.loads(path.read_text()) if path.is_file() else {}
        for variant, choice in doc.get("rollout_choice", {}).items():  # each variant the run trained and chose for
            scored = f"{variant}, {choice['chosen']}"
            if scored in doc.get("accuracy", {}) and scored in doc.get("validation", {}):
                runs.append((choice["val_stride"], doc["validation"][scored]["average"]["mse"], path, scored))
    if len({r[0] for r in runs}) > 1:
        raise ValueError(f"AutoTimes runs chose on different validation windows (val_stride): {runs}")
    return min(runs)[2:] if runs else None


def command_option(command: str, option: str) -> str | None:
    """The value a recorded command line gave ``option`` (``--name value``), None where it did not give it."""
    words = shlex.split(command)
    return words[words.index(option) + 1] if option in words else None


def started_from(checkpoint: Path, paths: Sequence[Path]) -> dict[str, Any]:
    """The run of ``paths`` whose ``--checkpoint-dir`` wrote ``checkpoint`` (a fine-tune's ``--init-from``): its
    results file and training seconds (of the variant the checkpoint is named after: ``plain-k1....pt``);
    ValueError where none of them did."""
    variant = checkpoint.name.split("-")[0]
    for path in paths:
        doc = json.loads(path.read_text()) if path.is_file() else {}
        written = command_option(doc.get("command", ""), "--checkpoint-dir")
        if written is not None and Path(written) == checkpoint.parent:
            return {"path": path, "train_seconds": doc["training"][variant]["train_seconds"]}
    raise ValueError(f"no AutoTimes run of {[str(p) for p in paths]} wrote {checkpoint} (--init-from)")


def repo_path(path: Path) -> Path:
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def nth(n: int) -> str:
    """ "" for 1, "2nd " for 2, ...: for "every {nth(n)}window"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return "" if n == 1 else f"{n}{suffix} "


def autotimes_rows(paths: Sequence[Path] = AUTOTIMES_RUNS) -> list[dict[str, Any]]:
    """AutoTimes as ``bench/autotimes.py`` measured it (``autotimes_choice``): collected, not retrained here,
    because one run costs hours of this CPU. Marked reduced with the run's own bounds."""
    choice = autotimes_choice(paths)
    if choice is None:
        return []
    path, scored = choice
    doc = json.loads(path.read_text())
    accuracy, training = doc["accuracy"][scored], doc["training"][variant_of(scored)]
    bounds, seconds = doc["bounds"], training["train_seconds"]
    reasons = [
        f"collected from {repo_path(path)} ({scored}: of the runs, the lowest validation MSE): {bounds['epochs']} "
        f"epochs over every {nth(bounds['train_stride'])}training window, every {nth(bounds['test_stride'])}test "
        "window, SmolLM2-135M instead of LLaMA-7B (the paper: 10 epochs, every window)"
    ]
    if variant_of(scored) == "plain":
        reasons.append("without the paper's timestamp embeddings (variant plain)")
    if training.get("init_from"):  # a fine-tune: its starting run's training counts too
        base = started_from(Path(training["init_from"]), paths)
        seconds += base["train_seconds"]
        reasons.append(
            f"fine-tuned ({training['train_segments']} segments of the {training['train_rollout']} rollout) from the "
            f"run of {repo_path(base['path'])} ({base['train_seconds']:.0f} s of training, counted)"
        )
    threads = doc.get("machine", {}).get("torch_threads")
    on = f"{threads} torch thread{'s' if threads != 1 else ''}" if threads else "an unrecorded number of threads"
    budget = f"{bounds['epochs']} epochs on {on} ({seconds / 3600:.1f} h)"
    return autotimes_cells("autotimes", accuracy, seconds, budget, reasons, doc["command"])


def autotimes_cells(
    model: str, accuracy: dict[str, Any], seconds: float, budget: str, reasons: list[str], command: str
) -> list[dict[str, Any]]:
    """One reduced row per horizon of a bench/autotimes.py rollout's ``accuracy`` (ETTh1 M, the AutoTimes protocol)."""
    return [
        {
            "protocol": "autotimes",
            "dataset": "ETTh1",
            "features": "M",
            "horizon": int(horizon),
            "model": model,
            "mse": cell["mse"],
            "mae": cell["mae"],
            "windows": cell["windows"],
            "train_seconds": round(seconds, 2),
            "budget": budget,
            "reduced": True,
            "reduced_reasons": reasons,
            "command": command,
        }
        for horizon, cell in accuracy["per_horizon"].items()
    ]


# GPU runs of the papers' own recipes (bench/gpu.sh on one H200), collected like the AutoTimes CPU runs: Informer
# with the paper's configuration (bench/informer.py) and AutoTimes with the official LLaMA script's recipe.
GPU_INFORMER_RUN = REPO_ROOT / "bench" / "results" / "gpu" / "informer.json"
GPU_AUTOTIMES_RUN = REPO_ROOT / "bench" / "results" / "gpu" / "autotimes.json"


def gpu_rows(informer: Path = GPU_INFORMER_RUN, autotimes: Path = GPU_AUTOTIMES_RUN) -> list[dict[str, Any]]:
    """``informer-gpu``: every configuration bench/informer.py finished there (scored in torch on every test window,
    not through the exported artifact). ``autotimes-gpu``: the rollout the model serves by default (sliding)."""
    rows = []
    if informer.is_file():
        doc = json.loads(informer.read_text())
        for entry in doc["accuracy"]:
            rows.append(
                {
                    "protocol": "informer",
                    "dataset": entry["dataset"],
                    "features": entry["features"],
                    "horizon": entry["horizon"],
                    "model": "informer-gpu",
                    "mse": entry["test"]["scaled"]["mse"],
                    "mae": entry["test"]["scaled"]["mae"],
                    "windows": entry["windows"]["test"],
                    "train_seconds": round(entry["fit"]["seconds"], 2),
                    "budget": f"the paper's: {entry['train']['epochs']} epochs, batch {entry['train']['batch_size']}, "
                    f"patience {entry['train']['patience']} (one H200; {entry['fit']['epochs_run']} epochs run)",
                    "reduced": bool(entry["reduced"]["reasons"]),
                    "reduced_reasons": entry["reduced"]["reasons"],
                    "command": doc["command"],
                    "source": f"{repo_path(informer)} (scored in torch by bench/informer.py)",
                }
            )
    if autotimes.is_file():
        doc = json.loads(autotimes.read_text())
        accuracy, training = doc["accuracy"]["plain, sliding"], doc["training"]["plain"]  # no timestamp embeddings
        windows = int(command_option(doc["command"], "--batch-size") or 32)  # bench/autotimes.py's default
        budget = (  # the script's batch is 256 single-channel series; bench/autotimes.py's are windows of 7 channels
            f"the official LLaMA script's: {doc['bounds']['epochs']} epochs over every window, lr {training['lr']:g} "
            f"cosine (one H200), batches of {windows} windows ({windows * 7} series; the script's: 256 series)"
        )
        reasons = [f"SmolLM2-135M instead of LLaMA-7B; collected from {repo_path(autotimes)}"]
        rows += autotimes_cells("autotimes-gpu", accuracy, training["train_seconds"], budget, reasons, doc["command"])
    return rows


# ------------------------------------------------------------------------------------------- README table


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}" if abs(value) < 0.1 else f"{value:.3f}"  # univariate OT errors are small


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table per protocol and dataset: models down, horizons across, MSE/MAE; the best MSE of ours in bold."""
    out: list[str] = []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["protocol"], row["dataset"], row["features"]), []).append(row)
    for (protocol, dataset, features), group in sorted(groups.items(), key=lambda kv: sort_key(kv[1][0])):
        horizons = sorted({r["horizon"] for r in group if isinstance(r["horizon"], int)})
        with_avg = protocol == "autotimes"
        models = sorted({r["model"] for r in group}, key=lambda m: sort_key({**group[0], "model": m, "horizon": 0}))
        cells = {(r["model"], r["horizon"]): r for r in group}
        best = {
            h: min((r["mse"] for r in group if r["horizon"] == h and not r["model"].endswith("-paper")), default=None)
            for h in horizons
        }
        head = [str(h) for h in horizons] + (["avg"] if with_avg else [])
        out += [f"**{protocol} protocol: {dataset} {features}** (MSE / MAE, standardised, every test window)", ""]
        out += ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for model in models:
            line, values = [], []
            for h in horizons:
                r = cells.get((model, h))
                if r is None:
                    line.append("")
                    continue
                values.append((r["mse"], r["mae"]))
                mse = fmt(r["mse"])
                mse = f"**{mse}**" if best[h] is not None and r["mse"] == best[h] else mse
                line.append(f"{mse} / {fmt(r['mae'])}" + (" *" if r.get("reduced") else ""))
            if with_avg:
                avg = cells.get((model, "avg"))
                if avg is not None:
                    line.append(f"{fmt(avg['mse'])} / {fmt(avg['mae'])}")
                elif values and len(values) == len(horizons):
                    line.append(
                        f"{fmt(float(np.mean([v[0] for v in values])))} / {fmt(float(np.mean([v[1] for v in values])))}"
                    )
                else:
                    line.append("")
            out.append(f"| {model} | " + " | ".join(line) + " |")
        out.append("")
    out.append(
        "`*`: reduced (differs from the protocol: see the row's `reduced_reasons` in bench/results/leaderboard.json)."
    )
    return "\n".join(out)


def write_readme(rows: list[dict[str, Any]], readme: Path = README, chart: Path = CHART) -> None:
    """The README's tables, and the chart above them (``chart``, drawn from the same rows)."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} block to fill")
    leaderboard_chart(rows, chart)
    image = f"![Test MSE by horizon for every model kind and protocol]({chart.relative_to(readme.parent).as_posix()})"
    block = f"{README_START}\n{image}\n\n{markdown(rows)}\n{README_END}"
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    atomic_write_text(readme, pattern.sub(lambda _: block, text))


# ------------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train (or collect) every forecasting model kind on each published protocol and write one "
        "leaderboard (bench/results/leaderboard.json) plus the README table. Resumes: finished rows are skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--protocols", nargs="+", choices=("informer", "autotimes", "arnet"), default=["arnet", "autotimes", "informer"]
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(BASELINES), help="model kinds to run")
    parser.add_argument("--datasets", nargs="+", default=None, help="only these datasets")
    parser.add_argument("--features", nargs="+", choices=("S", "M"), default=None, help="only these features")
    parser.add_argument("--horizons", nargs="+", type=int, default=None, help="only these horizons")
    parser.add_argument("--informer-trials", type=int, default=6, help="Optuna trials of the width search per dataset")
    parser.add_argument(
        "--informer-seconds",
        type=float,
        default=600.0,
        help="training budget per Informer row in CPU seconds of this process, checked after each epoch",
    )
    parser.add_argument("--arnet-trials", type=int, default=50, help="Optuna trials per AR-Net row")
    parser.add_argument(
        "--arnet-epochs", type=int, default=40, help="most epochs per AR-Net fit (cosine schedule, patience 5)"
    )
    parser.add_argument("--arnet-folds", type=int, default=3, help="rolling-origin folds AR-Net is selected on")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO_ROOT / "bench" / "work" / "leaderboard",
        help="Optuna studies (resumable; not committed)",
    )
    parser.add_argument("--data-dir", default=None, help="benchmark data folder (default: as the product finds it)")
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="train the selected rows again and replace them (after a fix that changes them); give a fresh "
        "--work-dir too, or the Optuna studies there resume with their old trials",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="only rewrite the README tables and bench/results/leaderboard.svg from --out",
    )
    return parser.parse_args(argv)


def selected(task: Task, args: argparse.Namespace) -> bool:
    return (
        (args.datasets is None or task.dataset in args.datasets)
        and (args.features is None or task.features in args.features)
        and (args.horizons is None or task.horizon in args.horizons)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    board = Leaderboard(args.out)
    if args.readme:
        write_readme(board.rows())
        print(f"README table rewritten from {args.out}")
        return 0
    stored = board.rows()
    for row in [*paper_rows(), *autotimes_rows(), *gpu_rows()]:  # collected, not trained here: as their sources say
        if row not in stored:
            board.add(row)
    command = shlex.join(["bench/leaderboard.py", *(sys.argv[1:] if argv is None else argv)])
    for protocol in args.protocols:
        for task in protocol_tasks(protocol):
            if not selected(task, args):
                continue
            for model in args.models:
                if model == "arnet" and protocol != "arnet":
                    continue  # AR-Net is a short-horizon univariate model: its own protocol
                if model.startswith("informer") and protocol != "informer":
                    continue
                key = (task.protocol, task.dataset, task.features, task.horizon, model)
                if board.has(key) and not args.rerun:
                    continue
                print(f"{protocol}: {task.dataset} {task.features} h{task.horizon} {model}", flush=True)
                trained = train_model(task, model, args)
                row = evaluate_row(task, model, trained, command, args.data_dir)
                board.add(row)
                print(
                    f"  test MSE {row['mse']:.4f} MAE {row['mae']:.4f} on {row['windows']} windows, "
                    f"{row['train_seconds']:.0f} s",
                    flush=True,
                )
    print(markdown(board.rows()))
    return 0


_ONE_FOR_ALL: dict[tuple[Any, ...], Trained] = {}


def train_model(task: Task, model: str, args: argparse.Namespace) -> Trained:
    if task.train_horizon is not None:  # one model for every horizon of the protocol: train it once
        key = (task.protocol, task.dataset, task.features, task.lookback, task.train_horizon, model)
        if key not in _ONE_FOR_ALL:
            _ONE_FOR_ALL[key] = train_once(task, model, args)
        return _ONE_FOR_ALL[key]
    return train_once(task, model, args)


def train_once(task: Task, model: str, args: argparse.Namespace) -> Trained:
    if model in BASELINES:
        return baseline(task, model, args.data_dir)
    if model == "arnet":
        return arnet(task, args.data_dir, args.arnet_folds, args.arnet_trials, args.arnet_epochs, args.work_dir)
    # the width search's trials that finished rows of this model and dataset record
    rows = Leaderboard(args.out).rows()
    known = [
        t
        for r in rows
        if (r["protocol"], r["dataset"], r["features"], r["model"])
        == (task.protocol, task.dataset, task.features, model)
        for t in r.get("details", {}).get("search", {}).get("trials", [])
    ]
    return informer(
        task,
        model == "informer-revin",
        args.informer_trials,
        args.informer_seconds,
        args.data_dir,
        args.work_dir,
        known,
    )


if __name__ == "__main__":
    sys.exit(main())
