"""The PostgreSQL schema (ledger/backends/postgres/schema.sql) on a real server, with raw psycopg.

These prove the laws the database itself must hold before any backend code exists: followers
never skip (the counter row; and why a sequence is not enough), append-only, gap-free versions,
exact round trips, concurrent schema creation, SKIP LOCKED claims, NOTIFY wake-ups. Concurrency
uses real processes, each with its own connection.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger.backends.sqlite.jobs_table import COLUMNS
from ledger.domain.model import JobStatus
from ledger.domain.timeutil import to_text as to_db

psycopg = pytest.importorskip(
    "psycopg", reason="psycopg is not installed: pip install -e '.[test]'"
)
from psycopg import errors  # noqa: E402  (after the importorskip above)

SCHEMA = (
    Path(__file__).resolve().parent.parent / "ledger/backends/postgres/schema.sql"
).read_text()
AT = "2026-01-01T12:00:00.000000+00:00"
APPEND = (
    "INSERT INTO events (job_id, version, type, data, recorded_at) "
    "VALUES (%s, %s, 'created', '{}', %s) RETURNING position"
)
FORK = multiprocessing.get_context("fork")  # children inherit nothing open: each connects anew
DEADLINE = 30.0  # seconds; a generous bound for polling loops, never a timing assertion


def connect(url: str, **kwargs: Any) -> Any:
    """A connection in UTC, as the backend must use (see schema.sql on recorded_at)."""
    conn = psycopg.connect(url, connect_timeout=10, **kwargs)
    conn.execute("SET TimeZone TO 'UTC'")
    conn.commit()
    return conn


def apply_schema(url: str) -> None:
    with connect(url) as conn:
        conn.execute(SCHEMA)


@pytest.fixture
def ledger_db(postgres_schema: str) -> str:
    """A fresh schema with the ledger's tables in it."""
    apply_schema(postgres_schema)
    return postgres_schema


def positions(conn: Any, after: int = 0, table: str = "events") -> list[int]:
    query = f"SELECT position FROM {table} WHERE position > %s ORDER BY position"
    return [row[0] for row in conn.execute(query, (after,))]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after `DEADLINE` saying what never happened."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def run_processes(target: Callable[..., None], args_for: list[tuple]) -> list[Any]:
    """Start one real process per args tuple (each gets a result queue last) and collect what
    each puts on its queue; an exception in a child comes back as its text."""
    results: Any = FORK.Queue()
    children = [FORK.Process(target=target, args=(*args, results)) for args in args_for]
    for child in children:
        child.start()
    collected = [results.get(timeout=DEADLINE) for _ in children]
    for child in children:
        child.join(DEADLINE)
        assert child.exitcode == 0, f"child exited {child.exitcode}"
    failures = [item for item in collected if isinstance(item, str)]
    assert not failures, failures
    return collected


# -- (a) followers never skip: the counter row ------------------------------------------------


def _writer(url: str, writer: int, transactions: int, start: Any, results: Any) -> None:
    """Append 1-3 events per transaction, each transaction a new job's first versions."""
    try:
        appended = []
        with connect(url) as conn:
            start.wait(DEADLINE)
            for n in range(transactions):
                with conn.transaction():
                    for version in range(1, 2 + n % 3):
                        row = conn.execute(APPEND, (f"w{writer}-{n}", version, AT)).fetchone()
                        appended.append(row[0])
        results.put(appended)
    except Exception as e:  # reported to the parent, which fails the test with it
        results.put(f"writer {writer}: {e!r}")


def test_follower_sees_every_event_once_with_concurrent_writers(ledger_db: str) -> None:
    writers, transactions = 4, 120
    start = FORK.Barrier(writers + 1)
    results: Any = FORK.Queue()
    children = [
        FORK.Process(target=_writer, args=(ledger_db, w, transactions, start, results))
        for w in range(writers)
    ]
    for child in children:
        child.start()
    seen: list[int] = []
    polls = 0
    with connect(ledger_db, autocommit=True) as follower:
        start.wait(DEADLINE)
        deadline = time.monotonic() + DEADLINE
        while any(child.is_alive() for child in children) and time.monotonic() < deadline:
            seen += positions(follower, seen[-1] if seen else 0)
            polls += 1
        appended = [results.get(timeout=DEADLINE) for _ in children]
        for child in children:
            child.join(DEADLINE)
        seen += positions(follower, seen[-1] if seen else 0)  # what committed after the last poll
        stored = positions(follower)
    assert not [a for a in appended if isinstance(a, str)], appended
    total = writers * sum(1 + n % 3 for n in range(transactions))
    assert stored == list(range(1, total + 1)), "positions must be 1..N without gaps"
    assert seen == stored, "the follower must see every event exactly once, in order"
    assert sorted(p for batch in appended for p in batch) == stored
    for batch in appended:  # each writer's own events got increasing positions
        assert batch == sorted(batch)
    assert polls > 1


