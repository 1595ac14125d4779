"""One publish path and the typed manifest: what is refused before anything is written, and how a bad manifest reads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from serving.artifact import MANIFEST, Artifact, ArtifactError, read_artifact, write_manifest
from serving.publish import Export, Parity, publish
from serving.runners import RUNNERS
from serving.runners.window_shift import WindowShiftModel, WindowShiftRollout

GRAPH = {
    "file": "forecast.onnx",
    "opset": 18,
    "inputs": [{"name": "context", "dtype": "float32", "shape": ["batch", 4, 1]}],
    "outputs": [{"name": "forecast", "dtype": "float32", "shape": ["batch", 2, 1]}],
}


def _export(**changes: Any) -> Export:
    """A window-shift export whose graph file is a placeholder: publishing never runs the graph, the gate does."""

    def write(folder: Path) -> None:
        (folder / "forecast.onnx").write_bytes(b"not a graph")

    export = Export(
        model_kind="arnet",
        rollout={"kind": "window_shift", "context_length": 4, "step": 2, "max_horizon": 6},
        graphs={"forecast": GRAPH},
        write=write,
        parity=lambda staged: Parity({"max_abs_diff_batch_1": 0.0}),
        data={"config": {"dataset": "toy"}, "fingerprint": "f" * 64},
        metrics={"test": {"mse": 1.0}},
        versions={"python": "3"},
        facts={"channels": ["OT"], "freq": "1h"},
    )
    return replace(export, **changes)


def test_publish_writes_the_envelope_and_reads_back_typed(tmp_path: Path) -> None:
    artifact = publish(tmp_path, "toy", _export())
    m = artifact.manifest
    assert artifact.path == tmp_path / "toy" / "1" and (m.name, m.version, m.format_version) == ("toy", "1", 1)
    assert m.rollout == WindowShiftRollout(kind="window_shift", context_length=4, step=2, max_horizon=6)
    assert m.parity == {"max_abs_diff_batch_1": 0.0} and m.channels == ("OT",) and m.freq == "1h"
    assert m.data.fingerprint == "f" * 64 and set(m.files) == {"forecast.onnx"}
    raw = json.loads((artifact.path / MANIFEST).read_text())  # format version 1 on disk, keys as before
    assert raw["rollout"] == {"kind": "window_shift", "context_length": 4, "step": 2, "max_horizon": 6}
    assert {"created_at", "versions", "metrics", "channels", "freq"} <= set(raw)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_kind": "lstm"}, "unknown model_kind 'lstm'"),
        ({"rollout": {"kind": "beam", "context_length": 4}}, "unknown rollout kind 'beam'"),
    ],
)
def test_unknown_kinds_are_refused_before_anything_is_written(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    written: list[Path] = []
    export = _export(write=written.append, **changes)
    with pytest.raises(ArtifactError, match=message):
        publish(tmp_path, "toy", export)
    assert written == [] and list(tmp_path.iterdir()) == []  # not even the model's folder


def test_a_manifest_that_would_not_read_back_is_never_published(tmp_path: Path) -> None:
    export = _export(rollout={"kind": "window_shift", "context_length": 4, "max_horizon": 6})
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing field 'rollout\.step'"):
        publish(tmp_path, "toy", export)
    assert list((tmp_path / "toy").iterdir()) == []


def test_a_failed_parity_gate_publishes_nothing(tmp_path: Path) -> None:
    def gate(staged: Artifact) -> Parity:
        assert staged.manifest.rollout.kind == "window_shift"  # the gate sees the typed, staged artifact
        raise RuntimeError("onnxruntime differs from torch")

    with pytest.raises(RuntimeError, match="differs"):
        publish(tmp_path, "toy", _export(parity=gate))
    assert list((tmp_path / "toy").iterdir()) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["rollout"].pop("step"), "missing field 'rollout.step'"),
        (lambda m: m.pop("created_at"), "missing field 'created_at'"),
        (lambda m: m["graphs"]["forecast"].pop("opset"), "missing field 'graphs.forecast.opset'"),
        (lambda m: m["rollout"].update(context_length="4"), "field 'rollout.context_length' is '4', not int"),
        (
            lambda m: m.update(normalization={"kind": "standard", "applied": "in_graph", "mean": [0.0]}),
            "'normalization.std'",
        ),
        (lambda m: m.update(format_version=2), "format_version 2 is not supported .*re-export"),
        (lambda m: m["rollout"].update(kind="sliding"), "unknown rollout kind 'sliding'"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_file_and_the_field(tmp_path: Path, edit: Any, message: str) -> None:
    folder = publish(tmp_path, "toy", _export()).path
    raw = json.loads((folder / MANIFEST).read_text())
    edit(raw)
    write_manifest(folder, raw)
    with pytest.raises(ArtifactError, match=message) as refused:
        read_artifact(folder)
    assert str(folder / MANIFEST) in str(refused.value)


def test_every_rollout_kind_has_one_runner_and_one_manifest_dataclass() -> None:
    assert set(RUNNERS) == {"window_shift", "kv_cache", "constrained_beam", "item_scores"}
    for kind, runner in RUNNERS.items():
        assert runner.rollout_kind == kind and runner.task in ("forecast", "recommend")
        assert runner.rollout_spec.__dataclass_fields__["kind"]  # a manifest dataclass with its kind
    assert RUNNERS["window_shift"] is WindowShiftModel
