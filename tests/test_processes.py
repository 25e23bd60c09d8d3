"""Real worker processes on one file: failures, a SIGKILL mid-job, SIGTERM, no double claims."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ledger import EventType, JobStatus, Ledger
from tests.conftest import ROOT

WAIT = 120.0
ENDS_A_CLAIM = {
    EventType.COMPLETED,
    EventType.FAILED,
    EventType.RETRY_SCHEDULED,
    EventType.LEASE_EXPIRED,
    EventType.RELEASED,
}


def _worker(db: str, handler: str, name: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "ledger",
        "work",
        f"tests.worker_handlers:{handler}",
        "--db",
        db,
        "--worker-id",
        name,
        "--poll-interval",
        "0.05",
        "--quiet",  # a line per job would fill the unread stderr pipe and block the worker
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_for(condition, what: str, timeout: float = WAIT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_four_workers_drain_jobs_despite_failures_and_a_kill(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    marker = tmp_path / "hanging.pid"
    with Ledger(db) as ledger:
        specs = [
            {"chat_id": n % 7, "config": {"n": n, "fail_rate": 0.3}, "max_attempts": 3}
            for n in range(300)
        ]
        specs.insert(
            0,
            {"chat_id": 0, "max_attempts": 2, "config": {"hang_once": True, "marker": str(marker)}},
        )
        ids = ledger.create_jobs(specs)
        victim_job = ids[0]
        started = time.monotonic()
        workers = [
            _worker(db, "flaky", f"w{n}", "--lease", "2", "--retry-delay", "0.05") for n in range(4)
        ]
        try:
            _wait_for(marker.exists, "the hanging job to start")
            _wait_for(lambda: marker.read_text().strip() != "", "the marker's pid")
            victim_pid = int(marker.read_text())
            victim = next(w for w in workers if w.pid == victim_pid)
            victim.send_signal(signal.SIGKILL)
            victim.wait(WAIT)
            _wait_for(
                lambda: all(j.status.is_final for j in ledger.jobs(limit=10_000)),
                "every job to finish",
            )
            elapsed = time.monotonic() - started
        finally:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(WAIT)
        survivors = [w for w in workers if w.pid != victim_pid]
        assert [w.returncode for w in survivors] == [0, 0, 0]
        assert victim.returncode == -signal.SIGKILL

        jobs = ledger.jobs(limit=10_000)
        assert len(jobs) == 301
        assert {j.status for j in jobs} <= {JobStatus.COMPLETED, JobStatus.FAILED}
        completions = Counter(e.job_id for e in ledger.read_all() if e.type is EventType.COMPLETED)
        assert max(completions.values()) == 1  # none completed twice
        statuses = Counter(j.status for j in jobs)
        assert statuses[JobStatus.COMPLETED] == len(completions)
        rescued = ledger.get_job(victim_job)
        assert rescued is not None and rescued.status is JobStatus.COMPLETED
        victim_types = [e.type for e in ledger.job_events(victim_job)]
        assert EventType.LEASE_EXPIRED in victim_types
        assert victim_types.count(EventType.CLAIMED) == 2
        for job in jobs:  # at most one owner: every claim ends before the next one starts
            open_claims = 0
            for event in ledger.job_events(job.id):
                if event.type is EventType.CLAIMED:
                    open_claims += 1
                    assert open_claims == 1
                elif event.type in ENDS_A_CLAIM:
                    open_claims -= 1
        assert ledger.verify().ok
        sys.stderr.write(f"\n301 jobs drained by 4 workers in {elapsed:.1f}s (incl. a 2 s lease)\n")


def test_sigterm_releases_the_job_in_hand(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    marker = tmp_path / "running.pid"
    with Ledger(db) as ledger:
        job_id = ledger.create_job(1, {"marker": str(marker)})
        worker = _worker(db, "wait_for_stop", "w1")
        _wait_for(lambda: marker.exists() and marker.read_text() != "", "the handler to start")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(WAIT) == 0
        job = ledger.get_job(job_id)
        assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
        assert ledger.job_events(job_id)[-1].type is EventType.RELEASED


def test_processes_claiming_at_once_never_share_a_job(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    with Ledger(db) as ledger:
        ledger.create_jobs([{"chat_id": 1, "config": {"n": n}} for n in range(200)])
    workers = [_worker(db, "quick", f"w{n}", "--stop-when-idle") for n in range(4)]
    for w in workers:
        assert w.wait(WAIT) == 0, w.stderr.read() if w.stderr else ""
    with Ledger(db) as ledger:
        claims = Counter(e.job_id for e in ledger.read_all() if e.type is EventType.CLAIMED)
        assert len(claims) == 200 and set(claims.values()) == {1}
        assert all(j.status is JobStatus.COMPLETED for j in ledger.jobs(limit=1000))
        assert ledger.verify().ok
