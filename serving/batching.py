"""Dynamic batching: concurrent requests for one model merged into one onnxruntime rollout.

Each request is a block of rows (series) with a horizon. A worker thread takes the first waiting request,
then keeps adding requests until the batch holds ``max_rows`` rows or ``max_wait_s`` has passed since the
first arrived, runs the rollout once at the largest horizon, and hands each request its own rows back.
A request that would overflow the batch waits for the next one. If a merged run fails, every request in it
is run again on its own, so one bad request never fails the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)
RolloutFn = Callable[[np.ndarray, int, np.ndarray | None], np.ndarray]
_STOP = object()


@dataclass
class BatchingConfig:
    enabled: bool = True
    max_rows: int = 256  # series per merged run
    max_wait_s: float = 0.002  # how long the first request of a batch waits for company


@dataclass
class _Job:
    context: np.ndarray  # (rows, L, C)
    horizon: int
    timestamps: np.ndarray | None  # (rows, L) for models with calendar features
    future: Future[np.ndarray] = field(default_factory=Future)


class DynamicBatcher:
    """Merges concurrent ``submit`` calls into batched calls of ``rollout(context, horizon)``."""

    def __init__(
        self, rollout: RolloutFn, config: BatchingConfig, name: str = "", on_batch: Callable[[int], None] | None = None
    ) -> None:
        self._rollout, self._config, self._name = rollout, config, name
        self._on_batch = on_batch or (lambda rows: None)
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, context: np.ndarray, horizon: int, timestamps: np.ndarray | None = None) -> Future[np.ndarray]:
        job = _Job(context, horizon, timestamps)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Finish the queued work, then stop the worker."""
        self._queue.put(_STOP)
        self._thread.join()

    def _loop(self) -> None:
        held: _Job | None = None
        while True:
            first = held or self._queue.get()
            held = None
            if first is _STOP:
                return
            assert isinstance(first, _Job)
            batch, rows = [first], len(first.context)
            deadline = time.monotonic() + self._config.max_wait_s
            stop = False
            while rows < self._config.max_rows:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, _Job)
                if rows + len(item.context) > self._config.max_rows:
                    held = item
                    break
                batch.append(item)
                rows += len(item.context)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]  # drop timed-out requests
        if not live:
            return
        try:
            merged = np.concatenate([job.context for job in live]) if len(live) > 1 else live[0].context
            stamps = None if live[0].timestamps is None else np.concatenate([job.timestamps for job in live])
            out = self._rollout(merged, max(job.horizon for job in live), stamps)
            self._on_batch(len(merged))
        except Exception as err:  # isolate the failure: rerun each request alone below
            if len(live) == 1:
                live[0].future.set_exception(err)
                return
            log.warning(
                "batched run failed; retrying its %d requests one by one", len(live), extra={"model": self._name}
            )
            for job in live:
                try:
                    job.future.set_result(self._rollout(job.context, job.horizon, job.timestamps))
                    self._on_batch(len(job.context))
                except Exception as err:
                    job.future.set_exception(err)
            return
        start = 0
        for job in live:
            job.future.set_result(out[start : start + len(job.context), : job.horizon])
            start += len(job.context)
