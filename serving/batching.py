"""Dynamic batching: concurrent requests for one model merged into one onnxruntime run.

A job is one request's work (a block of series to forecast, a group of users to recommend for) with a size in
rows and a merge key. A batch starts from the oldest waiting job and takes the waiting jobs with the same key, in
arrival order, until it holds ``max_rows`` rows or ``max_wait_s`` has passed since it started; it runs as one call
of ``run_batch`` and each job gets its own result. Jobs whose key differs (a recommendation with another beam
width) or that would overflow the batch wait for a later one. If a merged run fails, every job in it is run again
on its own, so one bad request never fails the others.

Who runs the batches: a request that arrives while none is running runs them itself, in its own thread, until its
own result is ready, and then hands what still waits to a worker thread. A lone request therefore pays no thread
hand-off (two context switches, which cost milliseconds on a busy CPU), and under load the batches form while the
previous one runs. With ``max_wait_s`` 0 a request that finds nothing running or waiting skips the queue altogether:
it runs its job at once (``run_alone``, as an unbatched server does) and gets a ``Settled`` answer instead of a
``Future``; the queue, its condition and the future cost more than a small model's run (bench/results).

Bounds: at most ``max_queued_rows`` rows wait per model; a request that would exceed it is refused at once
(``QueueFull``, answered RESOURCE_EXHAUSTED) instead of queueing without end. A run may answer one job with an
exception of its own (e.g. ``DeadlineExceeded`` when its deadline passed between two chunks of a long run): that job
fails alone.
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
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)
J = TypeVar("J")  # one request's work
R = TypeVar("R")  # its result
R_co = TypeVar("R_co", covariant=True)


class QueueFull(Exception):
    """A model's queue holds as many rows as it may: the request is refused, not queued."""


class DeadlineExceeded(TimeoutError):
    """A job's deadline passed before its run finished: the rest of its work was dropped."""


class Pending(Protocol[R_co]):
    """What a submitted job answers: a ``Future`` when it queued, a ``Settled`` when it ran at once."""

    def result(self, timeout: float | None = None) -> R_co: ...

    def cancel(self) -> bool: ...


class Settled(Generic[R]):
    """The answer of a job its own thread already ran: a result or an exception, no lock, no condition."""

    __slots__ = ("_outcome",)

    def __init__(self, outcome: R | BaseException) -> None:
        self._outcome = outcome

    def result(self, timeout: float | None = None) -> R:
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def cancel(self) -> bool:
        return False  # already run


def run_alone(
    kind: BatchKind[J, R],
    job: J,
    on_batch: Callable[[int], None],
    on_run: Callable[[list[float], float], None],
    submitted: float,
) -> Settled[R]:
    """Run one job in this thread, as a batch of its own; ``submitted``: its ``time.perf_counter`` at submit."""
    started = time.perf_counter()
    try:
        (result,) = kind.run_batch([job])
    except Exception as err:  # answered through the Settled, as a Future would
        return Settled(err)
    on_run([started - submitted], time.perf_counter() - started)
    on_batch(kind.rows(job))
    return Settled(result)


@dataclass
class BatchingConfig:
    enabled: bool = True
    max_rows: int = 256  # series (or users) per merged run
    # How long the first request of a batch waits for company. 0: batches still form under load, from the
    # requests that arrive while one runs, and a lone request pays nothing (bench/results/serve_forecast.json).
    max_wait_s: float = 0.0
    max_queued_rows: int = 4096  # rows waiting per model before new requests are refused (admission control)


