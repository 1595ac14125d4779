"""ONNX export: parity with torch, the artifact contract, atomic publishing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from forecasting.export import ServingGraph, export_run
from forecasting.runs import load_run, save_run
from serving.artifact import ArtifactError, read_artifact, resolve
from serving.runners.window_shift import WindowShiftModel, WindowShiftRollout


def torch_rollout(run, context: np.ndarray, horizon: int) -> np.ndarray:
    graph = ServingGraph(run.model, run.scaler.mean, run.scaler.std).eval()
    window, out = torch.from_numpy(context), []
    with torch.no_grad():
        while sum(b.shape[1] for b in out) < horizon:
            block = graph(window)
            out.append(block)
            window = torch.cat([window, block], 1)[:, -run.model.context_length :]
    return torch.cat(out, 1)[:, :horizon].numpy()


@pytest.mark.parametrize("batch", [1, 37])
def test_onnxruntime_matches_torch(arnet_run, model_store: Path, batch: int) -> None:
    served = WindowShiftModel.load(read_artifact(resolve(model_store, "etth1-arnet")))
    rng = np.random.default_rng(batch)
    context = (rng.standard_normal((batch, 48, 1)) * 5 + 15).astype(np.float32)
    step = served.step
    np.testing.assert_allclose(
        served.forecast(context, step), torch_rollout(arnet_run, context, step), atol=1e-5, rtol=0
    )
    horizon = 3 * step
    np.testing.assert_allclose(
        served.forecast(context, horizon), torch_rollout(arnet_run, context, horizon), atol=1e-5, rtol=0
    )


def test_manifest_carries_the_contract(model_store: Path) -> None:
    artifact = read_artifact(resolve(model_store, "etth1-arnet"))
    m = artifact.manifest
    assert m.model_kind == "arnet" and m.rollout == WindowShiftRollout(
        kind="window_shift", context_length=48, step=12, max_horizon=120
    )
    assert m.graphs["forecast"].inputs[0].shape == ("batch", 48, 1)
    assert m.channels == ("OT",) and m.freq == "1h"
    assert m.normalization is not None and m.normalization.applied == "in_graph" and len(m.normalization.std) == 1
    assert m.data.fingerprint is not None and len(m.data.fingerprint) == 64 and "test" in m.metrics
    assert max(m.parity.values()) <= 1e-5
    assert set(m.files) == {"forecast.onnx", "calibration.npz"}  # the graph and its conformal calibration
    umask = os.umask(0)
    os.umask(umask)
    for path in (artifact.path, *(artifact.path / f for f in ("forecast.onnx", "calibration.npz", "manifest.json"))):
        default = 0o777 if path.is_dir() else 0o666
        assert path.stat().st_mode & 0o777 == default & ~umask, path  # as if created normally: not owner-only


def test_tampered_artifact_is_refused(model_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(resolve(model_store, "etth1-arnet"), copy)
    with open(copy / "forecast.onnx", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for forecast\.onnx"):
        read_artifact(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 99"):
        read_artifact(copy)


class ShiftedRows:
    """An onnxruntime session stand-in: torch's answer, with ``shift`` added to the series in ``rows``."""

    def __init__(self, graph: ServingGraph, rows: list[int], shift: float) -> None:
        self.graph, self.rows, self.shift = graph, rows, shift

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.graph(torch.from_numpy(feeds["context"])).numpy().copy()
        out[[r for r in self.rows if r < len(out)]] += self.shift
        return [out]


def test_parity_gate_refuses_an_error_the_model_does_not_explain(arnet_run) -> None:
    from forecasting.export import parity_failures, parity_report

    graph = ServingGraph(arnet_run.model, arnet_run.scaler.mean, arnet_run.scaler.std).eval()
    clean = parity_report(graph, ShiftedRows(graph, [], 0.0), arnet_run, 36)
    assert clean.details is None and parity_failures(clean) == [] and max(clean.summary.values()) == 0.0
    # series 30 (of the batches of 32 and 37) off by 1e-2: AR-Net is smooth, so torch barely moves under
    # rounding-size perturbations and nothing explains the gap
    report = parity_report(graph, ShiftedRows(graph, [30], 1e-2), arnet_run, 36)
    assert report.summary["max_abs_diff_batch_37"] == pytest.approx(1e-2, rel=1e-3)
    failures = parity_failures(report)
    assert [f.split(":")[0] for f in failures] == ["max_abs_diff_batch_32 series 30", "max_abs_diff_batch_37 series 30"]


