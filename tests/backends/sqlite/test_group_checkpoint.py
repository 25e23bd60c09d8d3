"""A group's commands advance the jobs checkpoint once (`SqliteBackend`): the commands after
the first skip an UPDATE that would change nothing. What must hold: the checkpoint is LIVE after
every transaction that wrote jobs, also when it was left behind the head before (by another
connection, between two transactions, or before a group); the memory of "already advanced" never
outlives its transaction."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from ledger import JobNotFound, Ledger
from ledger.backends.sqlite.backend import SqliteBackend
from ledger.backends.sqlite.events_table import LIVE

CONFIG = {"role": "coder", "task": "checkpoint"}


def checkpoint(path: Path) -> int:
    conn = apsw.Connection(str(path))
    try:
        found = conn.execute("SELECT position FROM projection_checkpoints WHERE name = 'jobs'")
        return int(found.get)
    finally:
        conn.close()


def leave_behind(path: Path) -> None:
    """Another connection sets the jobs checkpoint to the head's number (not LIVE), as a
    projection folded up to there by hand would leave it."""
    conn = apsw.Connection(str(path))
    try:
        head = conn.execute("SELECT max(position) FROM events").get
        conn.execute("UPDATE projection_checkpoints SET position = ? WHERE name = 'jobs'", (head,))
    finally:
        conn.close()


def test_every_transaction_advances_a_checkpoint_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(str(path)) as ledger:
        job = ledger.create_job(1, CONFIG)
        assert checkpoint(path) == LIVE
        for _ in range(3):  # each time between two transactions of the same ledger
            leave_behind(path)
            assert checkpoint(path) != LIVE
            ledger.log_event(job, "progress", {"n": 1})
            assert checkpoint(path) == LIVE


def test_a_group_advances_it_and_its_later_commands_skip(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(str(path)) as ledger:
        jobs = [ledger.create_job(1, CONFIG) for _ in range(3)]
        backend = ledger._backend
        assert isinstance(backend, SqliteBackend)
        leave_behind(path)
        with backend.held_writes() as groups:
            with pytest.raises(JobNotFound):  # a first command that fails settles nothing
                ledger.log_event("no-such-job", "progress", {})
            for job in jobs:
                ledger.log_event(job, "progress", {"n": 2})
            assert backend._settled == {"jobs"}
        assert all(group.failure is None for group in groups)
        assert checkpoint(path) == LIVE
        leave_behind(path)
        with backend.held_writes():  # a new transaction: advanced again
            ledger.log_event(jobs[0], "progress", {"n": 3})
        assert checkpoint(path) == LIVE
    with Ledger(str(path)) as again:  # nothing replayed twice: versions as written
        assert [again.get_job(job).version for job in jobs] == [3, 2, 2]  # type: ignore[union-attr]
        assert again.verify().ok