@dataclass(frozen=True)
class BatchKind(Generic[J, R]):
    """How jobs of one kind are sized, matched and run together."""

    # The jobs' results, in order, from one merged run; an exception in a job's place fails that job alone.
    run_batch: Callable[[list[J]], list[R | BaseException]]
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
        on_run: Callable[[list[float], float], None] | None = None,
    ) -> None:
        self._kind, self._config, self._name = kind, config, name
        self._on_batch = on_batch or (lambda rows: None)
        # After each run: how long each of its requests waited (submit to run start), and the run's seconds.
        self._on_run = on_run or (lambda waits, seconds: None)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a job was queued: a forming batch may take it
        self._handoff = threading.Condition(self._lock)  # nobody is running batches any more, or closing
        self._waiting: deque[tuple[J, Future[R], float]] = deque()  # job, its future, when it was submitted
        self._queued_rows = 0
        self._running = False  # some thread is running batches
        self._closed = False
        # Without a wait for company, a job that finds nothing running or waiting runs at once (see the docstring).
        self._inline = config.max_wait_s <= 0
        self._worker = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    def submit(self, job: J) -> Pending[R]:
        submitted = time.perf_counter()
        if self._inline:
            with self._lock:
                idle = not (self._running or self._waiting)
                if idle:
                    self._running = True  # this thread runs, so requests arriving meanwhile queue behind it
            if idle:  # nothing runs or waits: run it now, in this thread (the same run a batch of one would be)
                try:
                    return run_alone(self._kind, job, self._on_batch, self._on_run, submitted)
                finally:
                    self._release()
        entry: tuple[J, Future[R], float] = (job, Future(), submitted)
        rows = self._kind.rows(job)
        with self._lock:
            if self._closed:  # a request that raced a model's retirement: run it alone
                lead = None
            elif self._waiting and self._queued_rows + rows > self._config.max_queued_rows:
                entry[1].set_exception(
                    QueueFull(
                        f"model {self._name}: {self._queued_rows} rows already wait and this request adds {rows}; "
                        f"the queue holds at most {self._config.max_queued_rows} (--max-queued-rows)"
                    )
                )
                return entry[1]
            else:
                self._queued_rows += rows
                self._waiting.append(entry)
                self._arrived.notify()
                lead = not self._running
                self._running = True
        if lead is None:
            self._run([entry])
        elif lead:
            self._serve(until=entry[1])
        return entry[1]

    def close(self) -> None:
        """Finish the queued work, then stop the worker."""
        with self._lock:
            self._closed = True
            self._handoff.notify_all()
        self._worker.join()

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running or not (self._waiting or self._closed):
                    self._handoff.wait()
                if not self._waiting:  # closed and drained
                    return
                self._running = True
            self._serve(until=None)

    def _serve(self, until: Future[R] | None) -> None:
        """Run batches until ``until`` is done (None: until nothing waits), then let the worker take the rest."""
        try:
            while True:
                batch = self._collect()
                if batch:
                    self._run(batch)
                with self._lock:
                    if not self._waiting or (until is not None and until.done()):
                        return
        finally:
            self._release()

    def _release(self) -> None:
        """This thread stops running batches: the worker takes over what waits (and a close)."""
        with self._lock:
            self._running = False
            if self._waiting or self._closed:  # wake the worker only when it has something to do
                self._handoff.notify()

    def _collect(self) -> list[tuple[J, Future[R], float]]:
        """The next batch: the oldest waiting job and the waiting (or soon arriving) jobs that fit with it."""
        with self._lock:
            if not self._waiting:
                return []
            batch = [self._waiting.popleft()]
            key, rows = self._kind.key(batch[0][0]), self._kind.rows(batch[0][0])
            self._queued_rows -= rows
            deadline = time.monotonic() + self._config.max_wait_s
            while True:
                full, kept = False, deque()
                for entry in self._waiting:  # in arrival order
                    if not full and self._fits(entry[0], key, rows):
                        batch.append(entry)
                        rows += self._kind.rows(entry[0])
                        self._queued_rows -= self._kind.rows(entry[0])
                    else:
                        kept.append(entry)
                        full = full or self._kind.key(entry[0]) == key  # same kind but too big: as full as it gets
                self._waiting = kept
                remaining = deadline - time.monotonic()
                if full or rows >= self._config.max_rows or remaining <= 0 or self._closed:
                    return batch
                self._arrived.wait(remaining)

    def _fits(self, job: J, key: Hashable, rows: int) -> bool:
        return self._kind.key(job) == key and rows + self._kind.rows(job) <= self._config.max_rows

    def _run(self, batch: list[tuple[J, Future[R], float]]) -> None:
        started = time.perf_counter()
        live = [(job, future) for job, future, _ in batch if future.set_running_or_notify_cancel()]  # drop timed-out
        if not live:
            return
        jobs = [job for job, _ in live]
        try:
            results = self._kind.run_batch(jobs)
            self._on_batch(sum(self._kind.rows(job) for job in jobs))
            self._on_run([started - submitted for _, future, submitted in batch if future.running()], _since(started))
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
                    settle(future, result)
                    self._on_batch(self._kind.rows(job))
                except Exception as err:
                    future.set_exception(err)
            return
        for (_, future), result in zip(live, results, strict=True):
            settle(future, result)


