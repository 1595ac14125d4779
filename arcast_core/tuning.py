"""Optuna studies for every model of both domains: storage, sampler, pruning, many workers, the best parameters.

TPE sampling, median pruning on the per-epoch validation loss, and a study in any storage Optuna supports:
a SQLite file by default, or an RDB URL (PostgreSQL) that many workers share. Running it again with the same
storage and study name resumes the study; the best trial's parameters are written beside the results
(``write_best_params``). A domain supplies only an objective factory: a picklable callable that each worker
process calls once and that returns the objective (it may cache prepared data across that worker's trials).

Many workers. ``optimize(..., workers=N)`` starts N processes on this machine; commands on other machines join the
same study through the same URL. A command adds ``n_trials`` finished (complete or pruned) trials to the study,
split into one share per worker slot. Every trial carries its slot in a user attribute, and a slot counts its
trials in the study itself, so no trial is run twice and none is lost when a worker dies:

- Each running trial records a heartbeat; a trial whose heartbeat is older than the grace period is marked
  failed by the next worker that looks (Optuna's ``fail_stale_trials``) and queued again with the same
  parameters (Optuna's retry callback), keeping its slot, so whichever worker runs the retry runs it for that slot.
- A worker whose share is all started waits, rather than exits, until its slot's trials have finished: a trial in
  flight may still die and come back as a retry.
- The supervising command starts a new worker for a slot whose worker was killed by a signal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import multiprocessing
import os
import signal
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from arcast_core.files import atomic_write_text

log = logging.getLogger(__name__)
# A picklable callable that a worker process calls once; it returns the objective that worker's trials run.
ObjectiveFactory = Callable[[], Callable[[optuna.Trial], float]]
BEST_PARAMS_FILE = "best_params.json"
DIVERGED_ATTR = "diverged"  # why a trial whose training loss became nan or inf was stopped (it counts as pruned)
SLOT_ATTR = "arcast_slot"  # "<launch>/<slot>": whose share of trials a trial counts toward
WORKER_ATTR = "arcast_worker"  # "host:pid" of the process that ran the trial (last)
MAX_RETRY = 1  # a trial killed twice is not queued a third time: it may be what kills its workers
MAX_RESTARTS = 3  # per slot: workers killed more often than this point at the machine, not at bad luck
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
IN_FLIGHT = (TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class Heartbeat:
    """How a dead worker is noticed: ``interval`` s between a trial's heartbeats; stale after ``grace`` s."""

    interval: int = 30
    grace: int = 120


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'optuna.db').resolve()}"


def is_sqlite(storage: str) -> bool:
    return storage.startswith("sqlite")


