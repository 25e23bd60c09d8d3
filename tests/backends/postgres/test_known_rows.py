"""A lone command on a job this process wrote last decides on the row kept in memory.

On PostgreSQL a lone ``log_event`` (or heartbeat, complete, fail) used to wait twice: once for
its locked read of the job's row, once for its COMMIT. The backend now keeps each row its lone
commits wrote, with the row version's ``xmin`` (`_Transactions.known`), and a lone command on
such a job decides on it without reading; its transaction's first statement (the guard) locks
the row and checks it is still that version (``version`` and ``xmin``), or fails with a
serialization failure, and the command runs again on the row as it is. What is proved here,
each against a real server:

- such a command sends BEGIN, the guard, its one write and COMMIT, and reads nothing before
  the COMMIT's answer;
- the row kept is the row as stored (every field, and the xmin), after create, claim,
  heartbeat, log_event, charge and complete;
- a row another connection changed is read again: its version (a later event), its status (a
  cancelled job retried elsewhere: a refusal decided from memory, and a no-op, both run again
  on the row as it is), its subtree cost (a child's charge moves the parent's row without an
  event of its own), and every row after a replay elsewhere;
- the guard waits for a row another transaction holds with the log's counter free (the lock
  order: the row first, then the counter).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ledger import InvalidTransition, JobStatus, Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres import jobs_table  # noqa: E402
from ledger.backends.postgres.backend import PostgresBackend  # noqa: E402
from tests.backends.postgres.test_combined import READ, Sent  # noqa: E402
from tests.backends.postgres.test_group_commit import finish_all, led  # noqa: E402
from tests.backends.postgres.test_lock_order import (  # noqa: E402
    JOB_ROW,
    Background,
    RowHolder,
    counter_is_free,
    wait_for_a_lock_wait,
)
from tests.group_support import Gate, log_of  # noqa: E402

CONFIG = {"role": "coder", "task": "rows kept in memory"}


@pytest.fixture
def ledger(postgres_schema: str) -> Iterator[Ledger]:
    with Ledger(postgres_schema, busy_timeout=10) as opened:
        yield opened


@pytest.fixture
def other(postgres_schema: str) -> Iterator[Ledger]:
    """A second `Ledger` on the same schema: another process's writes, as far as the first
    one can tell."""
    with Ledger(postgres_schema, busy_timeout=10) as opened:
        yield opened


def known(ledger: Ledger) -> dict[str, Any]:
    backend = ledger._backend
    assert isinstance(backend, PostgresBackend)
    return backend._transactions.known


def stored(url: str, job_id: str) -> tuple[Any, str]:
    """The job's row as the server holds it, and its xmin."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        state = jobs_table.load(conn, job_id)
        row = conn.execute("SELECT xmin::text FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert state is not None and row is not None
    return state, row[0]


def server_run(url: str) -> str:
    """The server's start (epoch seconds) and its run token, as the guard compares them."""
    with psycopg.connect(url, autocommit=True) as conn:
        start = conn.execute("SELECT extract(epoch FROM pg_postmaster_start_time())::text")
        token = conn.execute("SELECT token FROM ledger_run").fetchone()
        assert token is not None, "no run token: a held write makes one"
        return f"{start.fetchone()[0]} {token[0]}"  # type: ignore[index]


def is_kept_as_stored(ledger: Ledger, url: str, job_id: str) -> bool:
    """The row kept equals the stored one, with its xmin, the server's start and the writer's
    64-bit transaction id (whose low 32 bits are the xmin: a lone commit has no savepoint)."""
    state, xmin = stored(url, job_id)
    kept = known(ledger)[job_id]
    assert int(kept.xid) % 2**32 == int(xmin)
    return (kept.state, kept.xmin, kept.started) == (state, xmin, server_run(url))


def test_a_lone_command_on_a_job_it_wrote_reads_nothing_before_its_commit(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = ledger.create_job(1, CONFIG)
    sent = Sent(ledger, monkeypatch, reads=True)
    assert ledger.log_event(job_id, "progress", {"n": 1}) == 2
    statements = sent.take()
    assert statements[0] == "BEGIN" and statements[1].startswith("SELECT ledger_expect_row")
    assert statements[2].startswith("WITH e AS (INSERT INTO events")
    assert statements[3:] == ["COMMIT", READ]  # the write's answer (the xmin), after the COMMIT
    assert [e.version for e in ledger.job_events(job_id)] == [1, 2]
    assert ledger.verify().ok


def test_the_row_kept_is_the_row_as_stored(ledger: Ledger, postgres_schema: str) -> None:
    parent = ledger.create_job(1, CONFIG, priority=5)
    job_id = ledger.create_job(1, CONFIG, parent_id=parent, max_attempts=3)

    def same() -> None:
        assert is_kept_as_stored(ledger, postgres_schema, job_id)

    same()  # a new job: its real created_position, not the stand-in its state had
    claimed = ledger.claim("w", lease=60)
    assert claimed is not None and claimed.id == parent  # the higher priority
    claimed = ledger.claim("w", lease=60)
    assert claimed is not None and claimed.id == job_id
    same()
    ledger.heartbeat(job_id, worker_id="w", lease=120)
    same()
    ledger.log_event(job_id, "tool_call", {"tool": "search"})
    same()
    ledger.complete(job_id, "done", cost_cents=2.5, worker_id="w")
    assert job_id not in known(ledger)  # the cost moved its parent's row too: not one row
    ledger.log_event(parent, "progress", {"n": 1})
    assert is_kept_as_stored(ledger, postgres_schema, parent)
    assert known(ledger)[parent].state.subtree_cost_cents == 2.5
    assert ledger.verify().ok


def ran_again(caplog: pytest.LogCaptureFixture) -> int:
    """How many commands the guard sent back to run again (the backend's DEBUG record)."""
    return sum("changed since this process last wrote it" in r.getMessage() for r in caplog.records)


def test_a_job_another_connection_appended_to_is_read_again(
    ledger: Ledger, other: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ledger.backends.postgres.backend")
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.log_event(job_id, "progress", {"by": "first"}) == 2
    assert other.log_event(job_id, "progress", {"by": "other"}) == 3
    assert ledger.log_event(job_id, "progress", {"by": "first, again"}) == 4
    assert [e.payload for e in ledger.job_events(job_id)[1:]] == [
        {"by": "first"},
        {"by": "other"},
        {"by": "first, again"},
    ]
    assert ran_again(caplog) == 1
    assert ledger.verify().ok


def test_a_refusal_decided_from_memory_runs_again_on_the_row_as_it_is(
    ledger: Ledger, other: Ledger
) -> None:
    """Kept as cancelled, the job was retried elsewhere: the refusal the kept row gives is
    not the answer."""
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.cancel(job_id, cascade=False) is True
    with pytest.raises(InvalidTransition):
        ledger.log_event(job_id, "progress", {"n": 0})  # kept, and true: refused
    assert other.retry(job_id).status is JobStatus.PENDING
    assert ledger.log_event(job_id, "progress", {"n": 1}) == 4
    assert ledger.get_job(job_id).status is JobStatus.PENDING  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_a_no_op_decided_from_memory_runs_again_on_the_row_as_it_is(
    ledger: Ledger, other: Ledger
) -> None:
    """Kept as cancelled, the job was retried elsewhere: "already ended, nothing to do" is
    not the answer either (a command that writes nothing sends the guard alone)."""
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.cancel(job_id, cascade=False) is True
    assert ledger.cancel(job_id, cascade=False) is False  # kept, and true
    assert other.retry(job_id).status is JobStatus.PENDING
    assert ledger.cancel(job_id, cascade=False) is True
    assert ledger.get_job(job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_a_cost_rolled_up_from_another_connection_is_read_again(
    ledger: Ledger, other: Ledger
) -> None:
    """A child's charge moves its parent's subtree cost without an event of the parent's (its
    version stays): the xmin tells the row changed."""
    parent = ledger.create_job(1, CONFIG, priority=5)
    claimed = ledger.claim("w", lease=60)
    assert claimed is not None and claimed.id == parent
    ledger.charge(parent, 1.0, worker_id="w")  # kept: subtree cost 1
    child = other.create_job(1, CONFIG, parent_id=parent)
    claimed = other.claim("w2", lease=60)
    assert claimed is not None and claimed.id == child
    other.charge(child, 10.0, worker_id="w2")  # the parent's row: subtree cost 11
    ledger.charge(parent, 100.0, worker_id="w")
    job = ledger.get_job(parent)
    assert job is not None and job.cost_cents == 101.0 and job.subtree_cost_cents == 111.0
    assert ledger.verify().ok


def test_every_row_is_read_again_after_a_replay_elsewhere(ledger: Ledger, other: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.log_event(job_id, "progress", {"n": 1}) == 2
    other.replay()  # the same rows, written again
    assert ledger.log_event(job_id, "progress", {"n": 2}) == 3
    assert ledger.verify().ok


def test_the_guard_waits_for_a_held_row_with_the_counter_free(
    ledger: Ledger, postgres_schema: str
) -> None:
    job_id = ledger.create_job(1, CONFIG)
    assert job_id in known(ledger)
    holder = RowHolder(postgres_schema, JOB_ROW, job_id)
    try:
        logged = Background(lambda: ledger.log_event(job_id, "progress", {"n": 1}))
        assert wait_for_a_lock_wait(postgres_schema), "the guard never waited for the row"
        assert counter_is_free(postgres_schema)
    finally:
        holder.release()
    assert logged.join() == 2
    assert ledger.verify().ok


def test_a_row_from_memory_found_changed_while_others_queue_runs_again_and_they_commit(
    ledger: Ledger,
    other: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lone caller decided on a row kept in memory that another connection changed, and is
    held until 4 callers queue behind it: its guard goes out with theirs (they join its
    transaction), fails, and every caller still gets its own right answer."""
    caplog.set_level(logging.DEBUG, logger="ledger.backends.postgres.backend")
    job_id = ledger.create_job(1, CONFIG)
    neighbour = ledger.create_job(2, CONFIG)
    assert other.log_event(job_id, "progress", {"by": "other"}) == 2  # behind what is kept
    gate = Gate(ledger, monkeypatch)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"by": "first"}),
        [
            *(
                lambda n=n: ledger.log_event(neighbour, "progress", {"n": n})  # type: ignore[misc]
                for n in range(3)
            ),
            lambda: ledger.log_event(job_id, "progress", {"by": "queued"}),
        ],
    )
    gate.open()
    finish_all([first, *rest])
    assert [first.error, *(c.error for c in rest)] == [None] * 5
    assert sorted(c.result for c in rest[:3]) == [2, 3, 4]
    assert sorted([first.result, rest[3].result]) == [3, 4]
    assert log_of(ledger) == {job_id: [1, 2, 3, 4], neighbour: [1, 2, 3, 4]}
    assert ran_again(caplog) >= 1
    assert ledger.verify().ok


@pytest.mark.parametrize("why", ["restarted", "recovered", "wrapped"])
def test_a_row_kept_from_another_server_run_or_2_31_transactions_ago_is_read_again(
    ledger: Ledger, other: Ledger, caplog: pytest.LogCaptureFixture, why: str
) -> None:
    """An xmin names one transaction within one run of the server and 2^31 transactions: a
    server that lost acknowledged commits hands their ids out again, and the 32-bit id wraps.
    The kept row says when and where it was written; here that is made to say another start
    of the server, another run token (as after crash recovery, which empties the unlogged
    table), or a transaction 2^31 ago, and the row, though unchanged, is read again."""
    caplog.set_level(logging.DEBUG, logger="ledger.backends.postgres.backend")
    job_id = ledger.create_job(1, CONFIG)
    kept = known(ledger)[job_id]
    start, token = kept.started.split(" ")
    if why == "restarted":
        known(ledger)[job_id] = kept._replace(started=f"{float(start) - 60} {token}")
    elif why == "recovered":
        known(ledger)[job_id] = kept._replace(started=f"{start} {token[::-1]}")
    else:
        known(ledger)[job_id] = kept._replace(xid=str(int(kept.xid) - 2**31))
    assert ledger.log_event(job_id, "progress", {"n": 1}) == 2
    assert ran_again(caplog) == 1
    assert ledger.log_event(job_id, "progress", {"n": 2}) == 3  # kept again, as written now
    assert ran_again(caplog) == 1
    assert ledger.verify().ok


def test_a_reconnected_writer_keeps_no_row_from_before(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server the writer lost may have lost commits too: after a reconnect every row is
    read again (the lock, waited for), none taken from memory."""
    job_id = ledger.create_job(1, CONFIG)
    backend = ledger._backend
    assert isinstance(backend, PostgresBackend)
    backend._conn.close()  # as a server that went away leaves it
    statements: list[str] = []
    original = psycopg.Cursor.execute

    def execute(cursor: Any, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        if cursor.connection is backend._conn:  # the writer as it is now: a new connection
            statements.append(str(statement))
        return original(cursor, statement, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    assert ledger.log_event(job_id, "progress", {"n": 1}) == 2  # on a new connection
    assert not any("ledger_expect_row" in s for s in statements)
    assert any(s.startswith(jobs_table.lock_row_statement) for s in statements)
    assert ledger.verify().ok