def test_parity_gate_passes_a_gap_the_models_discontinuity_explains(arnet_run, monkeypatch) -> None:
    """A step in torch's own output (as ProbSparse's top-u choice on a near-tie): onnxruntime on the other side."""
    import forecasting.export as export

    graph = ServingGraph(arnet_run.model, arnet_run.scaler.mean, arnet_run.scaler.std).eval()
    threshold: dict[str, float] = {}

    def step_model(feeds: dict[str, np.ndarray]) -> np.ndarray:
        first = feeds["context"][:, :1, :1]  # series whose first value passes the threshold jump by 1e-2
        return np.broadcast_to(1e-2 * (first > threshold["at"]), (len(first), 12, 1)).astype(np.float32)

    class OtherSide:
        def run(self, _outputs, feeds):
            out = step_model(feeds).copy()
            at_tie = np.flatnonzero(feeds["context"][:, 0, 0] == threshold["at"])
            out[at_tie] = 1e-2  # the tie resolved the other way
            return [out]

    monkeypatch.setattr(export, "_torch_runner", lambda graph: step_model)
    threshold["at"] = float(export._example_context(arnet_run, 37, seed=37).numpy()[5, 0, 0])  # series 5 sits on it
    report = export.parity_report(graph, OtherSide(), arnet_run, 36)
    assert [(b["check"], b["row"]) for b in report.details["beyond_tolerance"]] == [("max_abs_diff_batch_37", 5)]
    assert export.parity_failures(report) == []


def test_interrupted_export_leaves_nothing(arnet_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import forecasting.export as export

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during the parity check")

    monkeypatch.setattr(export, "parity_report", crash)
    with pytest.raises(KeyboardInterrupt):
        export_run(arnet_run, tmp_path, "half")
    assert list((tmp_path / "half").iterdir()) == []  # no version folder, no staging leftovers
    with pytest.raises(ArtifactError, match="no model named 'half'"):
        resolve(tmp_path, "half")


def test_versions_increase_and_never_overwrite(arnet_run, tmp_path: Path) -> None:
    first = export_run(arnet_run, tmp_path, "m")
    second = export_run(arnet_run, tmp_path, "m")
    assert (first.version, second.version) == ("1", "2")
    assert resolve(tmp_path, "m").name == "2"
    with pytest.raises(ArtifactError, match="never overwritten"):
        export_run(arnet_run, tmp_path, "m", version="1")


def test_run_round_trip(arnet_run, tmp_path: Path) -> None:
    save_run(arnet_run, tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    x = torch.randn(3, 48, 1)
    torch.testing.assert_close(loaded.model(x), arnet_run.model(x))
    assert loaded.scaler.as_dict() == arnet_run.scaler.as_dict()


def test_evaluating_the_artifact_reproduces_the_training_test_metrics(arnet_run, model_store: Path) -> None:
    from forecasting.evaluate import evaluate_artifact

    report = evaluate_artifact(resolve(model_store, "etth1-arnet"), progress=False)
    for key in ("mse", "mae"):
        assert report["metrics"]["scaled"][key] == pytest.approx(arnet_run.metrics["test"]["scaled"][key], rel=1e-5)


def test_input_norm_exports_with_the_context_alone(arnet_run, tmp_path: Path) -> None:
    from dataclasses import replace

    from forecasting.models.arnet import ARNet

    model = ARNet(replace(arnet_run.model.config, norm="last"))
    model.load_state_dict(arnet_run.model.state_dict())
    run = replace(arnet_run, model=model.eval(), model_params={**arnet_run.model_params, "norm": "last"})
    export_run(run, tmp_path, "norm-last", max_horizon=36)
    served = WindowShiftModel.load(read_artifact(resolve(tmp_path, "norm-last")))
    context = (np.random.default_rng(0).standard_normal((4, 48, 1)) * 5 + 15).astype(np.float32)
    np.testing.assert_allclose(served.forecast(context, 36), torch_rollout(run, context, 36), atol=1e-5, rtol=0)
