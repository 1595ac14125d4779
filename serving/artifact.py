"""The model artifact: the one contract between training and serving.

An artifact is a folder ``<store>/<name>/<version>/`` holding ``manifest.json``, the ONNX graphs and any
side tables. It is written into a hidden temporary folder beside its final place and renamed into place,
so a reader never sees half an artifact. This module imports neither torch nor grpc: training writes
artifacts with it (through ``serving.publish``) and serving reads them with it (``read_artifact``: checked paths and
checksums, the manifest typed by ``serving.manifest``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from arcast_core.files import atomic_write_text, sha256_file
from serving.manifest import ArtifactError, Manifest, parse_manifest

MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# A version folder is named by a non-negative integer in ASCII digits without a leading zero: one spelling per
# version, so str(int(name)) == name. str.isdigit() also accepts '²' (int() fails) and other scripts' digits.
_VERSION_RE = re.compile(r"0|[1-9][0-9]*")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_DIR_MODE = 0o777 & ~_umask()


@dataclass(frozen=True)
class Artifact:
    """A verified artifact on disk and its typed manifest."""

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def graph_path(self, role: str) -> Path:
        return self.path / self.manifest.graphs[role].file


def check_name(name: str, field: str = "name") -> str:
    if not _NAME_RE.match(name):
        raise ArtifactError(
            f"{field} {name!r} is not a valid model name: use letters, digits, '.', '_' or '-' (at most 128)"
        )
    return name


def is_version_name(name: str) -> bool:
    """Whether a folder named ``name`` is a version folder: ``0`` or ASCII digits without a leading zero."""
    return _VERSION_RE.fullmatch(name) is not None


def _versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and is_version_name(p.name))


def next_version(store: Path, name: str) -> str:
    versions = _versions(store / name)
    return str(versions[-1] + 1 if versions else 1)


@contextmanager
def staged_artifact(store: Path | str, name: str, version: str | None = None) -> Iterator[tuple[Path, str]]:
    """Yield a temporary folder to fill and the version it will get, then publish it atomically.

    If the body raises, the temporary folder is removed and nothing appears in the store. Versions are
    increasing integers. If the chosen version appears meanwhile (another export), publishing fails rather
    than renumbering an artifact whose manifest already names its version.
    """
    store = Path(store)
    check_name(name)
    model_dir = store / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    tmp.chmod(_DIR_MODE)  # mkdtemp makes it owner-only; a server may run as another user
    try:
        chosen = version or next_version(store, name)
        if not is_version_name(chosen):  # a server would skip the folder, never serve it
            raise ArtifactError(f"version {chosen!r} is not a version: use 0 or digits 0-9 without a leading zero")
        yield tmp, chosen
        _fsync_tree(tmp)
        target = model_dir / chosen
        if target.exists():
            raise ArtifactError(f"{target} already exists: versions are never overwritten")
        os.rename(tmp, target)  # atomic on one filesystem
        _fsync_dir(model_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def with_files(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with the sha256 and size of every file in ``folder`` (once they are all written)."""
    files = {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    return {**manifest, "files": files}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the checksums of every file in ``folder`` and write ``manifest.json`` as given (call last).

    Publishing goes through ``serving.publish``, which validates the manifest first; this is its last step.
    """
    full = with_files(folder, manifest)
    dump_manifest(folder, full)
    return full


def dump_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` (files listed) as the folder's ``manifest.json``."""
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))


def read_artifact(path: Path | str, verify: bool = True) -> Artifact:
    """Read and check an artifact folder: schema, graph references and (if ``verify``) every checksum."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST}")
    try:
        raw = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{manifest_path}: unreadable manifest ({err})") from err
    manifest = parse_manifest(raw, str(manifest_path))
    check_files(manifest_path, manifest)
    if verify:
        for rel, meta in manifest.files.items():
            file = path / rel
            if not file.is_file():
                raise ArtifactError(f"{path}: file {rel} listed in the manifest is missing")
            actual = sha256_file(file)
            if actual != meta.sha256:
                raise ArtifactError(
                    f"{path}: checksum mismatch for {rel} (manifest {meta.sha256[:12]}…, file {actual[:12]}…)"
                )
        extra = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != MANIFEST} - set(
            manifest.files
        )
        if extra:
            raise ArtifactError(f"{path}: files not in the manifest: {sorted(extra)}")
    return Artifact(path=path, manifest=manifest)


def read_published(store: Path | str, path: Path | str) -> Artifact:
    """Read a version folder of ``store`` as a server must: it lies in the store and sits where its manifest says."""
    store, path = Path(store), Path(path)
    if not path.resolve().is_relative_to(store.resolve()):
        raise ArtifactError(
            f"{path}: resolves to {path.resolve()}, outside the store {store.resolve()} (a symlinked folder): "
            "only what is published into the store is served"
        )
    artifact = read_artifact(path)
    if (path.parent.name, path.name) != (artifact.name, artifact.version):
        raise ArtifactError(
            f"{path}: the folder says {path.parent.name}/{path.name} but the manifest says "
            f"{artifact.name}/{artifact.version}: a copied or renamed version is not served under either label"
        )
    return artifact


def check_files(manifest_path: Path, manifest: Manifest) -> None:
    """Every listed file and graph stays inside the artifact folder, and every graph's file is listed."""
    for role, graph in manifest.graphs.items():
        _check_inside(manifest_path, f"graph {role!r} file", graph.file)
    for rel in manifest.files:
        _check_inside(manifest_path, "file", rel)
    for role, graph in manifest.graphs.items():
        if graph.file not in manifest.files:
            raise ArtifactError(f"{manifest_path}: graph {role!r} names file {graph.file!r} not in files")


def _check_inside(manifest_path: Path, entry: str, rel: Any) -> None:
    """Refuse a manifest path that reaches out of the artifact folder: an artifact must not serve another's files."""
    folder = manifest_path.parent
    if not isinstance(rel, str) or not rel:
        why = "is not a path"
    elif PurePosixPath(rel).is_absolute():
        why = "is absolute"
    elif ".." in PurePosixPath(rel).parts:
        why = "has a '..' component"
    elif not (folder / rel).resolve().is_relative_to(folder.resolve()):
        why = f"resolves to {(folder / rel).resolve()} (through a symlink)"
    else:
        return
    raise ArtifactError(f"{manifest_path}: {entry} {rel!r} {why}: paths must stay inside the artifact folder")


def list_artifacts(store: Path | str) -> Iterator[Path]:
    """Every published ``name/version`` folder in a store (staging folders are skipped)."""
    store = Path(store)
    if not store.is_dir():
        return
    for model_dir in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version in _versions(model_dir):
            yield model_dir / str(version)


def resolve(store: Path | str, name: str, version: str | None = None) -> Path:
    """The folder of ``name`` at ``version`` (latest when None); ArtifactError when absent."""
    model_dir = Path(store) / check_name(name)
    versions = _versions(model_dir)
    if not versions:
        raise ArtifactError(f"no model named {name!r} in store {store}")
    if version is None:
        return model_dir / str(versions[-1])
    if not is_version_name(version) or int(version) not in versions:
        raise ArtifactError(f"model {name!r} has no version {version!r} (has {versions})")
    return model_dir / version


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)