# -- (b) why: a sequence hands out numbers that commit out of order ----------------------------


def test_a_sequence_lets_a_follower_skip_an_event_that_commits_late(ledger_db: str) -> None:
    """The reason for the counter row, shown deterministically: A takes position 1 and stays
    open, B takes 2 and commits, the follower reads 2, A commits 1 below the follower's mark."""
    with connect(ledger_db, autocommit=True) as setup:
        setup.execute("CREATE TABLE seq_events (position bigserial PRIMARY KEY, job_id text)")
    insert = "INSERT INTO seq_events (job_id) VALUES (%s) RETURNING position"
    with (
        connect(ledger_db) as a,
        connect(ledger_db) as b,
        connect(ledger_db, autocommit=True) as follower,
    ):
        assert a.execute(insert, ("a",)).fetchone()[0] == 1  # A's transaction stays open
        assert b.execute(insert, ("b",)).fetchone()[0] == 2
        b.commit()
        first = positions(follower, 0, "seq_events")
        a.commit()
        later = positions(follower, first[-1], "seq_events")
        stored = positions(follower, 0, "seq_events")
    assert first == [2]
    assert later == [], "a follower at position > 2 never sees A's event"
    assert stored == [1, 2], "yet event 1 is in the table: the follower skipped it"


def _backend_waits_on_lock(conn: Any, pid: int) -> bool:
    query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
    return conn.execute(query, (pid,)).fetchone()[0] == "Lock"


def test_the_counter_row_makes_a_later_appender_wait_for_the_earlier_commit(
    ledger_db: str,
) -> None:
    """The same interleaving on events: B's append waits for A's commit, so B gets position 2
    only after 1 is visible, and the follower sees both."""
    with (
        connect(ledger_db) as a,
        connect(ledger_db) as b,
        connect(ledger_db, autocommit=True) as follower,
    ):
        assert a.execute(APPEND, ("a", 1, AT)).fetchone()[0] == 1  # A holds the counter
        got: list[int] = []

        def append_b() -> None:
            got.append(b.execute(APPEND, ("b", 1, AT)).fetchone()[0])
            b.commit()

        thread = threading.Thread(target=append_b)
        thread.start()
        wait_for(lambda: _backend_waits_on_lock(follower, b.info.backend_pid), "B to wait")
        assert positions(follower) == [], "nothing is visible while A is open"
        a.commit()
        thread.join(DEADLINE)
        assert got == [2]
        assert positions(follower) == [1, 2]


# -- (c) append-only, gap-free versions, exact round trips -------------------------------------


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("UPDATE events SET type = 'changed'", "events are append-only: UPDATE is not allowed"),
        ("DELETE FROM events", "events are append-only: DELETE is not allowed"),
        ("TRUNCATE events", "events are append-only: TRUNCATE is not allowed"),
        ("UPDATE event_counter SET last_position = 0", "event_counter moves forward onto"),
        ("UPDATE event_counter SET last_position = 9", "event_counter moves forward onto"),
        (  # one step past the log's last event: a gap the next append would leave
            "UPDATE event_counter SET last_position = last_position + 1",
            "event_counter moves forward onto the log's last event only",
        ),
        ("DELETE FROM event_counter", "event_counter only moves forward: DELETE"),
        ("TRUNCATE event_counter", "event_counter only moves forward: TRUNCATE"),
    ],
)
def test_history_cannot_be_rewritten(ledger_db: str, statement: str, message: str) -> None:
    with connect(ledger_db) as conn:
        conn.execute(APPEND, ("job", 1, AT))
        conn.commit()
        with pytest.raises(errors.RaiseException, match=message):
            conn.execute(statement)
        conn.rollback()
        assert conn.execute("SELECT job_id, version, type FROM events").fetchall() == [
            ("job", 1, "created")
        ]
        assert conn.execute("SELECT last_position FROM event_counter").fetchone() == (1,)


