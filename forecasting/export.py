"""Export a trained forecasting run to an ONNX artifact in a model store (one entry point for every model)."""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from forecasting.runs import Run, library_versions
from serving.artifact import FORMAT_VERSION, Artifact, read_artifact, staged_artifact, write_manifest
from serving.rollout import CalendarInputs, create_session, window_shift
from serving.time_features import feature_names, freq_step

log = logging.getLogger(__name__)
# The exporter warns about every torchvision operator it cannot register; we export no vision models.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
GRAPH_FILE = "forecast.onnx"
PARITY_TOLERANCE = 1e-4  # fail the export above this; the measured figure is recorded in the manifest
PARITY_BATCHES = (1, 32, 37)
# Graph input layouts export knows: values only (AR-Net), or values + calendar features (Informer).
GRAPH_INPUTS = (("context",), ("context", "context_marks", "target_marks"))
DEFAULT_MAX_HORIZON_STEPS = 30  # window-shift blocks allowed per request unless --max-horizon says otherwise


class ServingGraph(nn.Module):
    """The graph a server runs: raw values in, raw values out, the training scaler folded in."""

    def __init__(self, model: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, 1, -1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, 1, -1))

    def forward(
        self, context: torch.Tensor, context_marks: torch.Tensor | None = None, target_marks: torch.Tensor | None = None
    ) -> torch.Tensor:
        scaled = (context - self.mean) / self.std
        return self.model(scaled, context_marks, target_marks) * self.std + self.mean


def _calendar(run: Run) -> CalendarInputs | None:
    """How the graph takes calendar features, or None for a context-only graph."""
    if run.model.graph_inputs == ("context",):
        return None
    return CalendarInputs(freq=run.freq, label_len=run.model.config.label_len)


def _example_context(run: Run, batch: int, seed: int) -> torch.Tensor:
    """Inputs on the data's own scale, so the parity check exercises realistic magnitudes."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((batch, run.model.context_length, len(run.channels))).astype(np.float32)
    return torch.from_numpy(noise * run.scaler.std + run.scaler.mean)


def _example_timestamps(run: Run, batch: int, seed: int) -> np.ndarray:
    """(batch, context_length) regular timestamps at the run's frequency, each row starting somewhere in 2016-2018."""
    rng = np.random.default_rng(seed + 1000)
    step = freq_step(run.freq).astype("timedelta64[us]")
    slots = int(np.timedelta64(2 * 365, "D") / step)
    starts = np.datetime64("2016-01-01T00:00", "us") + rng.integers(0, slots, batch) * step
    return starts[:, None] + np.arange(run.model.context_length) * step


def _example_inputs(run: Run, batch: int, seed: int) -> dict[str, np.ndarray]:
    """The graph's inputs by name: realistic values and, if it takes them, real calendar features."""
    context = _example_context(run, batch, seed).numpy()
    calendar = _calendar(run)
    if calendar is None:
        return {"context": context}
    return {"context": context, **calendar.marks(_example_timestamps(run, batch, seed), run.model.step)}


