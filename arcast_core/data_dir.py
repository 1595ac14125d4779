"""Where the datasets live: an explicit ``--data-dir``, else ``ARCAST_DATA_DIR``, else the first default that exists."""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA_DIR = "ARCAST_DATA_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIRS = (Path("../shared/data"), _REPO_ROOT.parent / "shared" / "data", Path.home() / ".cache/arcast/data")


class DatasetNotFound(FileNotFoundError):
    pass


def data_dir_candidates(explicit: str | Path | None = None) -> list[Path]:
    if explicit is not None:
        return [Path(explicit)]
    if os.environ.get(ENV_DATA_DIR):
        return [Path(os.environ[ENV_DATA_DIR])]
    return list(DEFAULT_DATA_DIRS)


def find_data_dir(explicit: str | Path | None = None) -> Path:
    """The data directory by the rules above; the first default that exists wins.

    An explicit path or environment value that does not exist is an error, not a silent fallback, so a typo
    never evaluates on other data.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DatasetNotFound(f"data directory {path} (given explicitly) does not exist")
        return path.resolve()
    if os.environ.get(ENV_DATA_DIR):
        path = Path(os.environ[ENV_DATA_DIR]).expanduser()
        if not path.is_dir():
            raise DatasetNotFound(f"data directory {path} (from ${ENV_DATA_DIR}) does not exist")
        return path.resolve()
    for candidate in DEFAULT_DATA_DIRS:
        if candidate.is_dir():
            return candidate.resolve()
    return DEFAULT_DATA_DIRS[-1]  # the user cache: downloads land there