def test_versions_are_gap_free_and_a_failed_append_leaves_no_position_gap(ledger_db: str) -> None:
    with connect(ledger_db) as conn:
        conn.execute(APPEND, ("job", 1, AT))
        conn.commit()
        with pytest.raises(errors.CheckViolation, match="job job is at version 1: version 3"):
            conn.execute(APPEND, ("job", 3, AT))
        conn.rollback()
        with pytest.raises(errors.UniqueViolation):  # a stale expected version
            conn.execute(APPEND, ("job", 1, AT))
        conn.rollback()
        with pytest.raises(
            errors.CheckViolation, match="position 7 given, but the next position is 2"
        ):
            conn.execute(
                "INSERT INTO events (position, job_id, version, type, data, recorded_at) "
                "VALUES (7, 'other', 1, 'created', '{}', %s)",
                (AT,),
            )
        conn.rollback()
        assert conn.execute(APPEND, ("job", 2, AT)).fetchone() == (2,)
        conn.commit()
        assert positions(conn) == [1, 2]


def test_only_an_empty_log_may_start_at_a_later_position(ledger_db: str) -> None:
    """An import of an export that began after position 1 names its positions: the empty log
    takes the first as given, and from then on positions run without gaps."""
    named = (
        "INSERT INTO events (position, job_id, version, type, data, recorded_at, hash) "
        "VALUES (%s, %s, 1, 'created', '{}', %s, %s)"
    )
    refusal = "position 7 given, but the next position is 6"
    with connect(ledger_db) as conn:
        conn.execute(  # where the import's chain starts: written before its first line
            "INSERT INTO projection_checkpoints (name, schema_version, position) "
            "VALUES ('chain_start', 1, 5)"
        )
        conn.commit()
        with pytest.raises(errors.CheckViolation, match=refusal):
            conn.execute(  # two rows of one statement: the second must follow the first
                named.replace("%s)", "%s), (7, 'b', 1, 'created', '{}', %s, NULL)"),
                (5, "a", AT, "0" * 64, AT),
            )
        conn.rollback()
        conn.execute(named, (5, "a", AT, "0" * 64))
        with pytest.raises(errors.CheckViolation, match=refusal):
            conn.execute(named, (7, "b", AT, None))
        conn.rollback()
        assert positions(conn) == []
        conn.execute(named, (5, "a", AT, "0" * 64))
        assert conn.execute(APPEND, ("a", 2, AT)).fetchone() == (6,)
        conn.commit()
        assert conn.execute("SELECT last_position FROM event_counter").fetchone() == (6,)


ROUND_TRIP_DATA = [
    '{"b":1,"a":2}',  # key order
    '{"a":1,"a":2}',  # a duplicate key
    '{ "spaced" : [1, 2.50, 1e3] }',  # spacing and number spelling
    '{"big":123456789012345678901234567890}',
    '{"nul":"\\u0000","snow":"\\u2603","raw":"\u2603 caf\u00e9"}',
    "[]",
    '"text"',
]


