"""AutoTimes (Liu et al., NeurIPS 2024) on ETTh1, one-for-all, with SmolLM2-135M as the frozen LLM.

1. ``speed``: KV-cache rollout against recomputing the whole sequence at every step, horizon 720 (7 prefill
   tokens + 7 decode steps), in torch and (with ``--onnx``) in onnxruntime through the served engine, median of
   ``--speed-repeats`` after a warm-up, the two interleaved.
2. ``accuracy``: for each variant (``plain``: no timestamp embeddings; ``timestamps``: with them) one model is
   trained at lookback 672 with next-segment MSE on every position (the shared training loop), then rolled out
   over 8 segments on the test windows and scored at horizons 96/192/336/720 (scaled MSE/MAE, the published
   protocol, every channel independently), with the average over the four horizons beside the paper's figures.
3. ``onnx`` (with ``--onnx``): the trained plain model exported as a kv_cache artifact (one graph), its parity
   with torch on real test windows (teacher-forced steps and free 720-step rollouts, against float64 torch).

The paper's protocol is every training and test window, 10 epochs, batches of 256 single-channel series (the
official loader yields one channel of one window per item: 37 windows of ETTh1's 7 channels here, where a batch is
whole windows), on a GPU; on this CPU with this backbone 6 to 7.5 minutes an epoch at 2 threads (2026-12-05).
``--max-train-windows``, ``--epochs``, ``--train-stride``, ``--test-stride``, ``--max-test-windows`` and
``--max-val-windows`` bound the run; any of them set marks the result "reduced", with every bound written into the
JSON. A stride that is a divisor of 96 also bounds the timestamp texts the LLM
must embed (segment starts repeat across windows).

Run from the repository root:
  .venv/bin/python bench/autotimes.py                                   # the protocol (long)
  .venv/bin/python bench/autotimes.py --epochs 1 --max-train-windows 256 --train-stride 24 \\
      --test-stride 24 --max-val-windows 64 --onnx                      # a bounded CPU run
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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from arcast_core.checkpoint import selected_weights  # noqa: E402
from arcast_core.files import atomic_write_text  # noqa: E402
from arcast_core.runtime import pick_device, seed_everything  # noqa: E402
from arcast_core.training import TrainConfig  # noqa: E402
from forecasting.data import DataConfig, PreparedData, WindowDataset, data_facts, prepare_data  # noqa: E402
from forecasting.llm_backbone import DEFAULT_BACKBONE, shared_backbone  # noqa: E402
from forecasting.metrics import error_metrics  # noqa: E402
from forecasting.models import build_model  # noqa: E402
from forecasting.models.autotimes import ROLLOUTS, AutoTimes, check_rollout  # noqa: E402
from forecasting.runs import Run  # noqa: E402
from forecasting.training import fit, model_device  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "autotimes.json"
LOOKBACK, SEGMENT = 672, 96
HORIZONS = (96, 192, 336, 720)
BLOCKS = -(-max(HORIZONS) // SEGMENT)  # the segments a rollout writes to reach the longest horizon
# ANCHORS.md: ETTh1 average over the four horizons (MSE / MAE), one-for-all.
PAPER = {
    "AutoTimes (LLaMA-7B)": (0.389, 0.422),
    "TimeLLM": (0.412, 0.437),
    "PatchTST": (0.409, 0.430),
    "DLinear": (0.426, 0.444),
}
PAPER_PER_HORIZON = {96: (0.360, 0.400), 192: (0.388, 0.419), 336: (0.401, 0.429), 720: (0.406, 0.440)}


class WindowSubset:
    """Some windows of a split, with the ``batches`` / ``len`` the training loop uses."""

    def __init__(self, data: WindowDataset, index: np.ndarray) -> None:
        self.data, self.index = data, np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def batches(self, batch_size: int, shuffle: bool = False, rng=None, shard: tuple[int, int] = (0, 1)):
        order = self.index.copy()
        if shuffle:
            (rng or np.random.default_rng()).shuffle(order)
        order = order[shard[0] :: shard[1]]
        for start in range(0, len(order), batch_size):
            yield self.data.batch(order[start : start + batch_size])


class ChannelMixedSubset(WindowSubset):
    """The official loader's batches (thuml/AutoTimes yields one channel of one window per item): each step's
    ``batch_size x C`` single-channel series are drawn from every (window, channel) pair of the split, where
    ``WindowSubset`` keeps a window's C channels together. The same series a step and steps an epoch; the model
    is channel-independent, so a (B, L, 1) batch is what its loss sees of a (B / C, L, C) one."""

    def batches(self, batch_size: int, shuffle: bool = False, rng=None, shard: tuple[int, int] = (0, 1)):
        channels = self.data.values.shape[1]
        order = np.arange(len(self.index) * channels)
        if shuffle:
            (rng or np.random.default_rng()).shuffle(order)
        order = order[shard[0] :: shard[1]]
        per_step = batch_size * channels
        for start in range(0, len(order), per_step):
            pairs = order[start : start + per_step]
            batch = self.data.batch(self.index[pairs // channels])
            rows, channel = torch.arange(len(pairs)), torch.from_numpy(pairs % channels)
            yield {**batch, **{k: batch[k][rows, :, channel].unsqueeze(-1) for k in ("x", "y")}}


def choose(n: int, stride: int, cap: int | None, seed: int) -> np.ndarray:
    """Every ``stride``-th of ``n`` windows, then (if more than ``cap``) a seeded random ``cap`` of them, sorted."""
    index = np.arange(0, n, stride)
    if cap is not None and len(index) > cap:
        index = np.sort(np.random.default_rng(seed).choice(index, cap, replace=False))
    return index


def scored_windows(split: WindowDataset, stride: int, cap: int | None, seed: int) -> np.ndarray:
    """The test windows a run scores (``--test-stride``, ``--max-test-windows``): drawn with ``seed + 2``."""
    return choose(len(split), stride, cap, seed + 2)


def choice_windows(split: WindowDataset, stride: int, seed: int) -> np.ndarray:
    """The validation windows a run chooses its rollout on (``--val-stride``): drawn with ``seed + 3``."""
    return choose(len(split), stride, None, seed + 3)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def save(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))


def new_model(args: argparse.Namespace, data: DataConfig, channels: int, timestamps: bool) -> AutoTimes:
    """A model bound to ``data``, whose horizon is ``train_segments`` segments (1 for the speed runs)."""
    params = {
        "backbone": args.backbone,
        "timestamps": timestamps,
        "train_segments": data.horizon // SEGMENT,
        "train_rollout": args.train_rollout,
        "mlp_hidden_layers": args.mlp_hidden_layers,
        "mlp_hidden_dim": args.mlp_hidden_dim,
    }
    model = build_model("autotimes", params, data_facts(data, channels))
    assert isinstance(model, AutoTimes)
    return model


# --- 1. speed ------------------------------------------------------------------------------------------------


def elapsed(started: float) -> dict[str, Any]:
    """Seconds since ``started`` and the load average now, recorded with each scoring pass: a time is only
    comparable with others at a known load (a file that several calls add to holds passes run at several)."""
    return {"eval_seconds": time.perf_counter() - started, "load_average": list(os.getloadavg())}


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleaved(kv_cache, recompute, repeats: int) -> dict[str, list[float]]:
    """One untimed warm-up of each, then ``repeats`` timed runs of each, alternating (load hits both alike)."""
    kv_cache(), recompute()
    out: dict[str, list[float]] = {"kv_cache": [], "recompute": []}
    for _ in range(repeats):
        out["kv_cache"].append(seconds(kv_cache))
        out["recompute"].append(seconds(recompute))
    return out


def speed_torch(model: AutoTimes, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """KV cache against recompute at horizon 720, on the GPU where there is one (``device`` in the result)."""
    n_blocks = -(-720 // SEGMENT)
    device = pick_device("auto")  # the rollout's cost where training runs: the GPU where there is one
    model.to(device).eval()
    x = x.to(device)

    def rollout(use_cache: bool) -> torch.Tensor:
        out = model.forecast(x, n_blocks, use_cache=use_cache)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels run asynchronously: time them to their end
        return out

    with torch.no_grad():
        times = interleaved(lambda: rollout(True), lambda: rollout(False), repeats)
        gap = float((model.forecast(x, n_blocks) - model.forecast(x, n_blocks, use_cache=False)).abs().max())
    return summarise(times) | {"max_abs_diff_scaled": gap, "device": str(device)}


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "seconds": times,
        "median_s": medians,
        "speedup_kv_cache": medians["recompute"] / medians["kv_cache"],
    }


def onnx_recompute(served, raw: np.ndarray, horizon: int) -> np.ndarray:
    """The served step graph without its KV cache: every segment is a prefill (empty past) over the whole grown
    token sequence, context tokens plus the predictions so far; raw (B, L, C) -> raw (B, horizon, C).

    The context is normalised once, as the growing rollout does, so both compute the same forecast.
    """
    n_blocks = -(-horizon // SEGMENT)
    session = served.session
    past_names = [i.name for i in session.get_inputs() if i.name.startswith("past_")]
    layout = served.spec
    inputs = served.prepare(raw, n_blocks)
    segments, mean, std = served.normalise(inputs.scaled)
    empty = np.zeros((len(segments), layout.kv_heads, 0, layout.head_dim), np.float32)
    sequence, outs = segments, []
    for _ in range(n_blocks):
        feeds = {"segments": sequence, **dict.fromkeys(past_names, empty)}
        if inputs.time is not None:
            feeds["time_embeds"] = np.ascontiguousarray(inputs.time[:, : sequence.shape[1]])
        outs.append(session.run(["next"], feeds)[0])
        sequence = np.concatenate([sequence, outs[-1]], axis=1)
    scaled = served.from_segments(np.concatenate(outs, axis=1), len(raw)) * std + mean
    return served.denormalise(scaled)[:, :horizon]


def speed_onnx(served, raw: np.ndarray, repeats: int) -> dict[str, Any]:
    """The served engine's KV-cache rollout against the same graph run over the whole sequence per step."""
    times = interleaved(
        lambda: served.forecast(raw, 720, rollout="growing"), lambda: onnx_recompute(served, raw, 720), repeats
    )
    gap = float(np.abs(served.forecast(raw, 720, rollout="growing") - onnx_recompute(served, raw, 720)).max())
    return summarise(times) | {"max_abs_diff_raw": gap}


