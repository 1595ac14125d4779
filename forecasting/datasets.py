"""Known benchmark datasets and where to find them.

The data directory is found by ``arcast_core.data_dir``. A known dataset missing from it is downloaded from its
public address and checked against its sha256 before it is used.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

from arcast_core.data_dir import DatasetNotFound, data_dir_candidates, find_data_dir
from arcast_core.files import atomic_write, git_blob_sha1, sha256_file

_ETT_URL = (
    "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/1d16c8f4f943005d613b5bc962e9eeb06058cf07/ETT-small/{}.csv"
)
_TSLIB_URL = (
    "https://raw.githubusercontent.com/junwoopark92/Self-Supervised-Contrastive-Forecsating/"
    "f394705adbf5217811276f5e59576c6e7ea7586c/dataset/{}"
)


@dataclass(frozen=True)
class DatasetSpec:
    """A published dataset: file, public address, checksum and the split protocol of the papers."""

    name: str
    relpath: str
    url: str
    sha256: str | None  # None: no sha256 pinned; then the git blob id is the check
    freq: str  # polars-style duration of one row: "1h", "15m", "1d", "1w"
    split: str  # "ett_hourly", "ett_minute" (12/4/4 months) or "ratio" (70/10/20)
    target: str = "OT"
    git_blob: str | None = None  # ``git hash-object`` of the file in the repository tree ``url`` pins

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None or self.git_blob is not None

    def matches(self, path: Path) -> bool:
        """Whether ``path`` is this dataset's published file, by its pinned checksum."""
        if self.sha256 is not None:
            return sha256_file(path) == self.sha256
        return self.git_blob is not None and git_blob_sha1(path) == self.git_blob


KNOWN_DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "ETTh1",
            "ETT/ETTh1.csv",
            _ETT_URL.format("ETTh1"),
            "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
            "1h",
            "ett_hourly",
        ),
        DatasetSpec(
            "ETTh2",
            "ETT/ETTh2.csv",
            _ETT_URL.format("ETTh2"),
            "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
            "1h",
            "ett_hourly",
        ),
        DatasetSpec(
            "ETTm1",
            "ETT/ETTm1.csv",
            _ETT_URL.format("ETTm1"),
            "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e",
            "15m",
            "ett_minute",
        ),
        # ETTm2: pinned by its git blob id in the ETDataset tree at the commit _ETT_URL names (read from that tree;
        # the same tree's ETTm1 and ETTh1 ids equal `git hash-object` of our shared copies, so the ids are right).
        DatasetSpec(
            "ETTm2",
            "ETT/ETTm2.csv",
            _ETT_URL.format("ETTm2"),
            None,
            "15m",
            "ett_minute",
            git_blob="f9d46027c987d442d2d8f81308d1d8c4d1d35db8",
        ),
        DatasetSpec(
            "exchange_rate",
            "exchange_rate/exchange_rate.csv",
            _TSLIB_URL.format("exchange_rate/exchange_rate.csv"),
            "d55e7aa2641009814a18ba3279431b13f6d413b0eab195b9ff21988d8cf94e97",
            "1d",
            "ratio",
        ),
        DatasetSpec(
            "national_illness",
            "illness/national_illness.csv",
            _TSLIB_URL.format("illness/national_illness.csv"),
            "8594cecb98c6f2f9dc014eca11c4d5d1e38ad5ce6ed0592d4abe65b146fce395",
            "1w",
            "ratio",
        ),
    )
}


def resolve_dataset(
    name_or_path: str, data_dir: str | Path | None = None, download: bool = True
) -> tuple[Path, DatasetSpec | None]:
    """The CSV file for a known dataset name (downloading it if allowed) or a path to any CSV.

    A path to a copy of a known dataset gets that dataset's spec (found by checksum), so it is cut by its
    published protocol rather than the generic ratio split.
    """
    spec = KNOWN_DATASETS.get(name_or_path)
    if spec is None:
        path = Path(name_or_path)
        if path.suffix.lower() == ".csv" and path.is_file():
            return path, known_by_checksum(path)
        known = ", ".join(KNOWN_DATASETS)
        raise DatasetNotFound(f"dataset {name_or_path!r} is neither a known dataset ({known}) nor an existing CSV file")
    candidates = data_dir_candidates(data_dir)
    for candidate in candidates:
        if (candidate / spec.relpath).is_file():
            return candidate / spec.relpath, spec
    if not download:
        raise DatasetNotFound(f"{spec.name} not found under {[str(c) for c in candidates]} and download is off")
    target = find_data_dir(data_dir) / spec.relpath
    download_dataset(spec, target)
    return target, spec


def known_by_checksum(path: Path) -> DatasetSpec | None:
    """The known dataset whose pinned checksum ``path`` has, if any."""
    by_sha = {spec.sha256: spec for spec in KNOWN_DATASETS.values() if spec.sha256}
    if (spec := by_sha.get(sha256_file(path))) is not None:
        return spec
    return next((s for s in KNOWN_DATASETS.values() if s.sha256 is None and s.matches(path)), None)


def download_dataset(spec: DatasetSpec, target: Path) -> None:
    """Fetch ``spec.url`` to ``target`` and keep it only if its checksum matches the pinned one."""
    if not spec.pinned:
        raise DatasetNotFound(
            f"{spec.name} is not present and has no pinned checksum, so it is not downloaded: fetch {spec.url} "
            f"yourself, check it, and place it at {target}"
        )

    def fetch(tmp: Path) -> None:
        with urllib.request.urlopen(spec.url, timeout=60) as response, open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        if not spec.matches(tmp):
            pinned = f"sha256 {spec.sha256}" if spec.sha256 else f"git blob {spec.git_blob}"
            raise DatasetNotFound(f"{spec.name} from {spec.url}: the file does not match its pinned {pinned}")

    atomic_write(target, fetch)
