"""A dead worker's jobs come back at once (issue 18, section 3), with real processes.

A claim records its holder (host, boot id, pid, process start time); a claim on the same host
that finds a running job whose holder process is gone rescues it at once, as an expired lease
(the attempt counts; retried or failed). A live holder is never judged dead, even when it does
not heartbeat; holders on other hosts (or of claims without holder facts) keep their lease.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger import EventType, Job, JobStatus, Ledger, holder
from ledger.domain import commands as cmd
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(holder.current() is None, reason="needs Linux /proc")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RESCUE_WITHIN = 5.0  # seconds: the measured promise


def _wait_for(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _holder(db: str, worker_id: str) -> tuple[subprocess.Popen[str], str]:
    """A process that claims one job (300 s lease), never heartbeats, and lives on."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.rescue_child", db, worker_id],
        cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    job_id = child.stdout.readline().strip()
    assert job_id not in ("", "none"), "the holder claimed nothing"
    return child, job_id


def _job(ledger: Ledger, job_id: str) -> Job:
    job = ledger.get_job(job_id)
    assert job is not None
    return job


def _claim_as(ledger: Ledger, worker_id: str, facts: tuple[str, str, int, int]) -> str:
    """A claim recording the given holder facts (as a process elsewhere would record its own)."""
    command = cmd.Claim.checked(worker_id=worker_id, lease=300)
    job = ledger._service.claim(command, None, facts, holder.is_gone)
    assert job is not None
    return job.id


def test_a_claim_records_where_its_holder_runs(tmp_path: Path) -> None:
    with Ledger(str(tmp_path / "l.db")) as ledger:
        job_id = ledger.create_job(1, {})
        ledger.claim("w1")
        [claimed] = ledger.job_events(job_id, types=[EventType.CLAIMED])
        me = holder.current()
        assert me is not None
        assert claimed.payload["host"] == me.host and claimed.payload["boot_id"] == me.boot_id
        assert claimed.payload["pid"] == os.getpid()
        assert claimed.payload["process_start"] == me.start
        assert ledger.verify().ok


def test_a_live_holder_that_does_not_heartbeat_keeps_its_job(tmp_path: Path) -> None:
    """Claims from another process on the same host, again and again, never take the job of a
    holder that runs; once that holder exits, the next claim rescues its job at once."""
    db = str(tmp_path / "l.db")
    with Ledger(db) as ledger:
        job_id = ledger.create_job(1, {"task": "held"}, max_attempts=3)
        child, held = _holder(db, "sleepy")
        try:
            assert held == job_id
            for _ in range(20):
                assert ledger.claim("other", lease=300) is None
            job = _job(ledger, job_id)
            assert job.status is JobStatus.RUNNING and job.worker_id == "sleepy"
            assert job.attempts == 1
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)
        rescued = ledger.claim("other", lease=300)
        assert rescued is not None and rescued.id == job_id and rescued.attempts == 2
        expired = ledger.job_events(job_id, types=[EventType.LEASE_EXPIRED])
        assert [e.payload["holder_gone"] for e in expired] == [True]
        assert ledger.verify().ok


def test_a_dead_holder_on_its_last_attempt_fails_the_job(tmp_path: Path) -> None:
    db = str(tmp_path / "l.db")
    with Ledger(db) as ledger:
        job_id = ledger.create_job(1, {}, max_attempts=1)
        child, _ = _holder(db, "doomed")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert ledger.claim("other") is None
        job = _job(ledger, job_id)
        assert job.status is JobStatus.FAILED and job.attempts == 1
        assert "holder gone" in (job.error_message or "")
        assert "doomed" in (job.error_message or "")
        assert ledger.verify().ok


def test_holders_on_other_hosts_keep_their_lease(tmp_path: Path) -> None:
    with Ledger(str(tmp_path / "l.db")) as ledger:
        job_id = ledger.create_job(1, {})
        me = holder.current()
        assert me is not None
        # a pid that does not run here: on another host that says nothing
        _claim_as(ledger, "far", ("elsewhere.example", me.boot_id, 2**22 + 7, 1))
        assert ledger.claim("near") is None
        assert _job(ledger, job_id).worker_id == "far"
        assert ledger.verify().ok


