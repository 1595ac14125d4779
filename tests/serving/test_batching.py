"""The dynamic batcher on its own: which jobs it merges, in what order, and how it isolates a failing one."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from serving.batching import (
    BatchingConfig,
    BatchKind,
    DeadlineExceeded,
    DynamicBatcher,
    Piece,
    QueueFull,
    run_in_chunks,
)


@dataclass(frozen=True)
class Job:
    name: str
    rows: int = 1
    key: str = "a"
    fail: bool = False


class Recorder:
    """A run_batch that records each merged call; the first call waits for ``gate`` so others queue up meanwhile."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate, self.entered = threading.Event(), threading.Event()

    def __call__(self, jobs: list[Job]) -> list[str]:
        if not self.calls:
            self.entered.set()
            self.gate.wait(10)
        self.calls.append([job.name for job in jobs])
        if any(job.fail for job in jobs):
            raise ValueError(f"bad job among {[job.name for job in jobs]}")
        return [job.name.upper() for job in jobs]


def batcher(recorder: Recorder, max_rows: int = 8) -> DynamicBatcher[Job, str]:
    kind = BatchKind(recorder, rows=lambda job: job.rows, key=lambda job: job.key)
    return DynamicBatcher(kind, BatchingConfig(max_rows=max_rows, max_wait_s=0.05))


def submit_in_thread(b: DynamicBatcher[Job, str], job: Job) -> threading.Thread:
    """A request whose thread runs the batches (nothing else runs): it blocks while ``run_batch`` does."""
    thread = threading.Thread(target=b.submit, args=(job,))
    thread.start()
    return thread


def test_merges_equal_keys_in_arrival_order_and_never_mixes_keys() -> None:
    recorder = Recorder()
    b = batcher(recorder)
    first = submit_in_thread(b, Job("x"))
    assert recorder.entered.wait(10)  # x's own thread is busy running it: the rest queue up
    jobs = [Job("a1"), Job("b1", key="b"), Job("a2"), Job("b2", key="b"), Job("a3")]
    futures = [b.submit(job) for job in jobs]
    recorder.gate.set()
    assert [f.result(10) for f in futures] == ["A1", "B1", "A2", "B2", "A3"]
    first.join(10)
    b.close()
    assert recorder.calls == [["x"], ["a1", "a2", "a3"], ["b1", "b2"]]


def test_respects_max_rows_and_runs_an_oversized_job_alone() -> None:
    recorder = Recorder()
    b = batcher(recorder, max_rows=4)
    submit_in_thread(b, Job("x"))
    assert recorder.entered.wait(10)
    futures = [b.submit(Job(name, rows)) for name, rows in [("p", 3), ("q", 2), ("r", 1), ("big", 9)]]
    recorder.gate.set()
    assert [f.result(10) for f in futures] == ["P", "Q", "R", "BIG"]
    b.close()
    assert recorder.calls == [["x"], ["p"], ["q", "r"], ["big"]]  # a batch closes at the first job that overflows


def test_a_failing_job_fails_alone() -> None:
    recorder = Recorder()
    b = batcher(recorder)
    submit_in_thread(b, Job("x"))
    assert recorder.entered.wait(10)
    good, bad, other = b.submit(Job("g")), b.submit(Job("f", fail=True)), b.submit(Job("h"))
    recorder.gate.set()
    assert (good.result(10), other.result(10)) == ("G", "H")
    with pytest.raises(ValueError, match=r"bad job among \['f'\]"):
        bad.result(10)
    b.close()
    assert recorder.calls[1] == ["g", "f", "h"]  # merged first, then each one alone


def test_a_lone_request_runs_in_its_own_thread() -> None:
    threads: list[str] = []
    kind = BatchKind(lambda jobs: threads.append(threading.current_thread().name) or [1] * len(jobs), rows=len)
    b = DynamicBatcher(kind, BatchingConfig(max_wait_s=0))
    assert b.submit("x").result(1) == 1
    b.close()
    assert threads == [threading.current_thread().name]  # no hand-off to the worker thread


def test_close_finishes_queued_work_and_later_requests_still_run() -> None:
    recorder = Recorder()
    b = batcher(recorder)
    submit_in_thread(b, Job("x"))
    assert recorder.entered.wait(10)
    futures = [b.submit(Job(f"j{i}", key=str(i % 3))) for i in range(12)]
    closing = threading.Thread(target=b.close)
    closing.start()
    recorder.gate.set()
    closing.join(10)
    assert not closing.is_alive() and all(f.done() for f in futures)
    assert sorted(f.result() for f in futures) == sorted(f"J{i}" for i in range(12))
    assert b.submit(Job("late")).result(1) == "LATE"  # after close: run alone, not left hanging


def test_a_full_queue_refuses_new_jobs_at_once() -> None:
    recorder = Recorder()
    kind = BatchKind(recorder, rows=lambda job: job.rows, key=lambda job: job.key)
    b = DynamicBatcher(kind, BatchingConfig(max_rows=8, max_wait_s=0.0, max_queued_rows=3))
    lead = threading.Thread(target=lambda: b.submit(Job("lead")))
    lead.start()
    assert recorder.entered.wait(10)  # the lead's run blocks: what comes next waits in the queue
    queued = b.submit(Job("queued", rows=2))
    refused = b.submit(Job("refused", rows=2))  # 2 + 2 rows > 3
    with pytest.raises(QueueFull, match="--max-queued-rows"):
        refused.result(timeout=1)
    recorder.gate.set()
    lead.join(10)
    assert queued.result(timeout=10) == "QUEUED"
    assert b.submit(Job("later", rows=2)).result(timeout=10) == "LATER"  # room again once the queue drained
    b.close()


def test_chunks_bound_each_run_and_answer_as_one() -> None:
    runs: list[list[tuple[str, int, int]]] = []

    def run_chunk(pieces: list[Piece[Job]]) -> list[list[str]]:
        runs.append([(p.job.name, p.rows.start, p.rows.stop) for p in pieces])
        return [[f"{p.job.name}{i}" for i in range(p.rows.start, p.rows.stop)] for p in pieces]

    jobs = [Job("a", rows=5), Job("b", rows=2), Job("c", rows=4)]
    out = run_in_chunks(
        jobs, lambda j: j.rows, 4, lambda j: None, run_chunk, lambda parts: [x for part in parts for x in part]
    )
    assert out == [[f"a{i}" for i in range(5)], ["b0", "b1"], [f"c{i}" for i in range(4)]]
    assert [sum(stop - start for _, start, stop in run) for run in runs] == [4, 4, 3]  # never more than 4 rows
    assert runs[1] == [("a", 4, 5), ("b", 0, 2), ("c", 0, 1)]


def test_a_job_past_its_deadline_loses_its_remaining_chunks_alone() -> None:
    ran: list[str] = []
    now = time.monotonic()
    late = Job("late", rows=6)
    deadlines = {"late": now - 1.0, "ok": None}

    def run_chunk(pieces: list[Piece[Job]]) -> list[int]:
        ran.extend(p.job.name for p in pieces)
        return [p.rows.stop - p.rows.start for p in pieces]

    out = run_in_chunks([Job("ok", rows=3), late], lambda j: j.rows, 2, lambda j: deadlines[j.name], run_chunk, sum)
    assert out[0] == 3 and isinstance(out[1], DeadlineExceeded)
    assert "late" not in ran  # none of its work ran once its deadline had passed
