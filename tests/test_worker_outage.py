"""A worker whose ledger stays busy (another process holds SQLite's write lock for longer than
the busy timeout) waits it out: it keeps the outcome it could not record and records it, once,
when the lock is free (with the time its handler ran, not until then), instead of ending its
loop and abandoning its jobs; a worker told to stop when idle says so instead of waiting.
(The PostgreSQL server going away: tests/backends/postgres/test_server_restart.py.)"""

from __future__ import annotations

import logging
from pathlib import Path

import apsw
import pytest

from ledger import JobStatus, Ledger, LedgerBusy, Worker
from tests.outage_support import Blocked, logged, running

CONFIG = {"role": "coder", "task": "wait out a busy ledger"}


@pytest.mark.parametrize("outcome", ["done", "raise"])
def test_a_worker_records_an_outcome_once_the_write_lock_is_free(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, outcome: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="ledger.worker")
    path = str(tmp_path / "ledger.db")
    handler = Blocked(outcome)
    with Ledger(path, busy_timeout=0.2) as ledger:
        job_id = ledger.create_job(1, CONFIG, max_attempts=1)
        worker = Worker(ledger, handler, lease=60, poll_interval=0.05)
        with running(worker) as thread:
            assert handler.started.wait(30)
            holder = apsw.Connection(path)  # another writer, holding the lock
            holder.execute("BEGIN IMMEDIATE")
            try:
                handler.go.set()
                assert logged(caplog, "the storage is busy")
                assert logged(caplog, "trying again in 1.6s")  # 2 s and more since it ended
                assert thread.is_alive()
                assert ledger.get_job(job_id).status == JobStatus.RUNNING  # nothing recorded yet
            finally:
                holder.execute("COMMIT")
                holder.close()
            status = JobStatus.COMPLETED if outcome == "done" else JobStatus.FAILED
            assert ledger.wait(job_id, timeout=30).status == status
            assert logged(caplog, "the storage is available again")
        assert not thread.is_alive() and worker.exit_status == 0
        if outcome == "done":  # how long the handler ran, not until it could be recorded
            assert ledger.get_job(job_id).duration_seconds == 0
        types = [e.type for e in ledger.job_events(job_id)]
        assert types.count("completed" if outcome == "done" else "failed") == 1
        assert types.count("error") == (0 if outcome == "done" else 1)
        assert ledger.verify().ok


def test_run_once_on_a_busy_ledger_raises_instead_of_waiting(tmp_path: Path) -> None:
    """With nothing in flight, a worker told to stop when idle (``run_once``, ``ledger work
    --stop-when-idle``: a cron job, a CI step) ends with the error, as before, instead of
    waiting out the lock for ever."""
    path = str(tmp_path / "ledger.db")
    with Ledger(path, busy_timeout=0.2) as ledger:
        job_id = ledger.create_job(1, CONFIG)
        holder = apsw.Connection(path)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(LedgerBusy):
                Worker(ledger, Blocked(), lease=60).run_once()
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert ledger.get_job(job_id).status == JobStatus.PENDING
