"""Export a trained forecasting run to an ONNX artifact in a model store (one entry point for every model)."""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from forecasting.runs import Run, library_versions
from serving.artifact import FORMAT_VERSION, Artifact, read_artifact, staged_artifact, write_manifest
from serving.rollout import create_session

log = logging.getLogger(__name__)
# The exporter warns about every torchvision operator it cannot register; we export no vision models.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
GRAPH_FILE = "forecast.onnx"
PARITY_TOLERANCE = 1e-4  # fail the export above this; the measured figure is recorded in the manifest
DEFAULT_MAX_HORIZON_STEPS = 30  # window-shift blocks allowed per request unless --max-horizon says otherwise


class ServingGraph(nn.Module):
    """The graph a server runs: raw values in, raw values out, the training scaler folded in."""

    def __init__(self, model: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, 1, -1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, 1, -1))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        scaled = (context - self.mean) / self.std
        return self.model(scaled) * self.std + self.mean


def _example_context(run: Run, batch: int, seed: int) -> torch.Tensor:
    """Inputs on the data's own scale, so the parity check exercises realistic magnitudes."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((batch, run.model.context_length, len(run.channels))).astype(np.float32)
    return torch.from_numpy(noise * run.scaler.std + run.scaler.mean)


def _rolled_out(graph: ServingGraph, context: torch.Tensor, horizon: int, context_length: int) -> torch.Tensor:
    window, blocks, produced = context, [], 0
    with torch.no_grad():
        while produced < horizon:
            block = graph(window)
            blocks.append(block)
            produced += block.shape[1]
            window = torch.cat([window, block], dim=1)[:, -context_length:]
    return torch.cat(blocks, dim=1)[:, :horizon]


def parity_report(graph: ServingGraph, session: Any, run: Run, max_horizon: int) -> dict[str, float]:
    """Max |onnxruntime - torch| at batch 1 and 37, and over a rollout of 3 blocks (or the max horizon)."""
    report: dict[str, float] = {}
    step, context_length = run.model.step, run.model.context_length
    for batch in (1, 37):
        context = _example_context(run, batch, seed=batch)
        with torch.no_grad():
            expected = graph(context).numpy()
        actual = session.run(None, {"context": context.numpy()})[0]
        report[f"max_abs_diff_batch_{batch}"] = float(np.max(np.abs(actual - expected)))
    horizon = min(3 * step, max_horizon)
    context = _example_context(run, 4, seed=7).numpy()
    expected = _rolled_out(graph, torch.from_numpy(context), horizon, context_length).numpy()
    window, blocks = context, []
    while sum(b.shape[1] for b in blocks) < horizon:
        block = session.run(None, {"context": window})[0]
        blocks.append(block)
        window = np.concatenate([window, block], axis=1)[:, -context_length:]
    actual = np.concatenate(blocks, axis=1)[:, :horizon]
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
    if model.rollout_kind != "window_shift" or model.graph_inputs != ("context",):
        raise NotImplementedError(
            f"export of {model.kind} ({model.rollout_kind}, inputs {model.graph_inputs}) is not supported yet"
        )
    step, context_length, n_channels = model.step, model.context_length, len(run.channels)
    max_horizon = max_horizon or DEFAULT_MAX_HORIZON_STEPS * step
    if max_horizon < 1:
        raise ValueError(f"max_horizon must be positive, got {max_horizon}")
    graph = ServingGraph(model, run.scaler.mean, run.scaler.std).eval()
    with staged_artifact(store, name, version) as (folder, chosen_version), warnings.catch_warnings():
        # torch's own exporter trips a deprecation inside pytree; nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        torch.onnx.export(
            graph,
            (_example_context(run, 2, seed=0),),
            str(folder / GRAPH_FILE),
            input_names=["context"],
            output_names=["forecast"],
            dynamic_shapes={"context": {0: torch.export.Dim("batch", min=1, max=1 << 20)}},
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
            "rollout": {
                "kind": "window_shift",
                "context_length": context_length,
                "step": step,
                "max_horizon": max_horizon,
            },
            "graphs": {
                "forecast": {
                    "file": GRAPH_FILE,
                    "opset": opset,
                    "inputs": [{"name": "context", "dtype": "float32", "shape": ["batch", context_length, n_channels]}],
                    "outputs": [{"name": "forecast", "dtype": "float32", "shape": ["batch", step, n_channels]}],
                    "dynamic_axes": {"context": {"0": "batch"}, "forecast": {"0": "batch"}},
                }
            },
            "channels": list(run.channels),
            "target": run.data.target if run.data.features == "S" else None,
            "features": run.data.features,
            "freq": run.freq,
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
