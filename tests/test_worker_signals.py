"""`ledger work` as a real process: what SIGINT/SIGTERM do to the job in hand, exit statuses,
interrupts raised by handlers, and the log lines the worker writes to stderr."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger import EventType, JobStatus, Ledger
from tests.conftest import ROOT, run_cli

WAIT = 60.0  # an upper bound on waiting for a condition; the tests finish long before it
FORCED = 10.0  # a forced stop must end the process quickly; this bound is generous


def _work(db: str, handler: str, *extra: str) -> subprocess.Popen[str]:
    """``ledger work`` on ``db``; stderr goes to a file (an unread pipe could fill and block)."""
    command = [sys.executable, "-m", "ledger", "work", f"tests.worker_handlers:{handler}"]
    command += ["--db", db, "--worker-id", "w1", "--poll-interval", "0.05", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    err = open(Path(db).with_suffix(".stderr"), "w")  # noqa: SIM115 - closed by the child's exit
    try:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True
        )
    finally:
        err.close()


def _stderr(db: str) -> str:
    return Path(db).with_suffix(".stderr").read_text()


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _start(tmp_path: Path, handler: str, *extra: str) -> tuple[Ledger, str, subprocess.Popen[str]]:
    """A ledger with one job, and a worker process whose handler is now running it."""
    db = str(tmp_path / "ledger.db")
    marker = tmp_path / "running.pid"
    ledger = Ledger(db)
    job_id = ledger.create_job(1, {"marker": str(marker), "task": "t"}, max_attempts=3)
    worker = _work(db, handler, *extra)
    _wait_for(lambda: marker.exists() and marker.read_text() != "", "the handler to start")
    return ledger, job_id, worker


def _assert_released(ledger: Ledger, job_id: str) -> None:
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
    types = [e.type for e in ledger.job_events(job_id)]
    assert types[-1] is EventType.RELEASED
    assert EventType.COMPLETED not in types and EventType.FAILED not in types
    assert ledger.verify().ok


@pytest.mark.parametrize(
    ("handler", "signum"),
    [
        ("readme_pattern", signal.SIGINT),
        ("readme_pattern", signal.SIGTERM),
        ("check_until_stopped", signal.SIGINT),
    ],
)
def test_a_stop_releases_a_job_whose_handler_gives_up(
    tmp_path: Path, handler: str, signum: int
) -> None:
    """Before: the README pattern on Ctrl-C recorded the job completed, status success."""
    ledger, job_id, worker = _start(tmp_path, handler)
    with ledger:
        worker.send_signal(signum)
        assert worker.wait(WAIT) == 0
        _assert_released(ledger, job_id)
        stderr = _stderr(ledger.path)
        assert f"job {job_id} released" in stderr and "stopped" in stderr


def test_a_handler_that_finishes_within_the_grace_period_completes(tmp_path: Path) -> None:
    ledger, job_id, worker = _start(tmp_path, "finish_in_grace")
    with ledger:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(WAIT) == 0
        job = ledger.get_job(job_id)
        assert job is not None and job.status is JobStatus.COMPLETED
        assert job.result_summary == "finished during the grace period"
        (progress,) = ledger.job_events(job_id, types=[EventType.PROGRESS])
        assert progress.payload == {"stopping": True} and progress.worker_id == "w1"
        assert ledger.verify().ok


def test_a_second_signal_forces_the_stop(tmp_path: Path) -> None:
    ledger, job_id, worker = _start(tmp_path, "stuck")  # sleeps 1000 s, ignoring the stop
    with ledger:
        worker.send_signal(signal.SIGINT)
        _wait_for(lambda: "stopping" in _stderr(ledger.path), "the first signal to be seen")
        worker.send_signal(signal.SIGINT)
        assert worker.wait(FORCED) == 128 + signal.SIGINT
        with pytest.raises(ProcessLookupError):  # reaped: nothing of it is left running
            os.kill(worker.pid, 0)
        _assert_released(ledger, job_id)
        assert "forcing the stop" in _stderr(ledger.path)


def test_the_grace_period_ends_a_stuck_handler(tmp_path: Path) -> None:
    ledger, job_id, worker = _start(tmp_path, "stuck", "--grace", "0.2")
    with ledger:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(FORCED) == 128 + signal.SIGTERM
        _assert_released(ledger, job_id)
        (released,) = ledger.job_events(job_id, types=[EventType.RELEASED])
        assert "grace" in released.payload["reason"]


def test_system_exit_in_a_handler_releases_and_exits_with_its_code(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    with Ledger(db) as ledger:
        first = ledger.create_job(1, {"code": 4})
        second = ledger.create_job(1, {"code": 4})
        worker = _work(db, "exits")
        assert worker.wait(WAIT) == 4
        _assert_released(ledger, first)
        assert ledger.job_events(second)[-1].type is EventType.CREATED  # the worker stopped


def _jobs_for_logs(db: str) -> tuple[str, str]:
    with Ledger(db) as ledger:
        ok = ledger.create_job(1, {"kind": "ok"}, queue="q1")
        bad = ledger.create_job(1, {"kind": "raise"}, queue="q1")
    return ok, bad


def test_work_logs_to_stderr_and_quiet_and_verbose_adjust(tmp_path: Path) -> None:
    handler = "tests.worker_handlers:kind_of_return"
    runs = {}
    for noise in ("", "--quiet", "--verbose"):
        db = str(tmp_path / f"ledger{noise}.db")
        ok, bad = _jobs_for_logs(db)
        extra = [noise] if noise else []
        result = run_cli("work", handler, "--stop-when-idle", "--queue", "q1", *extra, db=db)
        assert result.returncode == 0, result.stderr
        runs[noise] = (ok, bad, result.stderr)

    ok, bad, stderr = runs[""]
    lines = stderr.splitlines()
    assert "started" in lines[0] and str(tmp_path / "ledger.db") in lines[0] and "q1" in lines[0]
    assert "pid " in lines[0] and "worker " in lines[0]
    assert any(f"claimed job {ok} (queue q1, attempt 1 of 1)" in line for line in lines)
    assert any(f"job {ok} completed (success) in" in line for line in lines)
    assert any(f"job {bad} failed" in line and "RuntimeError" in line for line in lines)
    assert "stopped" in lines[-1] and "2 job(s) handled" in lines[-1]
    assert "DEBUG" not in stderr and "Traceback" not in stderr

    assert runs["--quiet"][2] == ""  # nothing went wrong with the worker itself
    verbose = runs["--verbose"][2]
    assert "DEBUG" in verbose and "handler running" in verbose and "claimed job" in verbose
