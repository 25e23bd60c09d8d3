"""`KnownJobs`: a command on a job this backend's last commits wrote skips reading its row back.
What must hold: a command never decides on a state other than the row's. Another connection's
commit, a write around the ledger on the write connection itself, a command rolled back to its
savepoint and a lost transaction all make the next command read the row."""

from __future__ import annotations

from pathlib import Path

import apsw
import msgspec
import pytest

from ledger import InvalidTransition, Ledger
from ledger.backends.sqlite.backend import SqliteBackend

CONFIG = {"role": "coder", "task": "known jobs"}


def backend_of(ledger: Ledger) -> SqliteBackend:
    backend = ledger._backend
    assert isinstance(backend, SqliteBackend)
    return backend


def test_a_commit_leaves_its_states_known_and_equal_to_the_rows(tmp_path: Path) -> None:
    with Ledger(str(tmp_path / "l.db")) as ledger:
        job = ledger.create_job(1, CONFIG)
        ledger.log_event(job, "progress", {"n": 1})
        known = backend_of(ledger)._known.committed
        assert job in known
        assert known[job].version == 2
        assert ledger.get_job(job).version == 2  # type: ignore[union-attr]


def test_another_connections_commit_is_seen(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    with Ledger(path) as first, Ledger(path) as second:
        job = first.create_job(1, CONFIG)
        first.log_event(job, "progress", {})
        assert job in backend_of(first)._known.committed
        second.cancel(job)  # another connection moves the job on
        with pytest.raises(InvalidTransition):  # decided on the row: cancelled
            first.log_event(job, "progress", {})
        assert first.get_job(job).status.value == "cancelled"  # type: ignore[union-attr]


def test_a_write_around_the_ledger_on_its_own_connection_is_seen(tmp_path: Path) -> None:
    with Ledger(str(tmp_path / "l.db")) as ledger:
        job = ledger.create_job(1, CONFIG)
        backend = backend_of(ledger)
        with backend._lock:  # written around the ledger, outside any of its transactions
            backend._conn.execute("UPDATE jobs SET status = 'cancelled' WHERE id = ?", (job,))
        with pytest.raises(InvalidTransition):
            ledger.log_event(job, "progress", {})


def test_a_command_rolled_back_to_its_savepoint_leaves_nothing_known(tmp_path: Path) -> None:
    with Ledger(str(tmp_path / "l.db")) as ledger:
        job = ledger.create_job(1, CONFIG)
        backend = backend_of(ledger)

        def saves_then_fails(tx: object) -> None:
            state = tx.load_job(job)  # type: ignore[attr-defined]
            moved = msgspec.structs.replace(state, version=state.version + 5)
            tx.save_jobs([], [(moved, ("version",))])  # type: ignore[attr-defined]
            raise RuntimeError("after saving")

        with backend.held_writes():
            ledger.log_event(job, "progress", {})  # the transaction's first command
            with pytest.raises(RuntimeError):
                backend.write("failing", saves_then_fails)  # rolled back to its savepoint
        known = backend._known.committed.get(job)  # (the undo forgets the whole group's saves)
        assert known is None or known.version == 2
        assert ledger.get_job(job).version == 2  # type: ignore[union-attr]
        assert ledger.log_event(job, "progress", {}) == 3


def test_a_lost_transaction_forgets_everything(tmp_path: Path) -> None:
    with Ledger(str(tmp_path / "l.db")) as ledger:
        job = ledger.create_job(1, CONFIG)
        backend = backend_of(ledger)
        assert backend._known.committed
        backend._lost()
        assert not backend._known.committed
        assert ledger.log_event(job, "progress", {}) == 2


def test_two_writers_in_turn_never_decide_on_a_stale_state(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    with Ledger(path) as first, Ledger(path) as second:
        job = first.create_job(1, CONFIG)
        for n in range(10):  # each appends on top of the other's last event
            writer = first if n % 2 else second
            assert writer.log_event(job, "progress", {"n": n}) == n + 2
        assert first.verify().ok
    conn = apsw.Connection(path)
    try:
        assert conn.execute("SELECT version FROM jobs WHERE id = ?", (job,)).get == 11
    finally:
        conn.close()


def test_negative_zero_cents_answer_as_the_row_reads(tmp_path: Path) -> None:
    """-0.0 cents is 0.0 cents: a command's answer (from a known state) and a read of the
    row (a REAL column, which has no -0.0) agree, sign included."""
    import math

    with Ledger(str(tmp_path / "l.db")) as ledger:
        job = ledger.create_job(1, CONFIG, max_cost_cents=-0.0)
        ledger.cancel(job)
        answered = ledger.retry(job)
        read = ledger.get_job(job)
        assert read is not None
        for value in (answered.max_cost_cents, read.max_cost_cents):
            assert value == 0.0 and math.copysign(1.0, value) == 1.0  # type: ignore[arg-type]


def test_at_most_known_jobs_are_kept_the_oldest_dropped_first(tmp_path: Path) -> None:
    """Past `KNOWN_JOBS` the oldest saved states go, one for one (a create loop keeps the last
    1,024), and a command on a dropped job reads its row and decides on it as before."""
    from ledger.backends.sqlite.backend import KNOWN_JOBS

    with Ledger(str(tmp_path / "l.db"), durability="normal") as ledger:
        first = ledger.create_job(1, CONFIG)
        ids = [first, *ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * 100)]
        ids += [ledger.create_job(1, CONFIG) for _ in range(KNOWN_JOBS)]
        known = backend_of(ledger)._known.committed
        assert len(known) == KNOWN_JOBS
        assert list(known) == ids[-KNOWN_JOBS:]  # the newest, in the order they were saved
        assert ledger.log_event(first, "progress", {"n": 1}) == 2  # read back: not known
        assert list(known)[-1] == first and len(known) == KNOWN_JOBS
        assert ids[-KNOWN_JOBS] not in known  # the oldest of those went to make room
        assert ledger.verify().ok