def _since(started: float) -> float:
    return time.perf_counter() - started


def settle(future: Future[R], result: R | BaseException) -> None:
    """Answer a job's future with its result, or with the exception a run put in its place."""
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


@dataclass(frozen=True)
class Piece(Generic[J]):
    """Rows ``rows`` of the job at position ``index`` of a batch: what one chunk of a long run takes of it."""

    job: J
    index: int
    rows: slice


def run_in_chunks(
    jobs: list[J],
    rows: Callable[[J], int],
    chunk_rows: int,
    deadline: Callable[[J], float | None],
    run_chunk: Callable[[list[Piece[J]]], list[Any]],
    join: Callable[[list[Any]], R],
) -> list[R | BaseException]:
    """Run a batch's rows at most ``chunk_rows`` at a time, so that its peak memory is one chunk's, whatever the
    requests ask; before each chunk, the rows of jobs whose deadline (``time.monotonic``) has passed are dropped
    and those jobs get ``DeadlineExceeded``. ``run_chunk`` answers one part per piece; ``join`` puts a job's parts
    back together."""
    sizes = [rows(job) for job in jobs]
    now = time.monotonic()
    if sum(sizes) <= chunk_rows and all((until := deadline(job)) is None or now <= until for job in jobs):
        whole = [Piece(job, i, slice(0, size)) for i, (job, size) in enumerate(zip(jobs, sizes, strict=True))]
        return [join([part]) for part in run_chunk(whole)]  # one run, the usual case: no bookkeeping
    parts: list[list[Any]] = [[] for _ in jobs]
    failed: dict[int, BaseException] = {}
    chunk: list[Piece[J]] = []

    def flush() -> None:
        now = time.monotonic()
        live = []
        for piece in chunk:
            until = deadline(piece.job)
            if piece.index not in failed and until is not None and now > until:
                failed[piece.index] = DeadlineExceeded(f"deadline passed after {len(parts[piece.index])} chunks")
            if piece.index not in failed:
                live.append(piece)
        if live:
            for piece, part in zip(live, run_chunk(live), strict=True):
                parts[piece.index].append(part)
        chunk.clear()

    filled = 0
    for index, job in enumerate(jobs):
        total, start = sizes[index], 0
        while start < total:
            take = min(total - start, chunk_rows - filled)
            chunk.append(Piece(job, index, slice(start, start + take)))
            filled, start = filled + take, start + take
            if filled >= chunk_rows:
                flush()
                filled = 0
    if chunk:
        flush()
    return [failed[i] if i in failed else join(parts[i]) for i in range(len(jobs))]


class RunSlots:
    """At most ``count`` runs at once, all models together: ``with slots: ...`` waits for a free one.

    A queue of tokens rather than ``threading.Semaphore``: its get and put are C calls, and this is on every run.
    """

    def __init__(self, count: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(count):
            self._tokens.put(None)

    def __enter__(self) -> None:
        self._tokens.get()

    def __exit__(self, *exc: object) -> None:
        self._tokens.put(None)
