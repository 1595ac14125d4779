"""Many tuning workers on one Optuna study: a worker killed mid-trial loses no trial and runs none twice.

The PostgreSQL tests need a server: CI starts one with .ci/postgres.sh, which exports ARCAST_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from arcast_core.tuning import SLOT_ATTR, WORKER_ATTR

POSTGRES_ENV = "ARCAST_TEST_POSTGRES_URL"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Long enough trials that a kill after the first epoch lands well inside one: every trial runs all its epochs (no
# early stopping: with the default patience a trial could end after ten, about 1 s here, and under load the poll
# below saw no trial mid-way before both were done), ~0.1 s each, so half of them last seconds.
EPOCHS = 60


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        message = f'{POSTGRES_ENV} is not set: start a local PostgreSQL with eval "$(sudo bash .ci/postgres.sh)"'
        if os.environ.get("CI"):
            pytest.fail(message)  # CI starts the server: a missing URL there is a broken setup, not a skip
        pytest.skip(message)
    import sqlalchemy

    with sqlalchemy.create_engine(url).connect() as conn:  # fail here, clearly, if the URL is wrong
        conn.execute(sqlalchemy.text("SELECT 1"))
    return url


def tune_command(data: Path, out: Path, storage: str, study: str, trials: int, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "forecasting", "tune", "--dataset", str(data), "--lookback", "48", "--horizon", "12",
        "--epochs", str(EPOCHS), "--patience", str(EPOCHS), "--trials", str(trials), "--workers", str(workers),
        "--storage", storage, "--study", study, "--heartbeat", "1", "--grace", "5", "--out", str(out),
    ]  # fmt: skip


def kill_a_worker_mid_trial(storage: str, study_name: str, proc: subprocess.Popen, timeout_s: float = 120) -> int:
    """SIGKILL the process running the first trial seen past its first epoch (and well before its last)."""
    deadline = time.monotonic() + timeout_s
    rdb = optuna.storages.RDBStorage(storage)  # one engine for the whole wait: polls stay cheap under load
    study = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            study = study or optuna.load_study(study_name=study_name, storage=rdb)
        except KeyError:  # the command has not created the study yet
            time.sleep(0.2)
            continue
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # The first trials of a study are never pruned (MedianPruner waits for 3 complete ones), so a trial
            # caught here still has most of its EPOCHS to run.
            if WORKER_ATTR in trial.user_attrs and 1 <= len(trial.intermediate_values) <= EPOCHS // 2:
                os.kill(int(trial.user_attrs[WORKER_ATTR].rsplit(":", 1)[1]), signal.SIGKILL)
                return trial.number
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no trial was caught mid-way within {timeout_s} s: {proc.communicate()[1][-2000:]}")


def retries_of(trials: list[FrozenTrial], number: int) -> list[FrozenTrial]:
    return [t for t in trials if t.system_attrs.get("failed_trial") == number]


def test_killed_worker_trial_is_failed_and_retried(postgres_url: str, etth1_slice: Path, tmp_path: Path) -> None:
    study_name = f"kill-{uuid.uuid4().hex[:8]}"
    # One trial per worker: the killed worker's share is then only its killed trial, so the study completes only
    # if its replacement waits for that trial to go stale and runs the retry (nobody else would).
    cmd = tune_command(etth1_slice, tmp_path, postgres_url, study_name, trials=2, workers=2)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim_number = kill_a_worker_mid_trial(postgres_url, study_name, proc)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the command stops its workers on SIGTERM
            proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert "was killed by signal 9: starting another" in stderr

    trials = optuna.load_study(study_name=study_name, storage=postgres_url).get_trials()
    states = [t.state for t in trials]
    assert sum(s in FINISHED for s in states) == 2, states  # the command's 2 trials, no more, no fewer
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [victim_number]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    victim = trials[victim_number]
    [retry] = retries_of(trials, victim_number)
    assert retry.state in FINISHED
    assert retry.params == victim.params  # the same trial again, not a new sample
    assert retry.user_attrs[SLOT_ATTR] == victim.user_attrs[SLOT_ATTR]  # and it counted for the dead worker's share
    assert retry.user_attrs[WORKER_ATTR] != victim.user_attrs[WORKER_ATTR]
    # Both workers took part, each with its own sampler seed: their first trials drew different parameters.
    slots = {t.user_attrs[SLOT_ATTR] for t in trials}
    assert len(slots) == 2
    fresh = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert len({tuple(sorted(t.params.items())) for t in fresh}) == len(fresh)


def test_a_killed_single_process_run_is_retried_on_resume(etth1_slice: Path, tmp_path: Path) -> None:
    """SQLite, one process: the trial a SIGKILL left RUNNING is failed and run again by the next run."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = tune_command(etth1_slice, tmp_path, storage, "resume", trials=2, workers=1)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim_number = kill_a_worker_mid_trial(storage, "resume", proc)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(5)  # the grace period: only then is the victim's heartbeat stale
    again = tune_command(etth1_slice, tmp_path, storage, "resume", trials=1, workers=1)
    resumed = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = optuna.load_study(study_name="resume", storage=storage).get_trials()
    assert trials[victim_number].state == TrialState.FAIL
    [retry] = retries_of(trials, victim_number)
    assert retry.state in FINISHED and retry.params == trials[victim_number].params
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_many_workers_on_sqlite_are_refused_clearly(
    etth1_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from forecasting.cli import main

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(tune_command(etth1_slice, tmp_path, storage, "s", trials=2, workers=2)[3:]) == 2
    assert "--workers 2 needs a database server" in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists()  # refused before anything was created
