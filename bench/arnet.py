"""AR-Net against its paper's claims and against Informer's published ETTh1 figures, side by side in one run.

1. sTPE on the paper's sparse AR process (lags 1, 3, 10 of p = 20, 1000 training samples, noise std 1):
   AR-Net with and without the sparsity regulariser against classic AR (statsmodels AutoReg, OLS), per seed.
2. Fit time against the AR order p: AR-Net (a fixed number of SGD epochs on a fixed number of samples) against
   least squares (numpy lstsq on the lagged design matrix, and statsmodels AutoReg), single-threaded, interleaved,
   median of repeats, with the growth exponent from a log-log fit on the larger p.
3. ETTh1 univariate (target OT), horizons 24/48/168: settings (lookback among them) tuned with Optuna on the
   validation split, retrained, exported to ONNX, and the artifact evaluated on every test window (scaled MSE/MAE),
   beside Informer's published figures.

Run from the repository root:  .venv/bin/python bench/arnet.py   (or --quick for a smoke run of every path)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

# Single-threaded BLAS for the fit-time comparison: threadpoolctl limits the loaded libraries after import;
# without it the limit must be in the environment before numpy (and its BLAS) is first imported.
try:
    import threadpoolctl
except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn, a dependency
    threadpoolctl = None
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        os.environ[_var] = "1"

import numpy as np
import optuna
import statsmodels
import torch
from statsmodels.tsa.ar_model import AutoReg

from arcast_core.files import atomic_write_text
from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, WindowDataset, prepare_data
from forecasting.evaluate import evaluate_artifact
from forecasting.export import export_run
from forecasting.metrics import error_metrics
from forecasting.models.arnet import ARNet, ARNetConfig
from forecasting.runs import train_run
from forecasting.training import fit
from forecasting.tuning import tune

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "arnet.json"
DEFAULT_QUICK_OUT = REPO_ROOT / "bench" / "results" / "arnet-quick.json"

SPARSE_COEFS = {1: 0.2, 3: 0.3, 10: -0.5}  # the paper's sparse test
SPARSE_P = 20
PAPER_STPE = {"ar_net": 3.2, "classic_ar": 18.3}
# Informer (Zhou et al., 2021), Table 1, univariate ETTh1 (target OT): horizon -> (MSE, MAE) on scaled data.
INFORMER_ETTH1_UNIVARIATE = {24: (0.098, 0.247), 48: (0.158, 0.319), 168: (0.183, 0.346)}


# --------------------------------------------------------------------------------------------------- helpers


def simulate_ar(coefs: dict[int, float], n: int, seed: int, burn_in: int = 500) -> np.ndarray:
    """n values of y_t = sum_k coefs[k] * y_{t-k} + e_t, e ~ N(0, 1), after a burn-in from zeros."""
    rng = np.random.default_rng(seed)
    p = max(coefs)
    lags = np.array(list(coefs), dtype=np.int64)
    weights = np.array(list(coefs.values()))
    y = np.zeros(n + burn_in + p)
    noise = rng.standard_normal(len(y))
    for t in range(p, len(y)):
        y[t] = weights @ y[t - lags] + noise[t]
    return y[burn_in + p :]


def stpe(w_hat: np.ndarray, w: np.ndarray) -> float:
    """Symmetric total percentage error of the coefficients (the paper's sTPE)."""
    return float(100 * np.abs(w_hat - w).sum() / (np.abs(w_hat) + np.abs(w)).sum())


def windows(series: np.ndarray, p: int) -> WindowDataset:
    """Every (p lags -> next value) window of a 1-D series: len(series) - p windows."""
    values = np.ascontiguousarray(series, dtype=np.float32)[:, None]
    return WindowDataset(values, np.zeros((len(values), 0), np.float32), p, 1, 0)


def fit_arnet(train_rows: np.ndarray, val_rows: np.ndarray, cfg: ARNetConfig, train_cfg: TrainConfig) -> ARNet:
    # The model's initial weights (the bias, hidden layers) are drawn when it is built, before ``fit`` seeds
    # the generators: seed here too, or the same seed gives a different fit from run to run.
    torch.manual_seed(train_cfg.seed)
    model = ARNet(cfg)
    fit(model, windows(train_rows, cfg.n_lags), windows(val_rows, cfg.n_lags), train_cfg)
    return model


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def growth_exponent(ps: list[int], seconds: list[float]) -> float | None:
    """Slope of log(time) on log(p): 1 is linear growth, 2 quadratic (None from fewer than two orders)."""
    if len(set(ps)) < 2:
        return None
    return float(np.polyfit(np.log(ps), np.log(seconds), 1)[0])


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def limit_threads() -> dict[str, Any]:
    """One thread for torch and for every BLAS/OpenMP pool; returns how, and what the pools report."""
    torch.set_num_threads(1)
    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(limits=1)
        method = "threadpoolctl.threadpool_limits(1) + torch.set_num_threads(1)"
        pools = [
            {k: info.get(k) for k in ("user_api", "internal_api", "num_threads", "version", "filepath")}
            for info in threadpoolctl.threadpool_info()
        ]
    else:
        method = "OMP/OPENBLAS/MKL/BLIS_NUM_THREADS=1 before importing numpy + torch.set_num_threads(1)"
        pools = []
    return {"method": method, "torch_num_threads": torch.get_num_threads(), "threadpools": pools}


def machine_facts(threads: dict[str, Any]) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda_available": torch.cuda.is_available(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "statsmodels": statsmodels.__version__,
            "optuna": optuna.__version__,
            "threadpoolctl": getattr(threadpoolctl, "__version__", None),
        },
        "threads": threads,
    }


