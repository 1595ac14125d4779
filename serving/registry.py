"""The models a server has loaded from its store, kept current without a restart.

``refresh()`` scans the store: a new version (which appears atomically, see serving.artifact) is verified and
loaded beside the old one, then becomes the latest; a version that fails its checks is refused with one log
line (and retried once any of its files changes) and the rest keep serving. The newest ``keep_versions`` versions
of each model that load stay loaded: a broken new version never unloads a good one.
"""

from __future__ import annotations

import logging
import stat
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from serving.artifact import is_version_name, read_published
from serving.batching import BatchingConfig, BatchKind, DynamicBatcher, Pending, RunSlots, run_alone
from serving.manifest import Manifest
from serving.rpc import echo
from serving.runners import load_runner
from serving.runners.base import Runner
from serving.runners.forecast import ForecastJob
from serving.runners.recommender import RecommendJob, SearchResult, UserQuery
from serving.sessions import default_threads

log = logging.getLogger(__name__)
Signature = tuple[tuple[str, int, int], ...]
T = TypeVar("T")


class ModelNotFound(LookupError):
    pass


def _some(names: list[str], shown: int = 10) -> str:
    """A list of loaded names for a message, bounded however many models a store holds."""
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@dataclass
class LoadedModel:
    """One artifact version ready to serve: its rollout and (if on) its batcher."""

    runner: Runner
    kind: BatchKind[Any, Any]  # how its jobs (ForecastJob or RecommendJob, after the runner) run, alone or merged
    batcher: DynamicBatcher[Any, Any] | None
    on_rows: Callable[[int], None] = lambda rows: None  # batch-size metric for unbatched runs
    on_run: Callable[[list[float], float], None] = lambda waits, seconds: None  # stage metrics for unbatched runs
    slots: AbstractContextManager[object] = field(default_factory=nullcontext)  # the server's concurrent runs

    @property
    def manifest(self) -> Manifest:
        return self.runner.artifact.manifest

    @property
    def name(self) -> str:
        return self.runner.artifact.name

    @property
    def version(self) -> str:
        return self.runner.artifact.version

    def forecast(
        self,
        context: np.ndarray,
        horizon: int,
        timestamps: np.ndarray | None = None,
        deadline: float | None = None,
    ) -> Pending[np.ndarray]:
        return self._submit(ForecastJob(context, horizon, timestamps, deadline))

    def recommend(
        self,
        queries: list[UserQuery],
        k: int,
        beam_width: int,
        deadline: float | None = None,
        diversity: float = 0.0,
    ) -> Pending[SearchResult]:
        return self._submit(RecommendJob(queries, k, beam_width, deadline, diversity))

    def run_now(self, rows: int, run: Callable[[], T]) -> T:
        """``run()`` in this thread, not merged with other requests (for a request that needs more of the graph
        than a merged run returns), inside one of the server's run slots and counted like any run."""
        submitted = time.perf_counter()
        with self.slots:
            started = time.perf_counter()
            result = run()
        self.on_run([started - submitted], time.perf_counter() - started)
        self.on_rows(rows)
        return result

    def _submit(self, job: Any) -> Pending[Any]:
        if self.batcher is not None:
            return self.batcher.submit(job)
        return run_alone(self.kind, job, self.on_rows, self.on_run, time.perf_counter())

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