def test_event_data_and_times_read_back_exactly(ledger_db: str) -> None:
    """json keeps the exact text (jsonb would not: shown on the same values); timestamptz
    gives back the same instant, which to_db() spells as the text that was written."""
    times = [
        AT,
        to_db(datetime(1, 1, 1, tzinfo=UTC)),
        to_db(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        "2026-06-30T23:59:59.123456+00:00",
    ]
    insert = (
        "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES (%s, 1, 't', %s, %s)"
    )
    with connect(ledger_db) as conn:
        for n, data in enumerate(ROUND_TRIP_DATA):
            conn.execute(insert, (f"job-{n}", data, times[n % len(times)]))
        rows = conn.execute(
            "SELECT data::text, recorded_at FROM events ORDER BY position"
        ).fetchall()
        rewritten = conn.execute(
            "SELECT data::jsonb::text FROM events WHERE job_id IN ('job-0', 'job-1') "
            "ORDER BY position"
        ).fetchall()
        with pytest.raises(errors.UntranslatableCharacter):
            conn.execute("SELECT data::jsonb FROM events WHERE job_id = 'job-4'")
    assert [row[0] for row in rows] == ROUND_TRIP_DATA
    assert [to_db(row[1]) for row in rows] == [times[n % len(times)] for n in range(len(rows))]
    # why not jsonb: it reorders keys, keeps only the last duplicate and refuses \u0000
    assert rewritten == [('{"a": 2, "b": 1}',), ('{"a": 2}',)]


def test_jobs_table_matches_the_sqlite_projection(ledger_db: str) -> None:
    """Same columns in the same order, and the status CHECK lists exactly the JobStatus values."""
    with connect(ledger_db) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'jobs' AND table_schema = current_schema() "
            "ORDER BY ordinal_position"
        ).fetchall()
        checks = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'jobs'::regclass AND contype = 'c'"
        ).fetchall()
    assert tuple(name for (name,) in columns) == COLUMNS
    status_check = next(text for (text,) in checks if "ANY" in text)
    assert set(re.findall(r"'(\w+)'::text", status_check)) == {s.value for s in JobStatus}


# -- (d) schema creation by several processes at once ------------------------------------------


def _create_schema(url: str, start: Any, results: Any) -> None:
    try:
        with connect(url) as conn:
            start.wait(DEADLINE)
            conn.execute(SCHEMA)
        results.put(True)
    except Exception as e:
        results.put(f"{e!r}")


def test_schema_created_by_six_processes_at_once(postgres_database: str) -> None:
    start = FORK.Barrier(6)
    assert run_processes(_create_schema, [(postgres_database, start)] * 6) == [True] * 6
    with connect(postgres_database) as conn:
        assert conn.execute("SELECT version FROM ledger_schema").fetchall() == [(1,)]
        assert conn.execute("SELECT last_position FROM event_counter").fetchall() == [(0,)]


def test_schema_refuses_a_database_from_a_newer_release(ledger_db: str) -> None:
    with connect(ledger_db) as conn:
        conn.execute("UPDATE ledger_schema SET version = 2")
        conn.commit()
        with pytest.raises(errors.FeatureNotSupported, match="written by a newer release"):
            conn.execute(SCHEMA)


# -- (e) claims with SKIP LOCKED ---------------------------------------------------------------

CLAIM = (
    "SELECT id FROM jobs WHERE status = 'pending' AND run_at <= now() "
    "ORDER BY priority DESC, created_at, created_position FOR UPDATE SKIP LOCKED LIMIT 1"
)
TAKE = (
    "UPDATE jobs SET status = 'running', worker_id = %s, attempts = attempts + 1, "
    "lease_expires_at = now() + interval '1 minute' WHERE id = %s"
)


def _claimer(url: str, worker: str, start: Any, results: Any) -> None:
    try:
        claimed = []
        with connect(url) as conn:
            start.wait(DEADLINE)
            while True:
                with conn.transaction():
                    row = conn.execute(CLAIM).fetchone()
                    if row is None:
                        break
                    conn.execute(TAKE, (worker, row[0]))
                claimed.append(row[0])
        results.put((worker, claimed))
    except Exception as e:
        results.put(f"{worker}: {e!r}")


def insert_pending_jobs(conn: Any, count: int, queue: str = "default") -> list[str]:
    ids = [f"job-{n:04d}" for n in range(count)]
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO jobs (id, chat_id, config, status, created_at, updated_at, version, "
            "queue, priority, run_at, attempts, max_attempts, created_position) "
            "VALUES (%s, 1, '{}', 'pending', %s, %s, 1, %s, %s, %s, 0, 3, %s)",
            [(job, AT, AT, queue, n % 3, AT, n + 1) for n, job in enumerate(ids)],
        )
    return ids


def test_skip_locked_claims_never_give_one_job_twice(ledger_db: str) -> None:
    with connect(ledger_db) as conn:
        ids = insert_pending_jobs(conn, 200)
    workers = [f"worker-{n}" for n in range(4)]
    start = FORK.Barrier(len(workers))
    claimed = run_processes(_claimer, [(ledger_db, worker, start) for worker in workers])
    every = [job for _, batch in claimed for job in batch]
    assert sorted(every) == ids, "each job claimed exactly once"
    with connect(ledger_db) as conn:
        holders = dict(conn.execute("SELECT id, worker_id FROM jobs WHERE status = 'running'"))
    assert holders == {job: worker for worker, batch in claimed for job in batch}