# ------------------------------------------------------------------------------------------------ 1. sTPE


def bench_stpe(seeds: list[int], n_train: int, n_val: int, epochs: int) -> dict[str, Any]:
    """AR-Net (with/without regulariser) against OLS on the paper's sparse AR(10) fitted with p = 20.

    Every method sees the same n_train training windows (OLS through AutoReg on the same rows); AR-Net also
    uses n_val further windows of the same process to pick its checkpoint (the project's training loop).
    """
    true = np.zeros(SPARSE_P)
    for lag, coef in SPARSE_COEFS.items():
        true[lag - 1] = coef
    train_cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.001, lr_schedule="onecycle", patience=10**6)
    variants = {
        "ar_net": ARNetConfig(n_lags=SPARSE_P, n_forecasts=1, sparsity=0.01, loss="mse"),
        "ar_net_no_reg": ARNetConfig(n_lags=SPARSE_P, n_forecasts=1, sparsity=None, loss="mse"),
    }
    per_seed = []
    for seed in seeds:
        series = simulate_ar(SPARSE_COEFS, SPARSE_P + n_train + n_val, seed=seed)
        train_rows, val_rows = series[: SPARSE_P + n_train], series[n_train:]
        started = time.perf_counter()
        ols = AutoReg(train_rows, lags=SPARSE_P, trend="c").fit().params[1:]
        row: dict[str, Any] = {
            "seed": seed,
            "classic_ar": {"stpe": stpe(ols, true), "coefs": ols.round(4).tolist(), "seconds": 0.0},
        }
        row["classic_ar"]["seconds"] = time.perf_counter() - started
        for name, cfg in variants.items():
            started = time.perf_counter()
            model = fit_arnet(train_rows, val_rows, cfg, replace(train_cfg, seed=seed, progress=False, device="cpu"))
            coefs = model.ar_coefficients()[0].numpy().astype(np.float64)
            row[name] = {
                "stpe": stpe(coefs, true),
                "coefs": coefs.round(4).tolist(),
                "max_abs_diff_from_ols": float(np.max(np.abs(coefs - ols))),
                "seconds": time.perf_counter() - started,
            }
        per_seed.append(row)
        print(
            f"  sTPE seed {seed}: AR-Net {row['ar_net']['stpe']:.2f}, no reg {row['ar_net_no_reg']['stpe']:.2f}, "
            f"OLS {row['classic_ar']['stpe']:.2f}",
            flush=True,
        )
    methods = ("ar_net", "ar_net_no_reg", "classic_ar")
    return {
        "setup": {
            "true_coefs": {str(k): v for k, v in SPARSE_COEFS.items()},
            "p": SPARSE_P,
            "n_train_windows": n_train,
            "n_val_windows_ar_net": n_val,
            "noise_std": 1.0,
            "seeds": seeds,
            "ar_net_config": {name: asdict(cfg) for name, cfg in variants.items()},
            "train_config": asdict(train_cfg),
            "classic_ar": f"statsmodels AutoReg(lags={SPARSE_P}, trend='c'), OLS on the same training rows",
        },
        "paper": PAPER_STPE,
        "per_seed": per_seed,
        "summary": {m: mean_std([row[m]["stpe"] for row in per_seed]) for m in methods},
        "max_abs_coef_diff_from_ols": {
            m: mean_std([row[m]["max_abs_diff_from_ols"] for row in per_seed]) for m in variants
        },
    }


