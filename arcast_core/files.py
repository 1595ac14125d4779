"""Atomic writes, checksums and locks: a reader sees the old file or the new one, never half of one, and writers
that read, change and write a shared file take turns."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path, chunk: int = 1 << 20) -> str:
    """The id git gives the file's content (``git hash-object``): sha1 over ``blob <size>\\0`` and the bytes. It lets a
    file be checked against a repository's tree at a pinned commit when only that tree, not the file, is at hand."""
    digest = hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def binary_writer(write: Callable[[Any], None]) -> Callable[[Path], None]:
    """For ``atomic_write``: write through an open binary handle (numpy would otherwise append a suffix to a
    temporary file's name)."""

    def to_path(path: Path) -> None:
        with open(path, "wb") as handle:
            write(handle)

    return to_path


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing; its content is never read) for the ``with`` block:
    processes, and threads that open it on their own, wait for each other. Released when the block ends or the
    process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.chmod(_FILE_MODE)  # mkstemp makes it owner-only; give it the permissions of a normally created file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