# --- 2. accuracy ---------------------------------------------------------------------------------------------


def evaluate(
    model: AutoTimes,
    prepared: PreparedData,
    index: np.ndarray,
    batch_size: int,
    rollout: str,
    prompt: np.ndarray | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Roll out 8 segments (``growing`` or ``sliding``) from each chosen window of ``split`` (``test`` or ``val``);
    score each horizon on the windows it fits in. ``prompt`` (P, C) scaled values: placed before every lookback
    (in-context forecasting)."""
    windows: WindowDataset = getattr(prepared, split)
    return score(predict(model, windows, index, batch_size, rollout, BLOCKS, prompt), windows.values, index)


def predict(
    model: AutoTimes,
    windows: WindowDataset,
    index: np.ndarray,
    batch_size: int,
    rollout: str,
    n_blocks: int,
    prompt: np.ndarray | None = None,
) -> np.ndarray:
    """(windows, n_blocks * SEGMENT, C) scaled forecasts of ``rollout`` from each chosen window of ``windows``."""
    mode = check_rollout(rollout)
    preds = []
    device = model_device(model)  # trained on the GPU where there is one: the windows go where the weights are
    model.eval()
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            batch = windows.batch(index[start : start + batch_size])
            prompts = None if prompt is None else torch.from_numpy(prompt).expand(len(batch["x"]), -1, -1).to(device)
            x, x_mark = batch["x"].to(device), batch["x_mark"].to(device)
            preds.append(model.forecast(x, n_blocks, x_mark, rollout=mode, prompt=prompts).cpu().numpy())
    return np.concatenate(preds)


def score(pred: np.ndarray, values: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    """Scaled MSE/MAE of forecasts ``pred`` (windows, >= 720, C) made at windows ``index`` of ``values`` (the
    scaled split, lookback rows included), each horizon on the windows it fits in, and their average."""
    per_horizon = {}
    for h in HORIZONS:
        valid = index + LOOKBACK + h <= len(values)
        true = np.stack([values[i + LOOKBACK : i + LOOKBACK + h] for i in index[valid]])
        per_horizon[str(h)] = {"windows": int(valid.sum()), **error_metrics(pred[valid, :h], true)}
    average = {k: float(np.mean([per_horizon[str(h)][k] for h in HORIZONS])) for k in ("mse", "mae")}
    return {"per_horizon": per_horizon, "average": average}


def baselines(prepared: PreparedData, data: DataConfig, index: np.ndarray) -> dict[str, Any]:
    """What a user would pick instead, on exactly the test windows AutoTimes is scored on: the ``naive``,
    ``seasonal_naive`` and ``linear`` model kinds as the leaderboard fits them (linear: options and ridge penalty
    chosen on validation, 672 values to the next 96), each rolled out by its torch model as served."""
    from leaderboard import CLOSED_FORM, Task, linear_on_validation, timed_train

    values = prepared.test.values
    horizon = max(HORIZONS)
    task = Task("autotimes", data.dataset, data.features, horizon, LOOKBACK, train_horizon=SEGMENT)
    out: dict[str, Any] = {}
    for kind in ("naive", "seasonal_naive", "linear"):
        started = time.perf_counter()
        trained = linear_on_validation(task, data) if kind == "linear" else None
        run = trained.run if trained else timed_train(kind, data, {}, CLOSED_FORM, prepared=prepared)[0]
        pred = baseline_forecast(run, prepared, prepared.test, index, horizon)
        out[kind] = {**score(pred, values, index), "seconds": time.perf_counter() - started}
        if trained:
            out[kind].update(chosen=trained.details["chosen"], alpha=trained.details["alpha"])
    return out


def baseline_forecast(
    run: Run, prepared: PreparedData, windows: WindowDataset, index: np.ndarray, horizon: int
) -> np.ndarray:
    """(windows, horizon, C) scaled forecasts of a baseline's torch model, rolled out as served (in raw units, 256
    windows a call) from each chosen window of ``windows``: what AutoTimes is compared with on the same windows."""
    from forecasting.export import torch_forecast

    raw = prepared.scaler.inverse(np.stack([windows.values[i : i + LOOKBACK] for i in index]))  # (windows, 672, C)
    pred = np.concatenate([torch_forecast(run, raw[i : i + 256], horizon) for i in range(0, len(raw), 256)])
    return prepared.scaler.transform(pred)


def load_plain(checkpoint: Path, data: DataConfig, channels: int, hidden_layers: int, hidden_dim: int) -> AutoTimes:
    """The selected weights of a ``--variants plain`` run's checkpoint, in a model of the given MLP map shape."""
    args = argparse.Namespace(
        backbone=DEFAULT_BACKBONE, train_rollout="growing", mlp_hidden_layers=hidden_layers, mlp_hidden_dim=hidden_dim
    )
    model = new_model(args, data, channels, timestamps=False)
    model.load_state_dict(selected_weights(checkpoint))
    return model


