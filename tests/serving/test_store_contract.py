"""The artifact contract and the store scanner: what a server refuses or skips, and that nothing stops its reloading."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from arcast_core.files import sha256_file
from serving.artifact import (
    MANIFEST,
    ArtifactError,
    list_artifacts,
    next_version,
    read_artifact,
    resolve,
    staged_artifact,
    write_manifest,
)
from serving.batching import BatchingConfig
from serving.client import ArcastClient
from serving.registry import ModelRegistry
from tests.serving.conftest import start_server

MODEL = "etth1-arnet"
GRAPH = "forecast.onnx"


def publish_copy(source: Path, target: Path, name: str, version: str) -> Path:
    """The session's AR-Net copied to ``target``, its manifest saying ``name``/``version`` with checksums recomputed:
    a valid artifact wherever the folder names agree, unless the caller breaks it."""
    shutil.copytree(source / MODEL / "1", target)
    manifest = json.loads((target / MANIFEST).read_text())
    write_manifest(target, {**manifest, "name": name, "version": version})
    return target


@pytest.fixture
def store(model_store: Path, tmp_path: Path) -> Path:
    """A store of our own holding the session's AR-Net as version 1."""
    root = tmp_path / "store"
    publish_copy(model_store, root / MODEL / "1", MODEL, "1")
    return root


@pytest.fixture
def outcomes() -> list[str]:
    return []


@pytest.fixture
def registry(store: Path, outcomes: list[str]) -> Iterator[ModelRegistry]:
    reg = ModelRegistry(store, BatchingConfig(enabled=False), intra_op_threads=1, on_load=outcomes.append)
    yield reg
    reg.close()


def served(registry: ModelRegistry) -> list[tuple[str, str]]:
    return [(m.name, m.version) for m in registry.loaded()]


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "serving.registry" and r.levelno >= logging.ERROR]


def _dotdot_file(version: Path, manifest: dict, outside: Path) -> str:
    beside = version.parent / "beside.bin"  # in the store, but not in the version folder
    beside.write_bytes(b"not part of this artifact")
    manifest["files"]["../beside.bin"] = {"sha256": sha256_file(beside), "bytes": beside.stat().st_size}
    return "../beside.bin"


def _absolute_file(version: Path, manifest: dict, outside: Path) -> str:
    target = outside / "absolute.bin"
    target.write_bytes(b"not part of this artifact")
    manifest["files"][str(target)] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
    return str(target)


def _dotdot_graph(version: Path, manifest: dict, outside: Path) -> str:
    shutil.move(version / GRAPH, outside / GRAPH)
    rel = f"../../../{outside.name}/{GRAPH}"  # store/MODEL/1/../../.. is the folder holding store and outside
    manifest["files"][rel] = manifest["files"].pop(GRAPH)
    manifest["graphs"]["forecast"]["file"] = rel
    return rel


def _symlink_out(version: Path, manifest: dict, outside: Path) -> str:
    shutil.move(version / GRAPH, outside / GRAPH)
    (version / GRAPH).symlink_to(outside / GRAPH)  # same bytes, same checksum: only the link's target is wrong
    return GRAPH


