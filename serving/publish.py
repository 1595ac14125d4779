"""The one way an artifact is published: the exporter supplies its graphs, tables and parity gate; this adds the
common envelope, validates the manifest as a server will read it, runs the gate and renames the version into place.

An unknown model or rollout kind is refused before anything is written; a manifest that would not read back (a
missing field, a wrong type) or a failed parity gate leaves nothing in the store. No torch here: exporters call it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.artifact import (
    MANIFEST,
    Artifact,
    check_files,
    check_name,
    dump_manifest,
    read_artifact,
    staged_artifact,
    with_files,
)
from serving.manifest import FORMAT_VERSION, check_kinds, parse_manifest


@dataclass(frozen=True)
class Parity:
    """What a parity gate measured: ``summary`` is the manifest's ``parity``, ``details`` its ``parity_details``."""

    summary: dict[str, Any]
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class Export:
    """What an exporter supplies; ``publish`` adds format version, name, version and creation time."""

    model_kind: str
    rollout: dict[str, Any]  # the rollout kind's facts, ``kind`` included (its dataclass: serving/runners/)
    graphs: dict[str, dict[str, Any]]  # role -> file, opset, inputs and outputs
    write: Callable[[Path], None]  # writes the graphs and side tables into the staging folder
    parity: Callable[[Artifact], Parity]  # the gate, run on the staged artifact: raises to refuse the export
    data: dict[str, Any]  # what rebuilds the training data, and its "fingerprint"
    metrics: dict[str, Any]
    versions: dict[str, str]  # library versions
    facts: dict[str, Any] = field(default_factory=dict)  # channels, freq, normalization, configs, side tables...
    # Run on the staged artifact once parity passes: writes side files (conformal calibration) into the folder and
    # returns the manifest's ``calibration`` entry.
    calibrate: Callable[[Artifact, Path], dict[str, Any]] | None = None


def publish(store: Path | str, name: str, export: Export, version: str | None = None) -> Artifact:
    """Write ``export`` as ``store/name/<version>`` (next free version when None) atomically, once parity passes."""
    check_name(name)
    check_kinds(export.model_kind, export.rollout.get("kind"), f"export of {name!r}")
    with staged_artifact(store, name, version) as (folder, chosen):
        export.write(folder)
        manifest = with_files(
            folder,
            _jsonable(
                {
                    **export.facts,
                    "format_version": FORMAT_VERSION,
                    "name": name,
                    "version": chosen,
                    "model_kind": export.model_kind,
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "rollout": export.rollout,
                    "graphs": export.graphs,
                    "data": export.data,
                    "metrics": export.metrics,
                    "versions": export.versions,
                    "parity": {},
                }
            ),
        )
        where = folder / MANIFEST
        staged = Artifact(folder, parse_manifest(manifest, str(where)))  # as a server will read it, or refused
        check_files(where, staged.manifest)
        parity = export.parity(staged)
        manifest["parity"] = _jsonable(parity.summary)
        if parity.details is not None:
            manifest["parity_details"] = _jsonable(parity.details)
        if export.calibrate is not None:
            manifest = with_files(folder, {**manifest, "calibration": _jsonable(export.calibrate(staged, folder))})
        dump_manifest(folder, manifest)
    return read_artifact(Path(store) / name / chosen)


def _jsonable(tree: dict[str, Any]) -> dict[str, Any]:
    """The manifest as JSON will hold it: numpy scalars as Python numbers, tuples as lists."""

    def convert(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    return json.loads(json.dumps(tree, default=convert))
