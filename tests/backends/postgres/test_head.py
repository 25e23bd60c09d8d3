"""The log's head (last position and its chain hash) as an appender reads it on PostgreSQL.

An appender that waited for the counter row's lock must get the head the other appender just
committed from that row alone. Before the counter held the hash, the head was a join with
``events``; at READ COMMITTED the waiter then saw the counter's new version joined with its
older snapshot of ``events`` (no such event yet), got no hash and hashed the whole log again
while every other appender waited: about one rehash of the log per contended command."""

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


def test_a_waiting_appender_reads_the_committed_head_without_rehashing(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rehash(conn: Any, after: int) -> Iterator[Any]:
        raise AssertionError("the head was recomputed from the whole log")

    appended, go = threading.Event(), threading.Event()

    def hold_the_head(step: Any) -> None:
        """A command that has appended (and so holds the counter row) and waits for ``go``."""
        step.append(held_job, [ev.Progress(payload={"step": 1})])
        appended.set()
        assert go.wait(DEADLINE)

    first, second = Ledger(url), Ledger(url)
    try:
        held_job, job = (j.id for j in first.jobs())
        monkeypatch.setattr(events_table, "chain_rows", no_rehash)
        held: list[Any] = []
        holder = _in_thread(lambda: first._service.run("holding the head", hold_the_head), held)
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
        assert [e.version for e in second.job_events(job)] == [1, 2]
        assert second.verify().ok
    finally:
        go.set()
        first.close()
        second.close()


def test_a_counter_without_its_hash_reads_it_from_the_events(url: str) -> None:
    """A counter from before the column (or after an unhashed import) holds no hash: the head
    comes from the last event's row, and the next append stores it in the counter again."""
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
