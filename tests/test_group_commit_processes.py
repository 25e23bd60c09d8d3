"""Group commit survives kill -9 (issue 17): a process with many concurrent callers sharing
commits (8 threads on a `Ledger`, 64 coroutines on an `AsyncLedger`) is killed with SIGKILL
mid-flight; every job it acknowledged (printed only after its calls returned) is in the ledger
with its events, and the log verifies. On a SQLite file and on PostgreSQL (a fresh schema of
the session's server: there the server outlives the client, and the killed client's open
transaction is rolled back)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger import EventType, Ledger
from tests.conftest import ROOT

ACKED = 300  # acknowledged jobs to see before the kill
WAIT = 60.0


def read_acks(child: subprocess.Popen[bytes], count: int) -> list[str]:
    """Complete lines the child printed until at least ``count`` of them (a deadline)."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + WAIT
    while buffer.count(b"\n") < count:
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline, "the child acknowledged too little"
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            buffer += os.read(fd, 65536)
    return buffer.decode().split("\n")[:-1]  # the last, unfinished line is not an ack


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "async"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_loses_no_acknowledged_job(
    tmp_path: Path, mode: str, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        db = str(tmp_path / "ledger.db")
    else:
        db = request.getfixturevalue("postgres_schema")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.group_commit_child", mode, db],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        acked = read_acks(child, ACKED)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    assert child.returncode == -signal.SIGKILL
    assert len(acked) >= ACKED and len(set(acked)) == len(acked)
    with Ledger(db) as ledger:
        for job_id in acked:
            events = ledger.job_events(job_id)
            assert [e.type for e in events] == [EventType.CREATED, EventType.PROGRESS]
        events = ledger.read_all()
        assert [e.position for e in events] == list(range(1, len(events) + 1))
        assert ledger.verify().ok