def choose_rollout(
    model: AutoTimes, prepared: PreparedData, args: argparse.Namespace, variant: str, result: dict, out: Path
) -> str:
    """The rollout with the lowest average validation MSE over every ``--val-stride``-th validation window,
    each of ``--rollouts`` scored there as on test; the scores and the choice go into ``result``."""
    index = choice_windows(prepared.val, args.val_stride, args.seed)
    scores = result.setdefault("validation", {})
    for rollout in args.rollouts:
        started = time.perf_counter()
        scores[f"{variant}, {rollout}"] = evaluate(model, prepared, index, args.eval_batch_size, rollout, split="val")
        scores[f"{variant}, {rollout}"].update(elapsed(started), val_windows=len(index))
        save(result, out)
    chosen = min(args.rollouts, key=lambda r: scores[f"{variant}, {r}"]["average"]["mse"])
    result.setdefault("rollout_choice", {})[variant] = {"chosen": chosen, "val_stride": args.val_stride}
    save(result, out)
    return chosen


def train_variant(
    args: argparse.Namespace,
    prepared: PreparedData,
    data: DataConfig,
    timestamps: bool,
    lr: float,
    epochs: int,
    checkpoint: Path | None = None,
) -> tuple[AutoTimes, dict[str, Any]]:
    """Train one model on ``prepared`` (windows of ``train_segments`` segments past the lookback)."""
    seed_everything(args.seed)
    model = new_model(args, data, prepared.n_channels, timestamps)
    if args.init_from:  # a resumed checkpoint of this run replaces these weights with its own
        model.load_state_dict(selected_weights(Path(args.init_from)))
    train_index = choose(len(prepared.train), args.train_stride, args.max_train_windows, args.seed)
    val_index = choose(len(prepared.val), args.train_stride, args.max_val_windows, args.seed + 1)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=lr,
        lr_schedule="cosine",
        warmup_steps=args.warmup_steps,
        patience=args.patience or epochs,
        seed=args.seed,
        eval_batch_size=args.eval_batch_size,
        checkpoint=None if checkpoint is None else str(checkpoint),
        progress=args.progress,
        autocast=args.autocast,
    )
    started = time.perf_counter()
    result = fit(
        model,
        (ChannelMixedSubset if args.mix_channels else WindowSubset)(prepared.train, train_index),
        WindowSubset(prepared.val, val_index),
        cfg,  # type: ignore[arg-type]
    )
    seconds = time.perf_counter() - started
    stamps = model.timestamp_cache.computed if timestamps else 0
    return model, {
        "lr": lr,
        "train_segments": model.config.train_segments,
        "train_rollout": model.config.train_rollout,
        "mix_channels": args.mix_channels,
        "init_from": args.init_from,
        "train_windows": len(train_index),
        "val_windows": len(val_index),
        "fit": result.as_dict(),
        "train_seconds": result.seconds,  # the training loop's, over every resume of its checkpoint
        "call_seconds": seconds,  # this call's: near 0 where a finished checkpoint was resumed
        "timestamp_texts_embedded": stamps,
        "load_average": list(os.getloadavg()),  # at the end: the time above is comparable at a known load
        "trainable": model.trainable_share(),
    }