# -- (f) LISTEN / NOTIFY wake-ups --------------------------------------------------------------


def notifications_until(conn: Any, done: Callable[[list[tuple[str, str]]], bool]) -> list:
    """(channel, payload) pairs, blocking in conn.notifies() until ``done`` says enough."""
    received: list[tuple[str, str]] = []
    for note in conn.notifies(timeout=DEADLINE):
        received.append((note.channel, note.payload))
        if done(received):
            return received
    raise AssertionError(f"no wake-up within {DEADLINE}s; got {received}")


@pytest.fixture
def listener(ledger_db: str) -> Iterator[Any]:
    with connect(ledger_db, autocommit=True) as conn:
        conn.execute("LISTEN ledger_events")
        conn.execute("LISTEN ledger_jobs")
        yield conn


def _commit_work(url: str) -> None:
    """A rolled-back command (queue 'ghost'), then a committed one (queue 'real')."""
    with connect(url) as conn:
        insert_pending_jobs(conn, 1, queue="ghost")
        conn.execute(APPEND, ("ghost", 1, AT))
        conn.rollback()
        conn.execute(APPEND, ("real", 1, AT))
        conn.execute(APPEND, ("real", 2, AT))
        insert_pending_jobs(conn, 1, queue="real")
        conn.commit()


def test_listener_wakes_on_commit_and_never_for_a_rollback(ledger_db: str, listener: Any) -> None:
    writer = threading.Thread(target=_commit_work, args=(ledger_db,))
    writer.start()
    received = notifications_until(listener, lambda got: ("ledger_jobs", "real") in got)
    writer.join(DEADLINE)
    assert ("ledger_events", "1") in received, "one wake-up per appending statement"
    assert ("ledger_events", "2") in received
    assert not [note for note in received if note[1] == "ghost"]


def test_a_requeued_job_wakes_its_queue_and_a_too_long_name_wakes_every_queue(
    ledger_db: str, listener: Any
) -> None:
    """A payload holds at most 8000 bytes: a longer queue name sends '' (any queue) instead of
    failing the command. A job going back to pending (retry, release, rescue) wakes too."""
    with connect(ledger_db) as conn:
        insert_pending_jobs(conn, 1, queue="q" * 9000)
        conn.commit()
        conn.execute("UPDATE jobs SET status = 'running', lease_expires_at = now()")
        conn.commit()
        conn.execute("UPDATE jobs SET status = 'pending', lease_expires_at = NULL")
        conn.commit()
    received = notifications_until(listener, lambda got: len(got) == 2)
    assert received == [("ledger_jobs", ""), ("ledger_jobs", "")]


MANY = (
    "INSERT INTO events (job_id, version, type, data, recorded_at) "
    "SELECT %s, v, 'progress', '{}', %s FROM generate_series(%s::bigint, %s::bigint) AS v"
)


def chain_is_whole(conn: Any) -> bool:
    """Each event's hash is the link of the one before it (ledger.domain.chain's rule), and
    the counter row is the last event's position and hash."""
    rows = conn.execute(
        "SELECT position, job_id, version, type, data::text, recorded_at, hash FROM events "
        "ORDER BY position"
    ).fetchall()
    previous: bytes | None = None
    for position, job_id, version, kind, data, at, digest in rows:
        link = conn.execute(
            "SELECT ledger_chain_link(%s, %s, %s, %s, %s, %s, %s)",
            (
                previous
                if previous is not None
                else conn.execute(
                    "SELECT sha256(convert_to('jobledger event chain v1', 'UTF8'))"
                ).fetchone()[0],
                position,
                job_id,
                version,
                kind,
                data,
                at,
            ),
        ).fetchone()[0]
        if link != digest:
            return False
        previous = bytes.fromhex(digest)
    head = conn.execute("SELECT last_position, last_hash FROM event_counter").fetchone()
    return head == (rows[-1][0], rows[-1][6])