@dataclass
class ModelRegistry:
    store: Path
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    providers: Sequence[str] | None = None
    intra_op_threads: int | None = None
    keep_versions: int = 2
    # onnxruntime runs in flight at once, all models together: with the chunked runs, this bounds the memory the
    # server's work can take (0: twice the usable cores).
    max_concurrent_runs: int = 0
    on_batch: Callable[[str, int], None] | None = None
    on_load: Callable[[str], None] | None = None
    on_run: Callable[[str, list[float], float], None] | None = None  # task, each request's batch wait, run seconds
    _models: dict[str, dict[str, LoadedModel]] = field(default_factory=dict, init=False)
    _refused: dict[Path, Signature] = field(default_factory=dict, init=False)  # path -> its signature when refused
    _skipped: set[Path] = field(default_factory=set, init=False)  # folders not named as versions, warned about once
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _slots: RunSlots = field(init=False)

    def __post_init__(self) -> None:
        self._slots = RunSlots(self.max_concurrent_runs or 2 * default_threads())

    def label(self, name: str) -> str:
        """``name`` when such a model is loaded, else one fixed label: metrics never take a client's raw string."""
        return name if name in self._models else "(not loaded)"

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"model {echo(name)} is not loaded (loaded: {_some(sorted(self._models))})")
        if not version:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise ModelNotFound(
                f"model {name!r} has no loaded version {echo(version)} (loaded: {_some(sorted(versions, key=int))})"
            )
        return versions[version]

    def loaded(self) -> list[LoadedModel]:
        return [m for versions in self._models.values() for _, m in sorted(versions.items(), key=lambda kv: int(kv[0]))]

    def is_latest(self, model: LoadedModel) -> bool:
        return model.version == max(self._models.get(model.name, {"0": model}), key=int)

    def refresh(self) -> None:
        """Load new versions, drop versions beyond ``keep_versions``; safe to call from a timer thread."""
        with self._lock:
            updated = {name: dict(versions) for name, versions in self._models.items()}
            scanned: set[str] = set()
            retired: list[LoadedModel] = []
            if self.store.is_dir():
                for model_dir in sorted(p for p in self.store.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    scanned.add(model_dir.name)
                    current = updated.setdefault(model_dir.name, {})
                    try:
                        retired.extend(self._refresh_model(model_dir, current))
                    except Exception:  # one unreadable model folder stops no other; its loaded versions keep serving
                        log.exception("scan of %s failed", model_dir, extra={"path": str(model_dir)})
                    if not current:
                        del updated[model_dir.name]
            for name in set(updated) - scanned:
                retired.extend(updated.pop(name).values())
            self._models = updated  # one assignment: readers see the old or the new map, never a mix
        for model in retired:
            log.info("unloaded model", extra={"model": model.name, "version": model.version})
            model.close()

    def _refresh_model(self, model_dir: Path, current: dict[str, LoadedModel]) -> list[LoadedModel]:
        """Load a model's versions newest first until ``keep_versions`` are loaded; retire (return) the others.

        Only a version that loads takes a place, so a broken new version never pushes out a good one.
        """
        kept: set[str] = set()
        for path in reversed(self._version_dirs(model_dir)):
            if len(kept) == self.keep_versions:
                break
            if path.name not in current:
                signature = _signature(path)  # taken before loading: a file landing meanwhile makes it differ
                if self._refused.get(path) == signature:
                    continue
                model = self._load(path)
                if model is None:
                    self._refused[path] = signature
                    continue
                self._refused.pop(path, None)
                current[path.name] = model
            kept.add(path.name)
        return [current.pop(version) for version in list(current) if version not in kept]

    def _version_dirs(self, model_dir: Path) -> list[Path]:
        """A model's version folders, oldest first; any other folder is skipped with one warning (not one a poll)."""
        versions = []
        for path in model_dir.iterdir():
            if not path.is_dir() or path.name.startswith("."):  # plain files; staging folders
                continue
            if is_version_name(path.name):
                versions.append(path)
            elif path not in self._skipped:
                self._skipped.add(path)
                log.warning(
                    "skipped %s: a version folder is named 0 or digits 0-9 without a leading zero",
                    path,
                    extra={"path": str(path)},
                )
        return sorted(versions, key=lambda p: int(p.name))

    def _load(self, path: Path) -> LoadedModel | None:
        try:
            artifact = read_published(self.store, path)
            runner = load_runner(artifact, self.providers, self.intra_op_threads)
            runner.smoke_check()  # a graph that answers NaN is refused here, not found out by a caller
        except Exception as err:  # any failure refuses this artifact only
            log.error("refused artifact: %s", err, extra={"path": str(path)})
            if self.on_load:
                self.on_load("refused")
            return None
        name, report = artifact.name, self.on_batch

        def on_rows(rows: int) -> None:
            if report:
                report(name, rows)

        task, timings = runner.task, self.on_run

        def on_run(waits: list[float], seconds: float) -> None:
            if timings:
                timings(task, waits, seconds)

        kind = runner.batches(self._slots)
        batcher = None
        if self.batching.enabled:
            batcher = DynamicBatcher(
                kind, self.batching, name=f"{name}/{artifact.version}", on_batch=on_rows, on_run=on_run
            )
        log.info(
            "loaded model",
            extra={"model": name, "version": artifact.version, "providers": list(runner.describe().providers)},
        )
        if self.on_load:
            self.on_load("loaded")
        return LoadedModel(runner, kind, batcher, on_rows, on_run, self._slots)

    def close(self) -> None:
        with self._lock:
            models, self._models = self.loaded(), {}
        for model in models:
            model.close()


def _signature(folder: Path) -> Signature:
    """Every file's (relative path, size, mtime_ns): a refused version is retried once any of its files changes."""
    entries = []
    for path in sorted(folder.rglob("*")):
        try:
            info = path.stat()
        except OSError:  # gone since listed, or a dangling link: absent until it appears
            continue
        if stat.S_ISREG(info.st_mode):
            entries.append((path.relative_to(folder).as_posix(), info.st_size, info.st_mtime_ns))
    return tuple(entries)
