"""Group 11: group commit on PostgreSQL, at durability full (``synchronous_commit = on``).

The same workload as group 10 (`benchmarks/test_group_commit.py`) on a PostgreSQL server:
concurrent callers in one process each create a job and then log events on it; the ledger as
threads on one `Ledger(url)` and as coroutines on one `AsyncLedger`. The baseline is the naive
raw group commit of issue 17 on psycopg: one writer thread draining a queue of the minimal
inserts (`benchmarks.minimal_pg`: a 4-column job row and its created event; a bare event), one
pipelined transaction and one COMMIT per drained batch, each caller waiting on a
``threading.Event``; one caller sends its inserts on the connection directly. ``rows`` is the
same naive design running the backend's own statements (`Raw` of `benchmarks/test_postgres.py`:
the event insert whose trigger hands out the position and hash, the jobs row, the job's row
locked and read before an append, the checkpoint), with no savepoint and no sync per command:
what the ledger's I/O costs on the server, batched as loosely as possible. Every entry runs
the same number of commands in all (``items``); items/s is the figure to compare. Skips when no
server can start; quick under ``LEDGER_BENCH_QUICK=1``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from benchmarks.conftest import CONFIG, size
from benchmarks.test_group_commit import PAYLOAD, _coroutines, _threads, naive
from ledger import Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
from benchmarks import minimal_pg  # noqa: E402
from benchmarks.test_postgres import Raw, _row  # noqa: E402
from ledger.backends.postgres import events_table, jobs_table  # noqa: E402
from ledger.backends.postgres.backend import WRITER_STATEMENTS  # noqa: E402
from ledger.backends.postgres.connection import schema_text  # noqa: E402
from tests import postgres_cluster  # noqa: E402

COMMANDS = size(960, 64)  # per round, split between its callers
ROUNDS = size(3, 1)
CASES = [
    pytest.param("ledger-threads", 1, id="ledger-threads-1"),
    pytest.param("raw", 1, id="raw-1"),
    pytest.param("ledger-threads", 8, id="ledger-threads-8"),
    pytest.param("raw", 8, id="raw-8"),
    pytest.param("rows", 8, id="rows-8"),
    pytest.param("ledger-coroutines", 64, id="ledger-coroutines-64"),
    pytest.param("raw", 64, id="raw-64"),
    pytest.param("rows", 64, id="rows-64"),
    pytest.param("ledger-coroutines", 1, id="ledger-coroutines-1"),
]
Create = Callable[[str], None]
Append = Callable[[str, int], None]


@pytest.fixture
def schema(pg_server: str) -> Iterator[str]:
    url = postgres_cluster.create_schema(pg_server, prefix="benchgroup")
    yield url
    postgres_cluster.drop_schema(url)


@pytest.mark.parametrize(("impl", "callers"), CASES)
def test_group_commit_postgres(benchmark: Any, schema: str, impl: str, callers: int) -> None:
    kind = "coroutine" if impl == "ledger-coroutines" and callers == 1 else "caller"
    benchmark.group = f"11 pg group commit, {callers} {kind}{'s' * (callers > 1)} [full]"
    per_caller = COMMANDS // callers
    benchmark.extra_info["items"] = per_caller * callers
    expected = ROUNDS * callers * per_caller
    if impl == "raw":
        db = minimal_pg.connect(schema, "full")
        try:
            args = (db.execute, db.commit, _minimal_create(db), _minimal_append(db))
            benchmark.pedantic(_naive, (*args, callers, per_caller), rounds=ROUNDS, iterations=1)
            assert _count(db.conn) == expected
        finally:
            db.close()
        return
    if impl == "rows":
        conn = psycopg.connect(schema, autocommit=True)
        try:
            conn.execute("SET TimeZone TO 'UTC'")
            for statement in WRITER_STATEMENTS:
                conn.execute(statement)
            conn.execute(schema_text().encode())
            conn.execute(events_table.checkpoint_upsert_statement, ("jobs", 1, 0))
            with conn.pipeline() as pipeline:
                raw = Raw(conn, pipeline)
                args = (raw.execute, raw.commit, _rows_create(raw), _rows_append(raw))
                benchmark.pedantic(
                    _naive, (*args, callers, per_caller), rounds=ROUNDS, iterations=1
                )
            assert _count(conn) == expected
        finally:
            conn.close()
        return
    with Ledger(schema, durability="full") as ledger:
        run = _threads if impl == "ledger-threads" else _coroutines
        benchmark.pedantic(run, (ledger, callers, per_caller), rounds=ROUNDS, iterations=1)
        assert ledger.last_position() == expected
        assert ledger.verify().ok


def _count(conn: Any) -> int:
    row = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(row[0])


def _naive(
    execute: Callable[..., Any],
    commit: Callable[[], None],
    create: Create,
    append: Append,
    callers: int,
    per_caller: int,
) -> None:
    """One caller: psycopg directly, a transaction per command. More: group 10's `naive`,
    one pipelined transaction and COMMIT per drained batch."""
    if callers == 1:
        job_id = str(uuid.uuid4())
        execute("BEGIN")
        create(job_id)
        commit()
        for version in range(2, per_caller + 1):
            execute("BEGIN")
            append(job_id, version)
            commit()
        return
    naive(lambda: execute("BEGIN"), commit, create, append, callers, per_caller)


def _minimal_create(db: minimal_pg.Minimal) -> Create:
    def create(job_id: str) -> None:
        db.execute(minimal_pg.JOB, (job_id, minimal_pg._encode(CONFIG).decode()))
        data = minimal_pg._created(CONFIG)
        db.execute(minimal_pg.EVENT, (job_id, 1, "created", data, datetime.now(UTC)))

    return create


def _minimal_append(db: minimal_pg.Minimal) -> Append:
    def append(job_id: str, version: int) -> None:
        data = minimal_pg._encode({"type": "progress", "payload": PAYLOAD}).decode()
        db.execute(minimal_pg.EVENT, (job_id, version, "progress", data, datetime.now(UTC)))

    return append


def _rows_create(raw: Raw) -> Create:
    def create(job_id: str) -> None:
        now = datetime.now(UTC)
        data = minimal_pg._created(CONFIG)
        raw.execute(events_table.insert_deferred_statement, (job_id, 1, "created", data, now))
        raw.execute(jobs_table.insert_created_statement, _row(job_id, now))

    return create


def _rows_append(raw: Raw) -> Append:
    def append(job_id: str, version: int) -> None:
        now = datetime.now(UTC)
        data = minimal_pg._encode(PAYLOAD).decode()
        raw.execute(jobs_table.lock_row_statement, (job_id,)).fetchone()
        statement = events_table.insert_deferred_statement
        raw.execute(statement, (job_id, version, "progress", data, now))
        raw.execute(
            "UPDATE jobs SET version = %s, updated_at = %s WHERE id = %s", (version, now, job_id)
        )

    return append