@pytest.mark.parametrize("case", ["earlier boot", "pid reused", "no such pid"])
def test_a_holder_that_is_certainly_gone_is_rescued(tmp_path: Path, case: str) -> None:
    me = holder.current()
    assert me is not None
    facts = {
        "earlier boot": (me.host, "00000000-0000-0000-0000-000000000000", me.pid, me.start),
        "pid reused": (me.host, me.boot_id, me.pid, me.start + 1),  # this pid, another start
        "no such pid": (me.host, me.boot_id, 2**22 + 7, me.start),  # above pid_max
    }[case]
    with Ledger(str(tmp_path / "l.db")) as ledger:
        job_id = ledger.create_job(1, {}, max_attempts=2)
        _claim_as(ledger, "ghost", facts)
        job = ledger.claim("heir")
        assert job is not None and job.id == job_id and job.attempts == 2
        assert ledger.verify().ok


def test_this_very_process_is_never_judged_gone(tmp_path: Path) -> None:
    with Ledger(str(tmp_path / "l.db")) as ledger:
        first = ledger.create_job(1, {})
        assert ledger.claim("me") is not None
        assert ledger.claim("me-again") is None
        assert _job(ledger, first).worker_id == "me"
        assert ledger.verify().ok


def _work(db: str, handler: str, worker_id: str, *extra: str) -> subprocess.Popen[str]:
    """``ledger work`` with a 300 s lease; its log goes to ``<db>.<worker_id>.log``."""
    command = [sys.executable, "-m", "ledger", "work", f"tests.worker_handlers:{handler}"]
    command += ["--db", db, "--worker-id", worker_id, "--lease", "300", *extra]
    err = open(f"{db}.{worker_id}.log", "w")  # noqa: SIM115 - closed below, the child keeps it
    try:
        return subprocess.Popen(
            command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err, text=True
        )
    finally:
        err.close()


def _logged(db: str, worker_id: str, text: str) -> bool:
    path = Path(f"{db}.{worker_id}.log")
    return path.exists() and text in path.read_text()


def test_a_killed_workers_job_is_started_by_another_worker_within_seconds(tmp_path: Path) -> None:
    """The issue's measure: a worker holding a job with a 300 s lease is killed with kill -9; a
    second worker on the same ledger, idle and polling only every 30 s, starts that job within
    5 s (its idle wait re-checks every second while a local process holds a job)."""
    db = str(tmp_path / "l.db")
    marker = tmp_path / "running.pid"
    with Ledger(db) as ledger:
        job_id = ledger.create_job(1, {"marker": str(marker)}, max_attempts=3)
        first = _work(db, "stuck", "w1")
        second = None
        try:
            _wait_for(lambda: marker.exists() and marker.read_text() != "", "w1 to start")
            assert _job(ledger, job_id).worker_id == "w1"
            marker.write_text("")
            second = _work(db, "wait_for_stop", "w2", "--poll-interval", "30")
            _wait_for(lambda: _logged(db, "w2", "worker w2 started"), "w2 to start up")
            assert _job(ledger, job_id).worker_id == "w1"  # w1 lives: w2 took nothing
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            killed = time.monotonic()
            _wait_for(lambda: marker.read_text() != "", "w2 to start the job", RESCUE_WITHIN)
            assert time.monotonic() - killed < RESCUE_WITHIN
            job = _job(ledger, job_id)
            assert job.worker_id == "w2" and job.status is JobStatus.RUNNING and job.attempts == 2
            assert marker.read_text() == str(second.pid)
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    process.wait(30)
        assert ledger.verify().ok


def test_a_gone_holder_is_found_among_many_running_jobs_of_a_live_one(tmp_path: Path) -> None:
    """More running jobs on this host than the holder look reads row by row (64): the look
    still names every holder process once, and the gone one's job is rescued."""
    me = holder.current()
    assert me is not None
    gone = (me.host, me.boot_id, 2**22 + 7, me.start)  # above pid_max: certainly not running
    with Ledger(str(tmp_path / "l.db"), durability="normal") as ledger:
        ledger.create_jobs([{"chat_id": 1, "config": {}, "max_attempts": 2} for _ in range(80)])
        for _ in range(70):
            assert ledger.claim("me") is not None
        orphan = _claim_as(ledger, "ghost", gone)
        held = ledger._backend.read("test", lambda snap: snap.held_on(me.host))
        assert sorted(held) == sorted([(me.boot_id, me.pid, me.start), gone[1:]])
        heir = ledger.claim("heir")
        assert heir is not None and heir.id == orphan and heir.worker_id == "heir"
        assert ledger.verify().ok