def in_context(model: AutoTimes, args: argparse.Namespace, target: str) -> dict[str, Any]:
    """Zero-shot against in-context forecasting on ``target``, a dataset the model was not trained on, beside what
    a user would pick instead on the same windows (``baselines``: last value, seasonal naive and the ``linear``
    model trained on ``target``, options and penalty chosen on its validation split, as the leaderboard's).

    The prompt, as the official in-context loader: the first ``--prompt-segments`` segments of the target's own
    training split (each channel its own), placed before every lookback; all values on the target's scale.
    """
    if model.config.timestamps:
        raise ValueError("in-context forecasting on another dataset needs the plain variant (no timestamps)")
    data = DataConfig(
        dataset=target, features=args.features, lookback=LOOKBACK, horizon=SEGMENT, data_dir=args.data_dir
    )
    prepared = prepare_data(data)
    index = scored_windows(prepared.test, args.test_stride, args.max_test_windows, args.seed)
    prompt = np.ascontiguousarray(prepared.train.values[: args.prompt_segments * SEGMENT][None], dtype=np.float32)
    rollout = model.config.rollout  # the validation's choice (--val-stride), else the model's default
    out: dict[str, Any] = {
        "rollout": rollout,
        "prompt_segments": args.prompt_segments,
        "test_stride": args.test_stride,  # the target's test windows: every n-th (the run's own stride is ETTh1's)
        "test_windows": len(index),
    }
    for name, p in (("zero-shot", None), ("in-context", prompt)):
        started = time.perf_counter()
        out[name] = evaluate(model, prepared, index, args.eval_batch_size, rollout, p)
        out[name].update(elapsed(started))
    for kind, scored in baselines(prepared, data, index).items():
        out[f"{kind} (trained on it)" if kind == "linear" else kind] = scored
    return out