def test_a_many_row_insert_takes_consecutive_positions_and_one_chain(ledger_db: str) -> None:
    """One INSERT of many rows moves the counter once, at its end (the head rides from row to
    row in the statement), yet each row gets the next position and chains onto the row
    before it; a second statement goes on from there."""
    with connect(ledger_db) as conn:
        conn.execute(APPEND, ("job", 1, AT))
        conn.execute(MANY, ("job", AT, 2, 300))
        conn.execute(MANY, ("job", AT, 301, 305))
        conn.commit()
        assert positions(conn) == list(range(1, 306))
        assert chain_is_whole(conn)


def test_a_rolled_back_savepoint_takes_its_positions_back(ledger_db: str) -> None:
    """A savepoint rolled back after a many-row INSERT (a group commit's failed command) takes
    the counter and the head its rows carried back with it: the next INSERT goes on from the
    rows before, with no gap and a whole chain."""
    with connect(ledger_db) as conn:
        conn.execute(APPEND, ("job", 1, AT))
        conn.execute(MANY, ("job", AT, 2, 50))
        conn.execute("SAVEPOINT command")
        conn.execute(MANY, ("job", AT, 51, 90))
        conn.execute("ROLLBACK TO SAVEPOINT command")
        conn.execute("SAVEPOINT command")
        with pytest.raises(errors.CheckViolation, match="would leave a gap"):
            conn.execute(  # two rows go in, the third fails: the head they carried goes too
                "INSERT INTO events (job_id, version, type, data, recorded_at) "
                "SELECT 'job', v, 'progress', '{}', %s FROM unnest(%s::bigint[]) AS v",
                (AT, [51, 52, 54]),
            )
        conn.execute("ROLLBACK TO SAVEPOINT command")
        conn.execute(MANY, ("job", AT, 51, 55))
        conn.commit()
        assert positions(conn) == list(range(1, 56))
        assert chain_is_whole(conn)


def test_an_insert_that_skips_a_row_after_its_position_was_handed_out_is_refused(
    ledger_db: str,
) -> None:
    """ON CONFLICT DO NOTHING on a taken (job, version): the insert trigger has handed the
    skipped row a position already, so the rows after it would leave a gap. The statement is
    refused and the log is as it was (the old one-step counter let the gap through)."""
    with connect(ledger_db) as conn:
        conn.execute(APPEND, ("job", 1, AT))
        conn.execute(MANY, ("job", AT, 2, 3))
        conn.commit()
        with pytest.raises(errors.CheckViolation, match="skipped events"):
            conn.execute(
                "INSERT INTO events (job_id, version, type, data, recorded_at) "
                "SELECT 'job', v, 'progress', '{}', %s FROM unnest(%s::bigint[]) AS v "
                "ON CONFLICT DO NOTHING",
                (AT, [3, 4]),  # 3 is taken: skipped after its trigger ran
            )
        conn.rollback()
        conn.execute(MANY, ("job", AT, 4, 5))
        conn.commit()
        assert positions(conn) == [1, 2, 3, 4, 5]
        assert chain_is_whole(conn)


def test_the_carried_head_is_trusted_only_from_this_transactions_own_inserts(
    ledger_db: str,
) -> None:
    """A ledger.head set by hand (for the session, or in the transaction with a forged move of
    the counter) is not a head the insert trigger carried: the first row still locks and reads
    the counter, and a hand-typed move onto a position with no event is refused."""
    with connect(ledger_db) as conn:
        conn.execute(APPEND, ("job", 1, AT))
        conn.commit()
        conn.execute("SET ledger.head = '1 1 41 abc'")  # the session's, not a carried head
        conn.commit()
        conn.execute(MANY, ("job", AT, 2, 3))
        conn.commit()
        assert positions(conn) == [1, 2, 3]
        xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        conn.execute("SELECT set_config('ledger.head', %s, true)", (f"{xid} 4 5 abc",))
        with pytest.raises(errors.RaiseException, match="moves forward onto the log's last"):
            conn.execute("UPDATE event_counter SET last_position = 5, last_hash = 'abc'")
        conn.rollback()
        conn.execute(MANY, ("job", AT, 4, 4))
        conn.commit()
        assert positions(conn) == [1, 2, 3, 4]
        assert chain_is_whole(conn)
