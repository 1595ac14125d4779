"""The main job: train AR-Net on real ETTh1 data, export it, serve it over gRPC, call it (prediction intervals
included), run a batch job and check its intervals against what happened.

Run with `make demo`. Everything it writes goes to demo-output/ (runs, model store, batch files), recreated on every
run so that a second run starts from the same empty store as the first.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from arcast_core.training import TrainConfig
from forecasting.data import DataConfig, prepare_data
from forecasting.evaluate import evaluate_artifact
from forecasting.export import export_run
from forecasting.runs import save_run, train_run
from recsys.data import load_beauty_titles, load_dataset
from recsys.prorec_training import popular_items_slice
from recsys.quick_recipe import QUICK_SLICE, quick_sasrec_args, quick_train_args, quick_transitions_args
from serving.batch import run_batch
from serving.client import ArcastClient
from serving.intervals import coverage, level_name
from serving.server import spawn_server

OUT = Path("demo-output")
MODEL = "etth1-arnet"
RECOMMENDER = "beauty-prorec"
SASREC = "beauty-sasrec"  # the other kind, behind the same Recommend API
TRANSITIONS = "beauty-transitions"  # item-to-item transition counts: the bar the trained ones must clear
HORIZONS = (24, 48, 168)
BASELINES = ("naive", "seasonal_naive", "linear")
LEVELS = (0.8, 0.95)  # the prediction intervals asked for (any levels in (0, 0.998] are served)


def show_recommendations(client: ArcastClient) -> None:
    """Top-5 for a few Beauty users of the slice, with titles, next to what they really bought next."""
    sequences = popular_items_slice(load_dataset("beauty").sequences, **QUICK_SLICE)
    titles = load_beauty_titles().texts
    print("\n    recommendations (seen items excluded) against what the user bought next:")
    for user in list(sequences)[:3]:
        history, actual = sequences[user][:-1], sequences[user][-1]
        response = client.recommend(RECOMMENDER, history[-20:], k=5)
        print(f"    user {user}: last bought {titles[history[-1]][:60]!r}")
        for rank, item in enumerate(response.items, 1):
            hit = "  <- bought next" if item.item_id == actual else ""
            print(f"      {rank}. {item.title[:70]}{hit}")
        print(f"      actually next: {titles[actual][:70]}")
    # A recommender that shows everyone the same best-sellers would look fine on three users; count over many.
    users = list(sequences)[:300]
    for name in (RECOMMENDER, SASREC, TRANSITIONS):
        response = client.recommend_batch(name, [sequences[u][:-1][-20:] for u in users], k=5)
        lists = [[item.item_id for item in user.items] for user in response.users]
        hits = sum(sequences[u][-1] in top for u, top in zip(users, lists, strict=True))
        print(
            f"    {name}, over {len(users)} users: {len({tuple(t) for t in lists})} different top-5 lists, "
            f"{len({i for t in lists for i in t})} different items, next purchase in the top 5 for {hits}"
        )


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)  # the demo's own folder: a rerun must not serve the last run's versions
    data = DataConfig(dataset="ETTh1", features="S", target="OT", lookback=168, horizon=24)
    print(f"1/6 training AR-Net on ETTh1 (target OT, lookback {data.lookback}, {data.horizon} values per step)")
    run = train_run(
        "arnet",
        data,
        {"loss": "mse", "norm": "last"},
        TrainConfig(epochs=15, batch_size=64, lr=3e-3, lr_schedule="onecycle"),
    )
    save_run(run, OUT / "runs" / MODEL)
    print(f"    best epoch {run.fit['best_epoch']} of {run.fit['epochs_run']}, {run.fit['seconds']:.1f} s")

    print("2/6 exporting to ONNX (parity with torch checked before publishing)")
    artifact = export_run(run, OUT / "models", MODEL, max_horizon=max(HORIZONS))
    print(f"    {artifact.path}, parity " + ", ".join(f"{v:.1e}" for v in artifact.manifest.parity.values()))

    print("3/6 evaluating it as served (onnxruntime, window-shift rollout) on every ETTh1 test window, beside what a")
    print("    user would pick instead: last value, seasonal naive (one day) and a ridge-fitted linear model")
    artifacts = {"arnet": artifact}
    for kind in BASELINES:  # closed-form fits: seconds, no SGD
        baseline = train_run(kind, data, {}, TrainConfig(epochs=1, progress=False))
        artifacts[kind] = export_run(baseline, OUT / "models", f"etth1-{kind}", max_horizon=max(HORIZONS))
    print(f"\n    {'horizon':>7} {'windows':>8}" + "".join(f" {kind:>14}" for kind in artifacts))
    for horizon in HORIZONS:
        reports = {kind: evaluate_artifact(a.path, horizon=horizon, progress=False) for kind, a in artifacts.items()}
        cells = "".join(
            f" {r['metrics']['scaled']['mse']:>7.4f}/{r['metrics']['scaled']['mae']:.4f}" for r in reports.values()
        )
        print(f"    {horizon:>7} {reports['arnet']['windows']:>8}{cells}")
    print("    (MSE/MAE on standardised data, the papers' protocol; bench/leaderboard.py has every protocol)\n")

    print("4/6 training three small recommenders on a Beauty slice (500 most popular items) and exporting them:")
    print("    PRORec (semantic IDs, beam search), the SASRec of its stage 1 (one score per item) and item-to-item")
    print("    transitions (counts fitted in seconds: what a recommender must beat to be worth serving)")
    recommenders = ((RECOMMENDER, quick_train_args), (SASREC, quick_sasrec_args), (TRANSITIONS, quick_transitions_args))
    for name, train in recommenders:
        recommender_run = OUT / "runs" / name
        for command in (
            train(recommender_run),
            ["export", "--run", str(recommender_run), "--store", str(OUT / "models"), "--name", name],
        ):
            subprocess.run([sys.executable, "-m", "recsys", *command], check=True, stdout=subprocess.DEVNULL)
        print(f"    {OUT / 'models' / name} exported (onnxruntime's top-k checked against torch's)")
    print()

    print("5/6 serving the store over gRPC and forecasting ETTh1 test windows")
    proc, target = spawn_server(OUT / "models", "--log-level", "warning")
    try:
        prepared = prepare_data(data)
        start = prepared.borders.test[0]
        values, stamps = prepared.table.values[:, 0], prepared.table.timestamps
        origins = [start + 168 + k * 500 for k in range(4)]
        with ArcastClient(target) as client:
            (info,) = client.list_models(MODEL)
            print(f"    server {target}: {info.name} v{info.version}, health {client.health()}")
            result = client.forecast(
                MODEL,
                [values[o - 168 : o] for o in origins],
                24,
                ids=[str(stamps[o])[:16] for o in origins],
                timestamps=[stamps[o - 168 : o] for o in origins],
                levels=LEVELS,  # prediction intervals: split conformal, calibrated on the validation split
            )
        print(
            f"\n    {'forecast from':<17} {'+1h pred':>9} {'95% interval':>15} {'actual':>7}"
            f" {'+24h pred':>10} {'95% interval':>15} {'actual':>7} {'MSE (°C²)':>10}"
        )
        for o, forecast in zip(origins, result.forecasts, strict=True):
            pred, actual = forecast.values[:, 0], values[o : o + 24]
            mse = float(np.mean((pred - actual) ** 2))
            lower, upper = forecast.intervals[-1].lower[:, 0], forecast.intervals[-1].upper[:, 0]  # the 95% one
            print(
                f"    {forecast.id:<17} {pred[0]:>9.2f} {f'{lower[0]:.2f}..{upper[0]:.2f}':>15} {actual[0]:>7.2f}"
                f" {pred[-1]:>10.2f} {f'{lower[-1]:.2f}..{upper[-1]:.2f}':>15} {actual[-1]:>7.2f} {mse:>10.3f}"
            )
        with ArcastClient(target) as client:
            show_recommendations(client)
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
    print(f"    server stopped on SIGTERM (exit code {code})\n")

    print("6/6 batch scoring: every 24th test origin as a series, parquet in, parquet out, with 80% and 95% intervals")
    frames = [
        pl.DataFrame({"series_id": str(stamps[o])[:13], "timestamp": stamps[o - 168 : o], "value": values[o - 168 : o]})
        for o in range(start + 168, prepared.borders.test[1] - 24, 24)
    ]
    (OUT / "batch").mkdir(parents=True, exist_ok=True)
    pl.concat(frames).write_parquet(OUT / "batch" / "series.parquet")
    summary = run_batch(
        OUT / "models",
        MODEL,
        OUT / "batch" / "series.parquet",
        OUT / "batch" / "forecasts.parquet",
        24,
        levels=list(LEVELS),
    )
    print(f"    {summary.scored} series scored, {summary.failed} failed, {summary.seconds:.1f} s -> {summary.output}")
    # The intervals against what happened: every forecast row joined to the actual value at its timestamp.
    actuals = pl.DataFrame({"timestamp": stamps, "actual": values}).cast({"timestamp": pl.Datetime("us")})
    scored = pl.read_parquet(summary.output).cast({"timestamp": pl.Datetime("us")}).join(actuals, on="timestamp")
    column = {name: scored[name].to_numpy() for name in scored.columns}
    bounds = {level: (column[f"lo_{level_name(level)}"], column[f"hi_{level_name(level)}"]) for level in LEVELS}
    shares = [f"{level:.0%} interval {coverage(*bounds[level], column['actual']):.1%}" for level in LEVELS]
    print(f"    share of the {len(scored)} forecast values inside their intervals: {', '.join(shares)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