@pytest.mark.parametrize("escape", [_dotdot_file, _absolute_file, _dotdot_graph, _symlink_out])
def test_manifest_paths_stay_inside_the_version_folder(
    store: Path,
    registry: ModelRegistry,
    tmp_path: Path,
    escape: Callable[[Path, dict, Path], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    version, outside = store / MODEL / "1", tmp_path / "outside"
    outside.mkdir()
    manifest_path = version / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    entry = escape(version, manifest, outside)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as refused:
        read_artifact(version)
    assert str(manifest_path) in str(refused.value) and repr(entry) in str(refused.value)
    registry.refresh()
    assert served(registry) == []
    assert any(repr(entry) in message for message in refusals(caplog))


@pytest.mark.parametrize("linked", ["version folder", "model folder"])
def test_symlinked_folders_leading_out_of_the_store_are_refused(
    model_store: Path,
    store: Path,
    registry: ModelRegistry,
    tmp_path: Path,
    linked: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outside = tmp_path / "outside"
    if linked == "version folder":
        (store / MODEL / "2").symlink_to(
            publish_copy(model_store, outside / MODEL / "2", MODEL, "2"), target_is_directory=True
        )
    else:
        publish_copy(model_store, outside / "linked" / "1", "linked", "1")
        (store / "linked").symlink_to(outside / "linked", target_is_directory=True)
    registry.refresh()
    assert served(registry) == [(MODEL, "1")]
    assert any("outside the store" in message for message in refusals(caplog))


@pytest.mark.parametrize(
    ("name", "version", "folder_name", "folder_version"), [(MODEL, "3", MODEL, "5"), (MODEL, "1", "copied", "1")]
)
def test_folder_and_manifest_must_agree(
    model_store: Path,
    store: Path,
    registry: ModelRegistry,
    name: str,
    version: str,
    folder_name: str,
    folder_version: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish_copy(model_store, store / folder_name / folder_version, name, version)  # e.g. a version copied by hand
    registry.refresh()
    assert served(registry) == [(MODEL, "1")]
    assert any(f"{folder_name}/{folder_version}" in m and f"{name}/{version}" in m for m in refusals(caplog))


def test_a_version_whose_graph_arrives_after_its_manifest_is_retried(
    model_store: Path, store: Path, registry: ModelRegistry, tmp_path: Path, outcomes: list[str]
) -> None:
    complete = publish_copy(model_store, tmp_path / "elsewhere" / MODEL / "2", MODEL, "2")
    target = store / MODEL / "2"  # a publisher that writes in place, manifest first
    target.mkdir()
    shutil.copy(complete / MANIFEST, target / MANIFEST)
    registry.refresh()
    registry.refresh()
    assert served(registry) == [(MODEL, "1")]
    assert outcomes.count("refused") == 1  # an unchanged broken folder is refused once, not every poll
    for file in complete.iterdir():  # the graph, and the calibration table beside it
        if file.name != MANIFEST:
            shutil.copy(file, target / file.name)
    registry.refresh()
    assert served(registry) == [(MODEL, "1"), (MODEL, "2")]


ODD_NAMES = ["²", "٢", "02", "v3"]  # superscript two, Arabic-Indic two (both str.isdigit()), a leading zero, a word


def test_folders_not_named_as_versions_are_skipped(
    model_store: Path, store: Path, registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    for odd in ODD_NAMES:
        publish_copy(model_store, store / MODEL / odd, MODEL, "2")
    registry.refresh()
    registry.refresh()
    assert served(registry) == [(MODEL, "1")]
    warnings = [r.getMessage() for r in caplog.records if r.name == "serving.registry" and r.levelno == logging.WARNING]
    for odd in ODD_NAMES:  # once per folder, naming it, however many polls
        assert sum(str(store / MODEL / odd) in message for message in warnings) == 1, warnings
    assert next_version(store, MODEL) == "2"
    assert resolve(store, MODEL) == store / MODEL / "1"
    assert list(list_artifacts(store)) == [store / MODEL / "1"]
    for odd in ODD_NAMES:
        with pytest.raises(ArtifactError, match="has no version"):
            resolve(store, MODEL, odd)
    server = start_server(store)  # a restart on this store starts and serves
    try:
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            assert [m.version for m in client.list_models()] == ["1"]
    finally:
        server.stop(grace_s=1)


def test_a_broken_new_version_retires_no_good_one(model_store: Path, store: Path, histories: np.ndarray) -> None:
    publish_copy(model_store, store / MODEL / "2", MODEL, "2")
    server = start_server(store, keep_versions=2, poll_interval_s=3600)  # refreshed by hand below
    try:
        with staged_artifact(store, MODEL) as (folder, version):
            shutil.copytree(store / MODEL / "2", folder, dirs_exist_ok=True)
            write_manifest(folder, {**json.loads((folder / MANIFEST).read_text()), "version": version})
            with open(folder / GRAPH, "r+b") as handle:  # corrupted after its checksum was taken
                handle.seek(100)
                handle.write(b"\x00\x01\x02\x03")
        assert version == "3"
        server.registry.refresh()
        assert served(server.registry) == [(MODEL, "1"), (MODEL, "2")]
        with ArcastClient(f"127.0.0.1:{server.port}") as client:
            assert client.forecast(MODEL, [histories[0]], 12, version="1").version == "1"
            assert client.forecast(MODEL, [histories[0]], 12).version == "2"
    finally:
        server.stop(grace_s=1)


def test_an_unreadable_model_folder_stops_no_other(
    model_store: Path,
    store: Path,
    registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = publish_copy(model_store, store / "a-model" / "1", "a-model", "1").parent  # scanned before MODEL
    registry.refresh()
    assert served(registry) == [("a-model", "1"), (MODEL, "1")]
    real_iterdir = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if self == broken:  # tests run as root, who reads any folder: the permission error is injected
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    publish_copy(model_store, store / MODEL / "2", MODEL, "2")
    registry.refresh()
    assert served(registry) == [("a-model", "1"), (MODEL, "1"), (MODEL, "2")]  # its loaded versions keep serving
    assert any(str(broken) in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
