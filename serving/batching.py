"""Dynamic batching: concurrent requests for one model merged into one onnxruntime run.

A job is one request's work (a block of series to forecast, a group of users to recommend for) with a size in
rows and a merge key. A worker thread takes the oldest waiting job, then adds waiting jobs with the same key
until the batch holds ``max_rows`` rows or ``max_wait_s`` has passed since the first arrived, runs them as one
call of ``run_batch`` and hands each job its own result. Jobs whose key differs (a recommendation with another
beam width) or that would overflow the batch wait, in arrival order, for a later batch. If a merged run fails,
every job in it is run again on its own, so one bad request never fails the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
J = TypeVar("J")  # one request's work
R = TypeVar("R")  # its result
_STOP = object()


@dataclass
class BatchingConfig:
    enabled: bool = True
    max_rows: int = 256  # series (or users) per merged run
    max_wait_s: float = 0.002  # how long the first request of a batch waits for company


@dataclass(frozen=True)
class BatchKind(Generic[J, R]):
    """How jobs of one kind are sized, matched and run together."""

    run_batch: Callable[[list[J]], list[R]]  # the jobs' results, in order, from one merged run
    rows: Callable[[J], int]
    key: Callable[[J], Hashable] = lambda job: None  # only jobs with equal keys are merged


class DynamicBatcher(Generic[J, R]):
    """Merges concurrent ``submit`` calls into batched calls of ``kind.run_batch``."""

    def __init__(
        self,
        kind: BatchKind[J, R],
        config: BatchingConfig,
        name: str = "",
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._kind, self._config, self._name = kind, config, name
        self._on_batch = on_batch or (lambda rows: None)
        self._queue: queue.SimpleQueue[tuple[J, Future[R]] | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: J) -> Future[R]:
        future: Future[R] = Future()
        self._queue.put((job, future))
        return future

    def close(self) -> None:
        """Finish the queued work, then stop the worker."""
        self._queue.put(_STOP)
        self._thread.join()

    def _loop(self) -> None:
        waiting: deque[tuple[J, Future[R]]] = deque()  # taken from the queue, not yet run
        stopping = False
        while True:
            if not waiting:
                if stopping:
                    return
                item = self._queue.get()
                if item is _STOP:
                    return
                waiting.append(item)  # type: ignore[arg-type]
            batch = [waiting.popleft()]
            key, rows = self._kind.key(batch[0][0]), self._kind.rows(batch[0][0])
            skipped: deque[tuple[J, Future[R]]] = deque()
            while waiting:  # earlier arrivals first
                entry = waiting.popleft()
                if self._fits(entry[0], key, rows):
                    batch.append(entry)
                    rows += self._kind.rows(entry[0])
                else:
                    skipped.append(entry)
            waiting = skipped
            deadline = time.monotonic() + self._config.max_wait_s
            while rows < self._config.max_rows and not stopping:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                entry = item  # type: ignore[assignment]
                if self._fits(entry[0], key, rows):
                    batch.append(entry)
                    rows += self._kind.rows(entry[0])
                    continue
                waiting.append(entry)
                if self._kind.key(entry[0]) == key:  # same kind but too big: this batch is as full as it gets
                    break
            self._run(batch)

    def _fits(self, job: J, key: Hashable, rows: int) -> bool:
        return self._kind.key(job) == key and rows + self._kind.rows(job) <= self._config.max_rows

    def _run(self, batch: list[tuple[J, Future[R]]]) -> None:
        live = [(job, future) for job, future in batch if future.set_running_or_notify_cancel()]  # drop timed-out
        if not live:
            return
        jobs = [job for job, _ in live]
        try:
            results = self._kind.run_batch(jobs)
            self._on_batch(sum(self._kind.rows(job) for job in jobs))
        except Exception as err:  # isolate the failure: rerun each job alone below
            if len(live) == 1:
                live[0][1].set_exception(err)
                return
            log.warning(
                "batched run failed; retrying its %d requests one by one", len(live), extra={"model": self._name}
            )
            for job, future in live:
                try:
                    (result,) = self._kind.run_batch([job])
                    future.set_result(result)
                    self._on_batch(self._kind.rows(job))
                except Exception as err:
                    future.set_exception(err)
            return
        for (_, future), result in zip(live, results, strict=True):
            future.set_result(result)