def _torch_runner(graph: ServingGraph) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    def run_graph(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return graph(*(torch.from_numpy(np.array(feeds[name])) for name in graph.model.graph_inputs)).numpy()

    return run_graph


def parity_report(graph: ServingGraph, session: Any, run: Run, max_horizon: int) -> dict[str, float]:
    """Max |onnxruntime - torch| at batch 1, 32 and 37, and over a rollout of 3 blocks (or the max horizon)."""
    report: dict[str, float] = {}
    step, context_length = run.model.step, run.model.context_length
    run_torch = _torch_runner(graph)
    for batch in PARITY_BATCHES:
        feeds = _example_inputs(run, batch, seed=batch)
        expected = run_torch(feeds)
        actual = session.run(None, feeds)[0]
        report[f"max_abs_diff_batch_{batch}"] = float(np.max(np.abs(actual - expected)))
    horizon = min(3 * step, max_horizon)
    context = _example_context(run, 4, seed=7).numpy()
    calendar = _calendar(run)
    stamps = _example_timestamps(run, 4, seed=7) if calendar else None
    expected = window_shift(run_torch, context, horizon, context_length, step, calendar, stamps)
    actual = window_shift(
        lambda feeds: session.run(None, feeds)[0], context, horizon, context_length, step, calendar, stamps
    )
    report[f"max_abs_diff_rollout_{horizon}"] = float(np.max(np.abs(actual - expected)))
    return report


def export_run(
    run: Run,
    store: Path | str,
    name: str,
    version: str | None = None,
    max_horizon: int | None = None,
    opset: int = 18,
) -> Artifact:
    """Write ``run`` as ``store/name/<version>`` atomically; checks onnxruntime parity before publishing."""
    model = run.model.cpu().eval()
    if model.rollout_kind != "window_shift" or model.graph_inputs not in GRAPH_INPUTS:
        raise NotImplementedError(
            f"export of {model.kind} ({model.rollout_kind}, inputs {model.graph_inputs}) is not supported yet"
        )
    step, context_length, n_channels = model.step, model.context_length, len(run.channels)
    max_horizon = max_horizon or DEFAULT_MAX_HORIZON_STEPS * step
    if max_horizon < 1:
        raise ValueError(f"max_horizon must be positive, got {max_horizon}")
    calendar = _calendar(run)
    model_freq = getattr(model.config, "freq", run.freq)
    if calendar is not None and model_freq != run.freq:
        raise ValueError(f"the model was built for frequency {model_freq!r} but its data has {run.freq!r}")
    graph = ServingGraph(model, run.scaler.mean, run.scaler.std).eval()
    shapes: dict[str, list[int | str]] = {"context": ["batch", context_length, n_channels]}
    rollout: dict[str, Any] = {
        "kind": "window_shift",
        "context_length": context_length,
        "step": step,
        "max_horizon": max_horizon,
    }
    if calendar is not None:
        n_marks = len(feature_names(run.freq))
        shapes["context_marks"] = ["batch", context_length, n_marks]
        shapes["target_marks"] = ["batch", calendar.label_len + step, n_marks]
        # Horizons past one step are covered block by block (window shift), each block's calendar features
        # computed from the timestamps: the last context timestamp + k * freq.
        rollout.update(label_len=calendar.label_len, chunked=max_horizon > step)
    example = _example_inputs(run, 2, seed=0)
    batch_dim = torch.export.Dim("batch", min=1, max=1 << 20)
    with staged_artifact(store, name, version) as (folder, chosen_version), warnings.catch_warnings():
        # torch's own exporter trips a deprecation inside pytree; nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        # Every input shares the one "batch" dimension; the exporter says so once per extra input.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*", category=UserWarning)
        torch.onnx.export(
            graph,
            tuple(torch.from_numpy(example[name]) for name in shapes),
            str(folder / GRAPH_FILE),
            input_names=list(shapes),
            output_names=["forecast"],
            dynamic_shapes={name: {0: batch_dim} for name in shapes},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        onnx.checker.check_model(str(folder / GRAPH_FILE))
        parity = parity_report(graph, create_session(folder / GRAPH_FILE), run, max_horizon)
        worst = max(parity.values())
        if worst > PARITY_TOLERANCE:
            raise RuntimeError(f"onnxruntime differs from torch by {worst:.2e} (> {PARITY_TOLERANCE}): {parity}")
        info = run.info()
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": chosen_version,
            "model_kind": model.kind,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rollout": rollout,
            "graphs": {
                "forecast": {
                    "file": GRAPH_FILE,
                    "opset": opset,
                    "inputs": [{"name": name, "dtype": "float32", "shape": shape} for name, shape in shapes.items()],
                    "outputs": [{"name": "forecast", "dtype": "float32", "shape": ["batch", step, n_channels]}],
                    "dynamic_axes": {name: {"0": "batch"} for name in [*shapes, "forecast"]},
                }
            },
            "channels": list(run.channels),
            "target": run.data.target if run.data.features == "S" else None,
            "features": run.data.features,
            "freq": run.freq,
            **({"time_features": {"encoding": "timeF", "names": list(feature_names(run.freq))}} if calendar else {}),
            "normalization": {"kind": "standard", "applied": "in_graph", **run.scaler.as_dict()},
            "data": {"config": info["data"], "fingerprint": run.fingerprint},
            "model_config": info["model_config"],
            "train": info["train"],
            "fit": {k: v for k, v in run.fit.items() if k != "history"},
            "metrics": run.metrics,
            "parity": parity,
            "versions": library_versions(),
        }
        write_manifest(folder, manifest)
    artifact = read_artifact(Path(store) / name / chosen_version)
    log.info("exported %s version %s (parity %.1e)", name, chosen_version, worst)
    return artifact