# ---------------------------------------------------------------------------------------------- 2. fit time


def lagged_design(series: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """[1, y_{t-1}, ..., y_{t-p}] rows and the targets y_t, for every t >= p."""
    lags = np.lib.stride_tricks.sliding_window_view(series[:-1], p)[:, ::-1]
    return np.column_stack([np.ones(len(lags)), lags]), series[p:]


def bench_fit_time(
    ps: list[int], n_samples: int, epochs: int, batch_size: int, repeats: int, fit_from_p: int
) -> dict[str, Any]:
    """Seconds to fit an AR(p) on n_samples windows, each method timed once per p per repeat, interleaved."""
    series = simulate_ar(SPARSE_COEFS, max(ps) + n_samples, seed=0)
    n_val = 1000
    val_series = simulate_ar(SPARSE_COEFS, max(ps) + n_val, seed=1)
    train_cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=0.001,
        lr_schedule="onecycle",
        patience=10**6,
        progress=False,
        device="cpu",
    )

    def arnet_fit(p: int) -> None:
        fit_arnet(
            series[-(p + n_samples) :],
            val_series[-(p + n_val) :],
            ARNetConfig(n_lags=p, n_forecasts=1, loss="mse"),
            train_cfg,
        )

    def lstsq_fit(p: int) -> None:
        x, y = lagged_design(series[-(p + n_samples) :], p)
        np.linalg.lstsq(x, y, rcond=None)

    def autoreg_fit(p: int) -> None:
        AutoReg(series[-(p + n_samples) :], lags=p, trend="c").fit()

    methods: dict[str, Callable[[int], None]] = {
        "ar_net_sgd": arnet_fit,
        "numpy_lstsq": lstsq_fit,
        "statsmodels_autoreg": autoreg_fit,
    }
    for name, method in methods.items():  # warm-up (imports, allocator, first-call costs), not timed
        method(min(ps))
        print(f"  warm-up {name} done", flush=True)
    times: dict[str, dict[int, list[float]]] = {name: {p: [] for p in ps} for name in methods}
    for rep in range(repeats):
        for p in ps:
            for name, method in methods.items():
                started = time.perf_counter()
                method(p)
                times[name][p].append(time.perf_counter() - started)
            print(
                f"  repeat {rep + 1}/{repeats} p={p}: "
                + ", ".join(f"{name} {times[name][p][-1]:.3f}s" for name in methods),
                flush=True,
            )
    medians = {name: {p: statistics.median(t) for p, t in by_p.items()} for name, by_p in times.items()}
    large = [p for p in ps if p >= fit_from_p]
    large = large if len(large) >= 2 else ps
    return {
        "setup": {
            "ps": ps,
            "n_samples": n_samples,
            "repeats": repeats,
            "statistic": "median",
            "order": "interleaved: for each repeat, for each p, every method once",
            "ar_net": {
                "epochs": epochs,
                "batch_size": batch_size,
                "sgd_steps": epochs * -(-n_samples // batch_size),
                "val_windows": n_val,
                "timed": "forecasting.training.fit (AdamW steps + a validation pass per epoch), linear AR-Net",
                "train_config": asdict(train_cfg),
            },
            "numpy_lstsq": "building the lagged design matrix [1, lags] + numpy.linalg.lstsq (LAPACK gelsd)",
            "statsmodels_autoreg": "AutoReg(lags=p, trend='c').fit() (OLS through pinv)",
            "growth_fit": f"least squares on log(time) ~ log(p) for p >= {min(large)}",
        },
        "seconds": {name: {str(p): t for p, t in by_p.items()} for name, by_p in times.items()},
        "median_seconds": {name: {str(p): t for p, t in by_p.items()} for name, by_p in medians.items()},
        "growth_exponent": {name: growth_exponent(large, [by_p[p] for p in large]) for name, by_p in medians.items()},
        "growth_exponent_all_p": {name: growth_exponent(ps, [by_p[p] for p in ps]) for name, by_p in medians.items()},
        "paper": {"ar_net_sgd": 1.0, "least_squares": 2.0},
    }


# --------------------------------------------------------------------------------------------------- 3. ETTh1


def naive_last_value(horizon: int, data_dir: str | None) -> dict[str, dict[str, float]]:
    """Repeat the last observed value over the horizon, scaled, for context.

    Validation and test windows have the same targets as the tuned model's (every split starts ``lookback``
    rows early), so the figures line up with its validation MSE and its test metrics.
    """
    config = DataConfig(dataset="ETTh1", features="S", target="OT", lookback=1, horizon=horizon, data_dir=data_dir)
    prepared = prepare_data(config)
    out = {}
    for name, split in (("val", prepared.val), ("test", prepared.test)):
        batch = split.batch(np.arange(len(split)))
        x, y = batch["x"].numpy(), batch["y"].numpy()
        out[name] = {**error_metrics(np.repeat(x[:, -1:, :], horizon, axis=1), y), "windows": len(split)}
    return out


def bench_etth1(
    horizons: list[int], trials: int, tune_epochs: int, retrain_epochs: int, work_dir: Path, data_dir: str | None
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for horizon in horizons:
        started = time.perf_counter()
        base_data = DataConfig(
            dataset="ETTh1", features="S", target="OT", lookback=96, horizon=horizon, data_dir=data_dir
        )
        base_train = TrainConfig(epochs=tune_epochs, progress=False)
        print(f"  ETTh1 h={horizon}: tuning {trials} trials x {tune_epochs} epochs", flush=True)
        torch.manual_seed(0)  # models are built (weights drawn) before fit() seeds: make the trials repeatable
        best = tune("arnet", base_data, base_train, n_trials=trials, out_dir=work_dir / f"tune-h{horizon}", seed=0)
        tuned_seconds = time.perf_counter() - started
        settings = best["settings"]
        data = DataConfig(**{**settings["data"], "data_dir": data_dir})
        train = TrainConfig(**{**settings["train"], "epochs": retrain_epochs, "progress": False})
        print(f"  ETTh1 h={horizon}: retraining with {best['params']} for up to {retrain_epochs} epochs", flush=True)
        torch.manual_seed(train.seed)
        run = train_run("arnet", data, settings["model"], train)
        artifact = export_run(run, work_dir / "models", f"etth1-arnet-h{horizon}", max_horizon=horizon)
        report = evaluate_artifact(artifact.path, horizon=horizon, data_dir=data_dir, progress=False)
        paper_mse, paper_mae = INFORMER_ETTH1_UNIVARIATE[horizon]
        results[str(horizon)] = {
            "tuning": {
                "trials": best["n_trials"],
                "epochs_per_trial": tune_epochs,
                "best_trial": best["best_trial"],
                "best_val_mse": best["best_value"],
                "params": best["params"],
                "seconds": tuned_seconds,
            },
            "retrain": {
                "data": data.as_dict(),
                "model_params": run.model_params,
                "train": asdict(train),
                "fit": {k: v for k, v in run.fit.items() if k != "history"},
                "torch_test_metrics_scaled": run.metrics["test"]["scaled"],
            },
            "artifact": {
                "name": report["model"],
                "version": report["version"],
                "parity": artifact.manifest.parity,
                "data_matches_training": report["data_matches_training"],
            },
            "test": {
                "windows": report["windows"],
                "scaled": report["metrics"]["scaled"],
                "original_units": report["metrics"]["original"],
            },
            "informer_published": {"mse": paper_mse, "mae": paper_mae},
            "naive_last_value": naive_last_value(horizon, data_dir),
            "seconds": time.perf_counter() - started,
        }
        s = report["metrics"]["scaled"]
        print(
            f"  ETTh1 h={horizon}: lookback {data.lookback}, test MSE {s['mse']:.4f} MAE {s['mae']:.4f} "
            f"({report['windows']} windows; Informer {paper_mse}/{paper_mae})",
            flush=True,
        )
    return results


# ------------------------------------------------------------------------------------------------- reporting


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if "stpe" in result:
        r = result["stpe"]
        seeds = r["setup"]["seeds"]
        names = {
            "ar_net": "AR-Net (sparsity 0.01)",
            "ar_net_no_reg": "AR-Net, no regulariser",
            "classic_ar": "classic AR (OLS, AutoReg)",
        }
        lines += [
            f"### sTPE, sparse AR (lags 1, 3, 10; p = {r['setup']['p']}; {r['setup']['n_train_windows']} samples)",
            "",
            "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | paper |",
            "|---|" + "---|" * len(seeds) + "---|---|",
        ]
        for key, label in names.items():
            per = " | ".join(f"{row[key]['stpe']:.2f}" for row in r["per_seed"])
            summ = r["summary"][key]
            paper = r["paper"].get(key, "–")
            lines.append(f"| {label} | {per} | {summ['mean']:.2f} ± {summ['std']:.2f} | {paper} |")
        diff = r["max_abs_coef_diff_from_ols"]
        lines += [
            "",
            "max |coefficient - OLS coefficient| (mean over seeds): "
            f"AR-Net {diff['ar_net']['mean']:.3f}, AR-Net without regulariser {diff['ar_net_no_reg']['mean']:.3f}",
            "",
        ]
    if "fit_time" in result:
        r = result["fit_time"]
        med = r["median_seconds"]
        setup = r["setup"]
        lines += [
            f"### Fit time (s, median of {setup['repeats']}) against AR order p, {setup['n_samples']} samples, "
            f"1 thread; AR-Net {setup['ar_net']['epochs']} epochs = {setup['ar_net']['sgd_steps']} steps",
            "",
            "| p | AR-Net (SGD) | numpy lstsq | statsmodels AutoReg |",
            "|---|---|---|---|",
        ]
        for p in setup["ps"]:
            lines.append(
                f"| {p} | {med['ar_net_sgd'][str(p)]:.3f} | {med['numpy_lstsq'][str(p)]:.3f} "
                f"| {med['statsmodels_autoreg'][str(p)]:.3f} |"
            )
        g, ga = r["growth_exponent"], r["growth_exponent_all_p"]
        methods = ("ar_net_sgd", "numpy_lstsq", "statsmodels_autoreg")
        lines.append(
            f"| exponent ({setup['growth_fit'].split('for ')[-1]}) | " + " | ".join(fmt(g[m]) for m in methods) + " |"
        )
        lines.append("| exponent (all p) | " + " | ".join(fmt(ga[m]) for m in methods) + " |")
        lines += ["| paper's claim | 1 (linear) | 2 (quadratic) | 2 (quadratic) |", ""]
    if "etth1" in result:
        lines += [
            "### ETTh1 univariate (OT), every test window, scaled; AR-Net artifact (ONNX) vs Informer (published)",
            "",
            "| horizon | windows | tuned lookback | hidden layer | AR-Net MSE | AR-Net MAE "
            "| Informer MSE | Informer MAE | last value MSE | last value MAE |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for horizon, r in result["etth1"].items():
            s, inf, naive = r["test"]["scaled"], r["informer_published"], r["naive_last_value"]["test"]
            hidden = r["tuning"]["params"].get("hidden", 0) or "linear"
            lines.append(
                f"| {horizon} | {r['test']['windows']} | {r['retrain']['data']['lookback']} | {hidden} "
                f"| {s['mse']:.4f} | {s['mae']:.4f} | {inf['mse']:.3f} | {inf['mae']:.3f} "
                f"| {naive['mse']:.4f} | {naive['mae']:.4f} |"
            )
        lines.append("")
        lines.append(
            "validation MSE, tuned AR-Net (best trial) vs last value: "
            + ", ".join(
                f"h={h} {r['tuning']['best_val_mse']:.4f} vs {r['naive_last_value']['val']['mse']:.4f}"
                for h, r in result["etth1"].items()
            )
        )
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- CLI


SECTIONS = ("stpe", "fit_time", "etth1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="AR-Net benchmarks: sparse-AR sTPE vs OLS, fit time vs AR order, ETTh1 vs Informer.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run of every path: few seeds/epochs/trials, small p, one horizon (minutes)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results JSON (default {DEFAULT_OUT.relative_to(REPO_ROOT)}; "
        f"with --quick {DEFAULT_QUICK_OUT.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run (default: all)"
    )
    parser.add_argument("--data-dir", default=None, help="benchmark data folder (default: as the product finds it)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the Optuna studies and ONNX artifacts here (default: a temporary folder)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="sTPE seeds 0..n-1 (default 5; quick 2)")
    parser.add_argument("--trials", type=int, default=None, help="Optuna trials per horizon (default 8; quick 2)")
    parser.add_argument(
        "--fit-ps", type=int, nargs="+", default=None, help="AR orders for the fit-time section (default 8 ... 512)"
    )
    parser.add_argument("--fit-repeats", type=int, default=None, help="fit-time repeats (default 3; quick 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick
    out = args.out or (DEFAULT_QUICK_OUT if quick else DEFAULT_OUT)
    settings = {
        "stpe_seeds": list(range(args.seeds or (2 if quick else 5))),
        "stpe_epochs": 20 if quick else 200,
        "stpe_n_train": 1000,
        "stpe_n_val": 100,
        "fit_ps": args.fit_ps or ([8, 16, 32, 64] if quick else [8, 16, 32, 64, 128, 256, 512]),
        "fit_n_samples": 2000 if quick else 20000,
        "fit_epochs": 1 if quick else 5,
        "fit_batch_size": 32,
        "fit_repeats": args.fit_repeats or (1 if quick else 3),
        "fit_growth_from_p": 16 if quick else 64,
        "etth1_horizons": [24] if quick else [24, 48, 168],
        "etth1_trials": args.trials or (2 if quick else 8),
        "etth1_tune_epochs": 1 if quick else 5,
        "etth1_retrain_epochs": 2 if quick else 20,
    }
    threads = limit_threads()
    result: dict[str, Any] = {
        "benchmark": "arnet",
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench/arnet.py", *argv]),
        "cwd": os.getcwd(),
        "quick": quick,
        "started_at": now(),
        "machine": machine_facts(threads),
        "settings": settings,
        "section_seconds": {},
    }
    began = time.perf_counter()
    if "stpe" in args.only:
        print("1/3 sTPE on the sparse AR process", flush=True)
        t0 = time.perf_counter()
        result["stpe"] = bench_stpe(
            settings["stpe_seeds"], settings["stpe_n_train"], settings["stpe_n_val"], settings["stpe_epochs"]
        )
        result["section_seconds"]["stpe"] = time.perf_counter() - t0
    if "fit_time" in args.only:
        print("2/3 fit time against AR order p", flush=True)
        t0 = time.perf_counter()
        result["fit_time"] = bench_fit_time(
            settings["fit_ps"],
            settings["fit_n_samples"],
            settings["fit_epochs"],
            settings["fit_batch_size"],
            settings["fit_repeats"],
            settings["fit_growth_from_p"],
        )
        result["section_seconds"]["fit_time"] = time.perf_counter() - t0
    if "etth1" in args.only:
        print("3/3 ETTh1 univariate: tune, retrain, export, evaluate the artifact", flush=True)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="arnet-bench-") as tmp:
            work = args.work_dir or Path(tmp)
            work = work / dt.datetime.now().strftime("%Y%m%dT%H%M%S")  # a fresh study, never a resumed one
            result["etth1"] = bench_etth1(
                settings["etth1_horizons"],
                settings["etth1_trials"],
                settings["etth1_tune_epochs"],
                settings["etth1_retrain_epochs"],
                work,
                args.data_dir,
            )
            result["etth1_work_dir"] = str(work) if args.work_dir else None
        result["section_seconds"]["etth1"] = time.perf_counter() - t0
    result["finished_at"] = now()
    result["total_seconds"] = time.perf_counter() - began
    result["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    table = markdown(result)
    result["markdown"] = table
    atomic_write_text(Path(out), json.dumps(result, indent=2))
    print(f"\n{table}")
    print(f"wrote {out} ({result['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
