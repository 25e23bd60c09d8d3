"""The log's head (last position and its chain hash) on PostgreSQL, with appenders in parallel.

The insert trigger hands out each event's position and chain hash from the counter row, which
holds the head's hash too. A live append sends its rows with the COMMIT, so a command holds the
head only while the server runs the end of its transaction, never while its process works. An
appender that waited for the counter row chains onto the head the other one committed (before,
the head was read with a join that gave a waiting appender no hash at READ COMMITTED, and it
hashed the whole log again while every other appender waited)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ledger import Ledger
from ledger.backends.postgres import events_table
from ledger.domain import chain
from ledger.domain import events as ev

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
DEADLINE = 30.0  # seconds: a bound on waiting for the other session, never a timing assertion


@pytest.fixture
def url(postgres_schema: str) -> Iterator[str]:
    with Ledger(postgres_schema) as ledger:
        ledger.create_job(1, {"n": 1})
        ledger.create_job(2, {"n": 2})
    yield postgres_schema


def _wait_until_blocked(watcher: Any, pid: int) -> None:
    """Poll until session ``pid`` waits on a lock (the counter row), with a deadline."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        row = watcher.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row is not None and row[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError(f"session {pid} never waited for the counter row")


def _in_thread(call: Any, out: list[Any]) -> threading.Thread:
    def body() -> None:
        try:
            out.append(call())
        except BaseException as e:  # the test asserts on it
            out.append(e)

    thread = threading.Thread(target=body)
    thread.start()
    return thread


def _holding(job: str, appended: threading.Event, go: threading.Event, sync: bool) -> Any:
    """A command that appends to ``job`` and waits for ``go`` before it commits. ``sync``:
    first make the server run the queued rows (a fetch flushes the pipeline), so it holds the
    counter row while it waits."""

    def work(step: Any) -> None:
        step.append(job, [ev.Progress(payload={"step": 1})])
        if sync:
            step.tx.last_position()
        appended.set()
        assert go.wait(DEADLINE)

    return work


def _positions(ledger: Ledger, job: str) -> list[int]:
    return [e.position for e in ledger.job_events(job)]


def test_an_appender_that_is_still_working_holds_no_one_up(url: str) -> None:
    appended, go = threading.Event(), threading.Event()
    first, second = Ledger(url), Ledger(url)
    try:
        held_job, job = (j.id for j in first.jobs())
        work = _holding(held_job, appended, go, sync=False)
        held: list[Any] = []
        holder = _in_thread(lambda: first._service.run("holding", work), held)
        assert appended.wait(DEADLINE)
        second.log_event(job, "progress", {"step": 2})  # would wait for ``go`` if held up
        go.set()
        holder.join(DEADLINE)
        assert held == [None]
        # in commit order: the second command committed first
        assert _positions(second, job)[-1] < _positions(second, held_job)[-1]
        assert second.verify().ok
    finally:
        go.set()
        first.close()
        second.close()


def test_a_waiting_appender_chains_onto_the_head_just_committed(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rehash(conn: Any, after: int) -> Iterator[Any]:
        raise AssertionError("the head was recomputed from the whole log")

    appended, go = threading.Event(), threading.Event()
    first, second = Ledger(url), Ledger(url)
    try:
        held_job, job = (j.id for j in first.jobs())
        monkeypatch.setattr(events_table, "chain_rows", no_rehash)
        work = _holding(held_job, appended, go, sync=True)
        held: list[Any] = []
        holder = _in_thread(lambda: first._service.run("holding the head", work), held)
        assert appended.wait(DEADLINE)
        logged: list[Any] = []
        waiter = _in_thread(lambda: second.log_event(job, "progress", {"step": 2}), logged)
        with psycopg.connect(url, autocommit=True) as watcher:
            _wait_until_blocked(watcher, second._backend._conn.info.backend_pid)
        go.set()
        holder.join(DEADLINE)
        waiter.join(DEADLINE)
        assert held == [None] and len(logged) == 1 and not isinstance(logged[0], BaseException)
        monkeypatch.undo()
        assert _positions(second, held_job)[-1] < _positions(second, job)[-1]
        assert second.verify().ok
    finally:
        go.set()
        first.close()
        second.close()


def test_a_counter_without_its_hash_gets_it_when_the_ledger_opens(url: str) -> None:
    """A counter from before the column (or after an unhashed import) holds no hash: opening
    the ledger records the last event's, and the trigger chains the next append onto it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE event_counter DISABLE TRIGGER event_counter_forward")
        conn.execute("UPDATE event_counter SET last_hash = NULL")
        conn.execute("ALTER TABLE event_counter ENABLE TRIGGER event_counter_forward")
    with Ledger(url) as ledger:
        before = ledger.head()
        assert before[0] == 2 and before[1] != chain.GENESIS.hex()
        ledger.create_job(2, {"n": 2})
        after = ledger.head()
        assert ledger.verify(expect_head=before).ok
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT last_position, last_hash FROM event_counter").fetchone()
    assert stored == (after[0], after[1])


def test_an_import_of_unhashed_events_then_an_append_chains(url: str) -> None:
    """Lines of an export from before the chain carry no hash: the import stores none, records
    the head's hash computed over them in the counter, and the next append chains onto it."""
    import json

    from tests import postgres_cluster

    with Ledger(url) as source:
        lines = [json.loads(line) for line in source.export_events()]
    for line in lines:
        del line["hash"]
    target_url = postgres_cluster.create_schema(postgres_cluster.shared_url(), prefix="unhashed")
    try:
        with Ledger(target_url) as target:
            target.import_events(json.dumps(line) for line in lines)
            head = target.head()
            target.create_job(3, {"n": 3})
            assert target.verify(expect_head=head).ok
            assert len(target.read_all()) == len(lines) + 1
        with psycopg.connect(target_url) as conn:
            hashes = [h for (h,) in conn.execute("SELECT hash FROM events ORDER BY position")]
        assert all(h is None for h in hashes[:-1]) and hashes[-1] is not None
    finally:
        postgres_cluster.drop_schema(target_url)


def test_the_trigger_hashes_as_the_chain_does(postgres_schema: str) -> None:
    """The hashes the insert trigger computes in SQL equal `chain.link`'s, on times at both ends
    of the range, non-ASCII text and JSON whose text no parser would keep."""
    from datetime import UTC, datetime

    from ledger.domain.timeutil import to_text

    last = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    rows = [
        ("job-\u2603", 1, "progress", '{"b":1,"a":2, "x" : 1e3}', datetime(1, 1, 1, tzinfo=UTC)),
        ("caf\u00e9", 1, "t\u00e9", '"\u2603 \\u0000"', last),
        ("job-\u2603", 2, "step", "[]", datetime(2026, 6, 30, 23, 59, 59, 123456, tzinfo=UTC)),
    ]
    Ledger(postgres_schema).close()  # the schema
    with psycopg.connect(postgres_schema) as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        for row in rows:
            conn.execute(events_table.insert_deferred_statement, row)
        stored = [h for (h,) in conn.execute("SELECT hash FROM events ORDER BY position")]
        conn.rollback()  # not a ledger's log: nothing of it stays
    previous = chain.GENESIS
    for position, (job, version, kind, data, at) in enumerate(rows, start=1):
        previous = chain.link(previous, position, job, version, kind, data.encode(), to_text(at))
        assert stored[position - 1] == previous.hex()