# --- 3. ONNX -------------------------------------------------------------------------------------------------


def export_and_check(model: AutoTimes, prepared: PreparedData, data: DataConfig, fit_info: dict, out_dir: Path):
    from forecasting.export import export_kv_cache_run, kv_parity_report
    from serving.runners.kv_cache import KVCacheModel

    run = Run(
        model=model,
        model_params={"backbone": model.config.backbone, "timestamps": model.config.timestamps},
        data=data,
        train=TrainConfig(),
        channels=prepared.channels,
        scaler=prepared.scaler,
        freq=prepared.freq,
        fingerprint=prepared.fingerprint,
        fit=fit_info,
        metrics={},
    )
    started = time.perf_counter()
    artifact = export_kv_cache_run(run, out_dir, "etth1-autotimes")
    export_seconds = time.perf_counter() - started
    served = KVCacheModel.load(artifact)
    test = prepared.test
    start = prepared.borders.test[0]
    index = np.array([0, 700, 1400, 2100])
    raw = np.stack([prepared.table.values[start + i : start + i + LOOKBACK] for i in index]).astype(np.float32)
    stamps = np.stack([prepared.table.timestamps[start + i : start + i + LOOKBACK] for i in index])
    rows = start + index if model.config.timestamps else None
    cases = [(raw[:1], stamps[:1], None if rows is None else rows[:1]), (raw, stamps, rows)]
    real = kv_parity_report(run, served, 720, cases)
    assert len(test) > index.max()
    sizes = {name: meta.bytes for name, meta in artifact.manifest.files.items()}
    return served, {
        "export_seconds": export_seconds,
        "files_bytes": sizes,
        "parity_noise_contexts": artifact.manifest.parity_details,
        "parity_real_test_windows": real,
    }