def public_url(storage: str) -> str:
    """The storage URL with its password masked, for files and logs."""
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def _retrying_storage(storage: str, heartbeat: Heartbeat) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats whose stale trials are queued again (once)."""
    # SQLite too: in one process it is what fails and retries a trial that a killed earlier run left RUNNING.
    # A server may drop idle connections during a long trial: pre-ping them (Optuna does it for MySQL only).
    engine = {} if is_sqlite(storage) else {"pool_pre_ping": True}
    common = {"engine_kwargs": engine, "heartbeat_interval": heartbeat.interval, "grace_period": heartbeat.grace}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if retry is None:  # Optuna < 4.9 names the callback and its argument differently
            callback = optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)
            return optuna.storages.RDBStorage(storage, **common, failed_trial_callback=callback)
        return optuna.storages.RDBStorage(storage, **common, heartbeat_stale_trial_callback=retry(max_retry=MAX_RETRY))


def create_study(
    study_name: str, storage: str, seed: int = 0, warmup_steps: int = 2, heartbeat: Heartbeat | None = None
) -> optuna.Study:
    """Minimise with TPE and median pruning (no pruning during the first ``warmup_steps`` reported steps)."""
    return optuna.create_study(
        study_name=study_name,
        storage=_retrying_storage(storage, heartbeat or Heartbeat()),
        direction="minimize",
        # TPE's default of 10 random start-up trials would make a short study a pure random search.
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_steps),
        load_if_exists=True,
    )


def report_or_prune(trial: optuna.Trial, step: int, value: float) -> None:
    """Optuna's pruning hook: record ``value`` (to be minimised) at ``step``; raise if the pruner stops the trial."""
    trial.report(value, step)
    if trial.should_prune():
        raise optuna.TrialPruned()


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one worker needs; picklable, so that a spawned process gets it whole."""

    objective: ObjectiveFactory
    storage: str
    study_name: str
    slot: str
    share: int
    seed: int  # the command's seed: a restarted worker's sampler seed derives from it
    sampler_seed: int
    heartbeat: Heartbeat
    warmup_steps: int
    deadline: float | None  # time.time() after which no trial starts
    torch_threads: int | None = None
    supervisor_pid: int | None = None  # a worker whose supervisor is gone stops after its current trial


def _slotted(spec: WorkerSpec) -> Callable[[optuna.Trial], float]:
    """The domain's objective, with each trial marked with its slot and the worker that ran it."""
    objective = spec.objective()
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def slotted(trial: optuna.Trial) -> float:
        if SLOT_ATTR not in trial.user_attrs:  # a retry keeps the slot of the trial it replaces
            trial.set_user_attr(SLOT_ATTR, spec.slot)
        trial.set_user_attr(WORKER_ATTR, worker)
        try:
            return objective(trial)
        except FloatingPointError as err:  # settings that diverge (a rate too high) are an answer, not a crash
            trial.set_user_attr(DIVERGED_ATTR, str(err))
            raise optuna.TrialPruned(f"diverged: {err}") from err

    return slotted


def _retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _awaits_retry(trial: FrozenTrial, retried: set[int], grace: float) -> bool:
    """A trial just failed for a stale heartbeat whose retry is not queued yet (the callback runs right after)."""
    if trial.state != TrialState.FAIL or trial.number in retried:
        return False
    if len(trial.system_attrs.get("retry_history", [])) >= MAX_RETRY or trial.datetime_complete is None:
        return False
    return (dt.datetime.now() - trial.datetime_complete).total_seconds() < grace


@dataclass(frozen=True)
class SlotCounts:
    done: int  # finished (complete or pruned)
    claimed: int  # done, running, queued, or failed a moment ago and about to be queued again
    queued: int  # retries waiting for a worker


