"""`ledger work --concurrency N` as a real process: a kill -9 in the middle of a durable step
(what was recorded is not run again, what was not is), and SIGTERM with many jobs in flight
(first signal: finish within the grace or be released; second: forced, non-zero exit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledger import EventType, JobStatus, Ledger, Worker
from tests import concurrency_handlers
from tests.conftest import ROOT

WAIT = 60.0  # an upper bound on waiting for a condition; the tests finish long before it


def _work(db: str, handler: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "ledger", "work", f"tests.concurrency_handlers:{handler}"]
    command += ["--db", db, "--poll-interval", "0.05", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    err = open(Path(db).with_suffix(".stderr"), "w")  # noqa: SIM115 - closed by the child's exit
    try:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
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


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_kill_9_in_the_middle_of_a_step_reruns_only_the_unrecorded_step(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    marks = tmp_path / "marks"
    marks.mkdir()
    with Ledger(db) as ledger:
        job_id = ledger.create_job(1, {"dir": str(marks), "hang_in_two": True}, max_attempts=2)
    worker = _work(db, "two_steps", "--lease", "30", "--concurrency", "4")
    try:
        _wait_for(lambda: _lines(marks / "two.calls") != [], "step two to start")
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(WAIT) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
    (marks / "no-hang").touch()
    # After the crash: step one is in the log (recorded before the kill), step two is not.
    later = datetime.now(UTC) + timedelta(hours=1)  # past the dead worker's lease
    with Ledger(db, clock=lambda: later) as ledger:
        steps = ledger.job_events(job_id, types=[EventType.STEP])
        assert [s.payload["name"] for s in steps] == ["one"]
        Worker(ledger, concurrency_handlers.two_steps, concurrency=4).run(stop_when_idle=True)
        job = ledger.get_job(job_id)
        assert job is not None and job.status is JobStatus.COMPLETED and job.attempts == 2
        assert job.result == {"one": "first", "two": "second"}
        assert _lines(marks / "one.calls") == ["1"]  # recorded: not run again
        assert _lines(marks / "two.calls") == ["1", "2"]  # not recorded: run again
        steps = ledger.job_events(job_id, types=[EventType.STEP])
        assert [(s.payload["name"], s.attempt) for s in steps] == [("one", 1), ("two", 2)]
        assert ledger.verify().ok


def _in_flight(tmp_path: Path, n: int, **config: object) -> tuple[str, list[str], Path]:
    db = str(tmp_path / "ledger.db")
    marks = tmp_path / "marks"
    marks.mkdir()
    with Ledger(db) as ledger:
        ids = [ledger.create_job(1, {"dir": str(marks), **config}) for _ in range(n)]
    return db, ids, marks


def test_first_sigterm_lets_jobs_in_flight_finish_within_the_grace(tmp_path: Path) -> None:
    db, ids, marks = _in_flight(tmp_path, 4, finish_on_stop=True)
    worker = _work(db, "stuck", "--concurrency", "4", "--grace", "60")
    try:
        _wait_for(lambda: all((marks / f"{i}.started").exists() for i in ids), "4 jobs in flight")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(WAIT) == 0, _stderr(db)
    finally:
        if worker.poll() is None:
            worker.kill()
    with Ledger(db) as ledger:
        jobs = [ledger.get_job(i) for i in ids]
        assert all(j.status is JobStatus.COMPLETED for j in jobs)  # type: ignore[union-attr]
        assert all(j.result_summary == "finished on stop" for j in jobs)  # type: ignore[union-attr]
        assert ledger.verify().ok
    assert "SIGTERM: stopping" in _stderr(db)


def test_second_sigterm_forces_and_releases_every_job_in_flight(tmp_path: Path) -> None:
    db, ids, marks = _in_flight(tmp_path, 6)
    worker = _work(db, "stuck", "--concurrency", "6", "--grace", "60")
    try:
        _wait_for(lambda: all((marks / f"{i}.started").exists() for i in ids), "6 jobs in flight")
        worker.send_signal(signal.SIGTERM)
        _wait_for(lambda: "SIGTERM: stopping" in _stderr(db), "the first signal to be seen")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(WAIT) == 128 + signal.SIGTERM
    finally:
        if worker.poll() is None:
            worker.kill()
    with Ledger(db) as ledger:
        for job_id in ids:
            job = ledger.get_job(job_id)
            assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
            assert ledger.job_events(job_id)[-1].type is EventType.RELEASED
        assert ledger.verify().ok
    assert "forcing the stop" in _stderr(db)