# --- main ----------------------------------------------------------------------------------------------------


def table_row(name: str, scored: dict[str, Any]) -> str:
    """One markdown row: MSE/MAE at each horizon, then their average."""
    cells = [f"{scored['per_horizon'][str(h)]['mse']:.3f}/{scored['per_horizon'][str(h)]['mae']:.3f}" for h in HORIZONS]
    avg = scored["average"]
    return f"| {name} | " + " | ".join(cells) + f" | {avg['mse']:.3f}/{avg['mae']:.3f} |"


def markdown(result: dict[str, Any]) -> str:
    lines = []
    speed = result.get("speed", {})
    if speed:
        lines += ["| rollout at horizon 720 | KV cache (s) | recompute (s) | speed-up |", "|---|---|---|---|"]
        for name, s in speed.items():
            med = s["median_s"]
            lines.append(f"| {name} | {med['kv_cache']:.3f} | {med['recompute']:.3f} | {s['speedup_kv_cache']:.2f}x |")
    acc = result.get("accuracy", {})
    if acc:
        lines += ["", "| ETTh1 (scaled) | " + " | ".join(f"{h}" for h in HORIZONS) + " | average |"]
        lines.append("|---" * (len(HORIZONS) + 2) + "|")
        lines += [table_row(f"AutoTimes SmolLM2, {name}", a) for name, a in acc.items()]
        lines += [table_row(name, a) for name, a in result.get("baselines", {}).items()]  # the same test windows
        paper = [f"{PAPER_PER_HORIZON[h][0]:.3f}/{PAPER_PER_HORIZON[h][1]:.3f}" for h in HORIZONS]
        lines.append("| AutoTimes LLaMA-7B (paper) | " + " | ".join(paper) + " | 0.389/0.422 |")
    validation = result.get("validation", {})
    if validation:
        lines += ["", "| ETTh1 validation (scaled) | " + " | ".join(f"{h}" for h in HORIZONS) + " | average |"]
        lines.append("|---" * (len(HORIZONS) + 2) + "|")
        lines += [table_row(f"AutoTimes SmolLM2, {name}", a) for name, a in validation.items()]
        lines += [f"Chosen on validation: {v}: {c['chosen']}" for v, c in result.get("rollout_choice", {}).items()]
    for target, found in result.get("in_context", {}).items():
        windows = f", {found['test_windows']} test windows" if "test_windows" in found else ""
        lines += [
            "",
            f"| {target} (scaled MSE/MAE), trained on ETTh1{windows} | "
            + " | ".join(map(str, HORIZONS))
            + " | average |",
        ]
        lines.append("|---" * (len(HORIZONS) + 2) + "|")
        names = ("zero-shot", "in-context", "naive", "seasonal_naive", "linear (trained on it)")
        lines += [table_row(name, found[name]) for name in names if name in found]  # older runs: linear only
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ETTh1")
    parser.add_argument("--data-dir")
    parser.add_argument("--features", choices=["S", "M"], default="M")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--variants", nargs="+", choices=["plain", "timestamps"], default=["plain", "timestamps"])
    parser.add_argument("--epochs", type=int, default=10, help="paper: 10")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="windows per step, each of them C series (paper: 256 series, i.e. 37 windows of ETTh1's 7 channels)",
    )
    parser.add_argument(
        "--mix-channels",
        action="store_true",
        help="draw each step's series from every (window, channel) pair, as the official loader does (default: a "
        "step's windows each bring their C channels)",
    )
    parser.add_argument("--lr", type=float, default=5e-4, help="paper: 5e-4, cosine")
    parser.add_argument("--max-train-windows", type=int, help="cap on training windows (default: all)")
    parser.add_argument("--max-val-windows", type=int, help="cap on validation windows (default: all)")
    parser.add_argument("--train-stride", type=int, default=1, help="every n-th training/validation window")
    parser.add_argument("--test-stride", type=int, default=1, help="every n-th test window (default: every one)")
    parser.add_argument("--max-test-windows", type=int, help="cap on test windows (default: all)")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument(
        "--train-segments",
        type=int,
        default=1,
        help="segments past the lookback per training window (1: the paper's next-segment training; k > 1 trains "
        "the rollout --train-rollout names over k segments, and validates that rollout)",
    )
    parser.add_argument(
        "--train-rollout",
        choices=ROLLOUTS,
        default="growing",
        help="with --train-segments k > 1, the rollout trained: growing (teacher-forced past the lookback with the "
        "lookback's statistics) or sliding (the official loop run free for k segments, the model's own predictions "
        "in its windows, the gradient through them)",
    )
    parser.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from the weights another run of this benchmark selected (a file of its --checkpoint-dir, same "
        "map shape), e.g. to fine-tune a next-segment model on a k-segment rollout",
    )
    parser.add_argument(
        "--mlp-hidden-layers",
        type=int,
        default=0,
        help="hidden layers of the segment embedding and projection (0: linear, the official LLaMA script; 1: the "
        "official GPT-2 script's, whose --mlp_hidden_layers 2 builds one hidden layer, as its MLP adds "
        "hidden_layers - 2 between the first and the output)",
    )
    parser.add_argument("--mlp-hidden-dim", type=int, default=256, help="their width (the GPT-2 script: 512)")
    parser.add_argument(
        "--autocast",
        choices=["none", "bf16"],
        default="none",
        help="bf16: training steps under bfloat16 autocast (the official scripts train with mixed precision)",
    )
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up before the cosine decay")
    parser.add_argument("--patience", type=int, help="validations without improvement before stopping (default: none)")
    parser.add_argument(
        "--lr-scan",
        type=float,
        nargs="+",
        help="rates to try first, each for --scan-epochs on the same windows; the one with the lowest validation "
        "MSE trains the variants (instead of --lr)",
    )
    parser.add_argument("--scan-epochs", type=int, default=1)
    parser.add_argument(
        "--rollouts", nargs="+", choices=ROLLOUTS, default=list(ROLLOUTS), help="rollouts scored on the test windows"
    )
    parser.add_argument(
        "--val-stride",
        type=int,
        help="also roll out every one of --rollouts from every n-th validation window and score it there, each "
        "horizon as on test; the lowest validation average MSE is the rollout chosen (recorded as rollout_choice) "
        "and the one the --onnx export serves by default",
    )
    parser.add_argument(
        "--in-context",
        nargs="+",
        default=[],
        metavar="DATASET",
        help="after training, forecast these datasets zero-shot and in-context (plain variant), beside a linear "
        "model trained on each (e.g. ETTh2 ETTm1)",
    )
    parser.add_argument("--prompt-segments", type=int, default=2, help="in-context prompt length, in segments")
    parser.add_argument(
        "--checkpoint-dir",
        help="write a checkpoint per variant after every epoch and resume from it (a killed run goes on)",
    )
    parser.add_argument("--speed-windows", type=int, default=4, help="test windows per speed run (x channels)")
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true", help="the speed comparison only")
    parser.add_argument(
        "--skip-test",
        action="store_true",
        help="train (or resume a finished checkpoint), then only --val-stride's choice and --in-context: no ETTh1 "
        "test scoring, no baselines, no speed runs; added to the run's --out file when it exists",
    )
    parser.add_argument("--onnx", action="store_true", help="also export, check parity and time onnxruntime")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all usable cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--baselines-only",
        action="store_true",
        help="only score last value, seasonal naive and linear on the test windows of the run in --out (its "
        "--test-stride and --max-test-windows; pass its --seed) and add them to that file",
    )
    parser.add_argument("--work-dir", default=str(REPO_ROOT / ".arcast-cache" / "bench-autotimes"))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    bounds = {
        "epochs": args.epochs,
        "max_train_windows": args.max_train_windows,
        "max_val_windows": args.max_val_windows,
        "train_stride": args.train_stride,
        "test_stride": args.test_stride,
        "max_test_windows": args.max_test_windows,
    }
    reduced = (
        args.epochs < 10
        or any(bounds[k] is not None for k in ("max_train_windows", "max_val_windows", "max_test_windows"))
        or args.train_stride > 1
        or args.test_stride > 1
    )
    result: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "started": now(),
        "reduced": reduced,
        "bounds": bounds,
        "protocol": "ETTh1, features M channel-independent, lookback 672, segment 96, one model for horizons "
        "96/192/336/720 by KV-cache rollout, scaled MSE/MAE averaged over windows, steps and channels",
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "paper": {"average": PAPER, "autotimes_llama7b_per_horizon": PAPER_PER_HORIZON},
    }
    out = Path(args.out)
    data = DataConfig(
        dataset=args.dataset, features=args.features, lookback=LOOKBACK, horizon=SEGMENT, data_dir=args.data_dir
    )
    prepared = prepare_data(data)
    if args.baselines_only:  # onto a finished run's file, on its test windows
        result = json.loads(out.read_text())
        bounds = result["bounds"]
        index = scored_windows(prepared.test, bounds["test_stride"], bounds["max_test_windows"], args.seed)
        result["baselines"] = baselines(prepared, data, index)
        result["markdown"] = markdown(result)
        save(result, out)
        print(result["markdown"])
        return 0
    backbone = shared_backbone(args.backbone)
    result["backbone"] = {"spec": args.backbone, "identity": backbone.identity}

    # 1. speed: the rollout's cost does not depend on the head's weights
    speed_model = new_model(args, data, prepared.n_channels, timestamps=False)
    speed_index = np.arange(args.speed_windows) * 97
    if args.skip_test and out.is_file():  # the finished run's file gains the validation choice and in-context
        finished = json.loads(out.read_text())
        finished.setdefault("added_by", []).append(result["command"])
        result = finished
    else:
        x = prepared.test.batch(speed_index)["x"]
        result["speed"] = {
            f"torch, {len(speed_index)} windows x {prepared.n_channels} channels": speed_torch(
                speed_model, x, args.speed_repeats
            )
        }
        save(result, out)
        print(markdown(result), flush=True)

    plain_model = None
    if not args.skip_accuracy:
        test_index = scored_windows(prepared.test, args.test_stride, args.max_test_windows, args.seed)
        if not args.skip_test:
            result["baselines"] = baselines(prepared, data, test_index)
        save(result, out)
        train_data = replace(data, horizon=args.train_segments * SEGMENT)
        train_prepared = prepared if args.train_segments == 1 else prepare_data(train_data)
        checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else None
        lr = args.lr
        if args.lr_scan:
            scan = {}
            for rate in args.lr_scan:
                _, info = train_variant(
                    args, train_prepared, train_data, args.variants[0] == "timestamps", rate, args.scan_epochs
                )
                scan[str(rate)] = info["fit"]["best_val_loss"]
                result["lr_scan"] = {"epochs": args.scan_epochs, "variant": args.variants[0], "val_mse": scan}
                save(result, out)
            lr = float(min(scan, key=lambda r: scan[r]))
            result["lr_scan"]["chosen"] = lr
        result.setdefault("accuracy", {})
        result.setdefault("training", {})
        for variant in args.variants:
            mlp = f"-mlp{args.mlp_hidden_layers}x{args.mlp_hidden_dim}" if args.mlp_hidden_layers else ""
            bf16 = "-bf16" if args.autocast == "bf16" else ""
            trained = "-sliding" if args.train_segments > 1 and args.train_rollout == "sliding" else ""
            name = f"{variant}-k{args.train_segments}{trained}{mlp}{bf16}-lr{lr:g}.pt"
            checkpoint = None if checkpoints is None else checkpoints / name
            model, info = train_variant(
                args, train_prepared, train_data, variant == "timestamps", lr, args.epochs, checkpoint
            )
            if not (args.skip_test and variant in result["training"]):  # keep the finished run's own record
                result["training"][variant] = info
                save(result, out)  # the training's record survives whatever happens to the test pass
            if args.val_stride:
                chosen = choose_rollout(model, prepared, args, variant, result, out)
                model.config = replace(model.config, rollout=chosen)  # what the --onnx export serves
            for rollout in [] if args.skip_test else args.rollouts:
                started = time.perf_counter()
                scored = evaluate(model, prepared, test_index, args.eval_batch_size, rollout)
                scored.update(elapsed(started))
                scored["test_windows"] = len(test_index)
                result["accuracy"][f"{variant}, {rollout}"] = scored
                save(result, out)
                print(markdown(result), flush=True)
            if variant == "plain":
                plain_model = model
                for target in args.in_context:
                    result.setdefault("in_context", {})[target] = in_context(model, args, target)
                    save(result, out)

    if args.onnx:
        model = plain_model or speed_model
        served, info = export_and_check(model, prepared, data, result.get("training", {}), Path(args.work_dir))
        result["onnx"] = info
        start = prepared.borders.test[0]
        raw = np.stack([prepared.table.values[start + i : start + i + LOOKBACK] for i in speed_index])
        result["speed"][f"onnxruntime, {len(raw)} windows x {prepared.n_channels} channels"] = speed_onnx(
            served, raw.astype(np.float32), args.speed_repeats
        )
        save(result, out)

    result["finished"] = now()
    result["markdown"] = markdown(result)
    save(result, out)
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