def slot_counts(study: optuna.Study, slot: str, grace: float) -> SlotCounts:
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SLOT_ATTR) == slot]
    retried = _retried_numbers(trials)
    done = sum(t.state in FINISHED for t in trials)
    pending = sum(t.state in IN_FLIGHT or _awaits_retry(t, retried, grace) for t in trials)
    return SlotCounts(done, done + pending, sum(t.state == TrialState.WAITING for t in trials))


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _run_one_trial(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> None:
    try:
        study.optimize(objective, n_trials=1, gc_after_trial=True)
    except optuna.exceptions.UpdateFinishedTrialError as err:
        # This worker was taken for dead (no heartbeat within the grace period) and its trial was failed and
        # queued again: the retry counts instead, so carry on.
        log.warning("a trial of this worker was declared dead while it ran (%s); its retry counts instead", err)


def run_share(
    study: optuna.Study,
    spec: WorkerSpec,
    on_progress: Callable[[int], None] | None = None,
    poll_s: float = 0.5,
) -> None:
    """Run trials until ``spec.slot`` has ``spec.share`` finished ones (or the deadline passes)."""
    objective = _slotted(spec)
    while spec.deadline is None or time.time() < spec.deadline:
        if spec.supervisor_pid is not None and os.getppid() != spec.supervisor_pid:
            log.warning("the tuning command that started this worker is gone: stopping")
            return
        counts = slot_counts(study, spec.slot, spec.heartbeat.grace)
        if on_progress is not None:
            on_progress(counts.done)
        if counts.done >= spec.share:
            return
        # Optuna hands out queued retries before sampling a new trial. With room left that is always right; with
        # none, only a retry of this slot is worth asking for (should a peer take it first, Optuna samples a new
        # trial instead: one trial more than the share, never one less).
        if counts.claimed < spec.share or counts.queued:
            _run_one_trial(study, objective)  # Optuna fails stale trials first
        else:  # the rest of the share is in flight elsewhere: wait in case it dies, and look for dead ones
            time.sleep(poll_s)
            _fail_stale_trials(study)


def _worker_main(spec: WorkerSpec) -> None:
    """Entry point of a spawned worker process."""
    if spec.torch_threads:
        import torch

        torch.set_num_threads(spec.torch_threads)  # N workers share the cores instead of each taking them all
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_study(spec.study_name, spec.storage, spec.sampler_seed, spec.warmup_steps, spec.heartbeat)
    run_share(study, spec)


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def check_workers(storage: str, workers: int) -> None:
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and is_sqlite(storage):
        raise ValueError(
            f"--workers {workers} needs a database server that many processes can write at once, such as "
            "--storage postgresql+psycopg://USER:PASSWORD@HOST/DB; SQLite locks the whole file for every write "
            "and Optuna advises against it for parallel workers (.ci/postgres.sh starts a local PostgreSQL)"
        )


def _shares(n_trials: int, workers: int) -> list[int]:
    return [n_trials // workers + (i < n_trials % workers) for i in range(workers)]


def _worker_specs(base: WorkerSpec, n_trials: int, workers: int, launch: str) -> list[WorkerSpec]:
    specs = []
    for i, share in enumerate(_shares(n_trials, workers)):
        # Workers sharing a sampler seed would sample the same start-up trials: give each its own.
        sampler_seed = base.sampler_seed if workers == 1 else _seed(base.seed, launch, i, 0)
        specs.append(replace(base, slot=f"{launch}/{i}", share=share, sampler_seed=sampler_seed))
    return [s for s in specs if s.share > 0]  # shares only shrink along the list: slot i stays at index i


def resumed_sampler_seed(seed: int, trials_so_far: int) -> int:
    """``seed`` for a new study; for one resumed with trials in it, a seed derived from both: the same seed would
    draw TPE's random start-up trials again, repeating what the stopped run already ran."""
    return seed if trials_so_far == 0 else int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


def _seed(seed: int, launch: str, slot: int, incarnation: int) -> int:
    return int(np.random.SeedSequence([seed, int(launch, 16), slot, incarnation]).generate_state(1)[0])


def _launch_done(study: optuna.Study, launch: str) -> int:
    prefix = f"{launch}/"
    return sum(
        t.state in FINISHED and str(t.user_attrs.get(SLOT_ATTR, "")).startswith(prefix)
        for t in study.get_trials(deepcopy=False)
    )


def _advance(bar: tqdm, done: int) -> None:
    if done > bar.n:  # an unchanged count would still redraw the bar (a new line each time in a log file)
        bar.update(done - bar.n)


class _Supervisor:
    """Runs one process per worker slot; starts a new one for a slot whose worker was killed by a signal."""

    def __init__(self, specs: list[WorkerSpec], launch: str) -> None:
        self.specs, self.launch = {i: s for i, s in enumerate(specs)}, launch
        self.context = multiprocessing.get_context("spawn")  # no fork: torch threads and DB connections
        self.restarts = dict.fromkeys(self.specs, 0)
        self.procs: dict[int, multiprocessing.process.BaseProcess] = {}

    def _start(self, i: int) -> None:
        spec = self.specs[i]
        if self.restarts[i]:  # a new seed, or it would sample again what its predecessor sampled
            spec = replace(spec, sampler_seed=_seed(spec.seed, self.launch, i, self.restarts[i]))
        proc = self.context.Process(target=_worker_main, args=(spec,), name=f"tune-worker-{spec.slot}", daemon=False)
        proc.start()
        self.procs[i] = proc

    def _check(self, i: int, proc: multiprocessing.process.BaseProcess) -> None:
        code = proc.exitcode
        if code is None:
            return
        del self.procs[i]
        if code == 0:
            return
        if code < 0 and self.restarts[i] < MAX_RESTARTS:
            self.restarts[i] += 1
            log.warning("tuning worker %s (pid %s) was killed by signal %d: starting another", i, proc.pid, -code)
            self._start(i)
            return
        raise RuntimeError(f"tuning worker {i} (pid {proc.pid}) exited with code {code}; its error is above")

    def run(self, study: optuna.Study, total: int) -> None:
        for i in self.specs:
            self._start(i)
        bar = tqdm(total=total, desc="tune", unit="trial")
        previous = _exit_on_sigterm()
        try:
            while self.procs:
                time.sleep(0.5)
                for i, proc in list(self.procs.items()):
                    self._check(i, proc)
                _advance(bar, _launch_done(study, self.launch))
        finally:
            bar.close()
            for proc in self.procs.values():  # on an error, Ctrl-C or SIGTERM: their trials go stale, come back later
                proc.terminate()
            for proc in self.procs.values():
                proc.join()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm() -> Any:
    """Make SIGTERM unwind like Ctrl-C (by default it ends the process at once, leaving the workers behind)."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: signals are not ours to handle
        return None


def optimize(
    objective: ObjectiveFactory,
    n_trials: int,
    storage: str,
    study_name: str,
    timeout: float | None = None,
    seed: int = 0,
    workers: int = 1,
    heartbeat: Heartbeat | None = None,
    warmup_steps: int = 2,
) -> optuna.Study:
    """Add ``n_trials`` finished trials to the study (``workers`` processes share them) and return it.

    One worker runs in this process. More need an RDB server URL as ``storage`` (PostgreSQL); see the module
    docstring for how trials are shared and how a killed worker's trial is retried.
    """
    check_workers(storage, workers)
    heartbeat = heartbeat or Heartbeat()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Created here, before any worker starts, so that workers on a fresh database never race to create tables.
    study = create_study(study_name, storage, seed, warmup_steps, heartbeat)
    sampler_seed = resumed_sampler_seed(seed, len(study.trials))
    if sampler_seed != seed:  # resumed: this process samples from a seed of its own (see resumed_sampler_seed)
        study = create_study(study_name, storage, sampler_seed, warmup_steps, heartbeat)
    launch = uuid.uuid4().hex[:12]
    base = WorkerSpec(
        objective=objective,
        storage=storage,
        study_name=study_name,
        slot="",
        share=0,
        seed=seed,
        sampler_seed=sampler_seed,
        heartbeat=heartbeat,
        warmup_steps=warmup_steps,
        deadline=None if timeout is None else time.time() + timeout,
    )
    if workers > 1:
        base = replace(base, torch_threads=max(1, usable_cores() // workers), supervisor_pid=os.getpid())
    specs = _worker_specs(base, n_trials, workers, launch)
    if workers == 1:
        with tqdm(total=n_trials, desc="tune", unit="trial") as bar:
            for spec in specs:
                run_share(study, spec, on_progress=lambda done: _advance(bar, done))
    else:
        _Supervisor(specs, launch).run(study, n_trials)
    return study


def write_best_params(study: optuna.Study, storage: str, out_dir: Path, **facts: Any) -> dict[str, Any]:
    """Write the best trial's parameters and settings (and the domain's ``facts``) to ``best_params.json``."""
    best = study.best_trial
    result = {
        "study": study.study_name,
        "storage": public_url(storage),
        **facts,
        "best_value": best.value,
        "best_trial": best.number,
        "n_trials": len(study.trials),
        "params": best.params,
        "settings": best.user_attrs["settings"],
    }
    atomic_write_text(out_dir / BEST_PARAMS_FILE, json.dumps(result, indent=2, default=list))
    return result
