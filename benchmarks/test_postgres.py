"""PostgreSQL workloads: the ledger against raw psycopg running the same statements, in one run.

Each pair shares a group: create, claim+complete, append (log_event), read-all and batch create
(create_jobs x100). The raw side runs the statements the backend runs (an event INSERT whose
trigger hands out the position, the jobs row, the checkpoint) in one transaction per command,
on a schema of its own on the same server, without the ledger's decide/fold/validation, and
pipelined as tightly as those statements allow (`Raw`): the ratio is what the ledger costs on
top of the least I/O of its own statements. Skips when no server can start; quick under
``LEDGER_BENCH_QUICK=1``.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from benchmarks.conftest import CONFIG, size
from ledger import EventType, Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
from ledger.backends.postgres import events_table, jobs_table  # noqa: E402
from ledger.backends.postgres.connection import schema_text  # noqa: E402
from tests import postgres_cluster  # noqa: E402

ROUNDS = size(200, 5)
BATCH = 100


@pytest.fixture(scope="module")
def server() -> str:
    try:
        return postgres_cluster.shared_url()
    except postgres_cluster.ClusterUnavailable as e:
        pytest.skip(f"no PostgreSQL server: {e}")


class Raw:
    """Raw psycopg on the backend's own statements, doing the least I/O they allow: the
    connection stays in autocommit and pipeline mode and each transaction sends its own BEGIN
    and COMMIT, so it waits only where a read needs its answer and once for the COMMIT (the
    ledger's writer waits for its BEGIN too: psycopg syncs a transaction's start)."""

    def __init__(self, conn: Any, pipeline: Any) -> None:
        self.conn = conn
        self.pipeline = pipeline

    def execute(self, statement: str, params: Any = None) -> Any:
        return self.conn.execute(statement, params)

    def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(statement, rows)

    def commit(self) -> None:
        """The checkpoint to the head and the COMMIT, sent after the writes; one wait."""
        self.conn.execute(events_table.checkpoint_to_head_statement, ("jobs",))
        self.conn.execute("COMMIT")
        self.pipeline.sync()


@pytest.fixture
def pg(server: str) -> Iterator[tuple[Ledger, Raw]]:
    """A ledger and a raw connection, each in a fresh schema of its own."""
    ledger_url = postgres_cluster.create_schema(server, prefix="bench")
    raw_url = postgres_cluster.create_schema(server, prefix="benchraw")
    ledger = Ledger(ledger_url)
    conn = psycopg.connect(raw_url, autocommit=True)
    conn.execute("SET TimeZone TO 'UTC'")
    conn.execute(schema_text().encode())
    conn.execute(events_table.checkpoint_upsert_statement, ("jobs", 1, 0))
    with conn.pipeline() as pipeline:
        yield ledger, Raw(conn, pipeline)
    ledger.close()
    conn.close()
    postgres_cluster.drop_schema(ledger_url)
    postgres_cluster.drop_schema(raw_url)


def _row(job_id: str, now: datetime) -> tuple[Any, ...]:
    """A new job's row for `jobs_table.insert_created_statement`, which takes its
    created_position from its created event (the job id in that column's place)."""
    return (
        job_id, 1, None, None, json.dumps(CONFIG), "pending", None, None, None, None, None, None,
        None, None, now, now, 1, "default", 0, now, 0, 1, None, None, job_id, None, *_LATER,
    )  # fmt: skip


# Columns added after the first 26 (results, trees and budgets, holders): their new-job values.
_LATER = tuple(0.0 if c == "subtree_cost_cents" else None for c in jobs_table.COLUMNS[26:])
_HOLDER = (socket.gethostname(), str(uuid.uuid4()), os.getpid(), 123456789)
_CREATED = json.dumps({"chat_id": 1, "config": CONFIG})


def raw_create(raw: Raw, now: datetime) -> str:
    job_id = str(uuid.uuid4())
    raw.execute("BEGIN")
    raw.execute(events_table.insert_deferred_statement, (job_id, 1, "created", _CREATED, now))
    raw.execute(jobs_table.insert_created_statement, _row(job_id, now))
    raw.commit()
    return job_id


def raw_claim_complete(raw: Raw, now: datetime) -> None:
    """Two transactions, as the ledger's two commands: the claim (the expired-lease look, the
    holder look, the claim query that locks and returns the row) and the completion (the row
    locked first, as a command deciding on a job does)."""
    raw.execute("BEGIN")
    raw.execute(jobs_table.expired_limit_statement, (now, 100)).fetchall()
    raw.execute(jobs_table.held_on_statement, (_HOLDER[0],)).fetchall()
    job_id = raw.execute(jobs_table.claim_any_statement, (now,)).fetchone()[0]
    raw.execute(events_table.insert_deferred_statement, (job_id, 2, "claimed", "{}", now))
    raw.execute(
        "UPDATE jobs SET version = 2, updated_at = %s, status = 'running', worker_id = 'w', "
        "started_at = %s, lease_expires_at = %s, attempts = 1, lease_seconds = 300, "
        "holder_host = %s, holder_boot_id = %s, holder_pid = %s, holder_start = %s WHERE id = %s",
        (now, now, now, *_HOLDER, job_id),
    )
    raw.commit()
    raw.execute("BEGIN")
    raw.execute(jobs_table.lock_row_statement, (job_id,)).fetchone()
    raw.execute(events_table.insert_deferred_statement, (job_id, 3, "completed", "{}", now))
    raw.execute(
        "UPDATE jobs SET version = 3, updated_at = %s, status = 'completed', completed_at = %s, "
        "lease_expires_at = NULL, result_summary = 'ok', result_status = 'success', "
        "cost_cents = 1.0, duration_seconds = 1 WHERE id = %s",
        (now, now, job_id),
    )
    raw.commit()


@pytest.mark.benchmark(group="pg-create")
def test_pg_create_ledger(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    ledger, _ = pg
    benchmark.pedantic(lambda: ledger.create_job(1, CONFIG), rounds=ROUNDS, iterations=1)
    assert ledger.verify().ok


@pytest.mark.benchmark(group="pg-create")
def test_pg_create_raw(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    _, raw = pg
    now = datetime.now(UTC)
    benchmark.pedantic(lambda: raw_create(raw, now), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="pg-claim-complete")
def test_pg_claim_complete_ledger(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    ledger, _ = pg
    ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * (ROUNDS + 5))

    def claim_complete() -> None:
        job = ledger.claim("w")
        assert job is not None
        ledger.complete(job.id, "ok", "success", worker_id="w")

    benchmark.pedantic(claim_complete, rounds=ROUNDS, iterations=1)
    assert ledger.verify().ok


@pytest.mark.benchmark(group="pg-claim-complete")
def test_pg_claim_complete_raw(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    _, raw = pg
    now = datetime.now(UTC)
    for _ in range(ROUNDS + 5):
        raw_create(raw, now)
    benchmark.pedantic(lambda: raw_claim_complete(raw, now), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="pg-append")
def test_pg_append_ledger(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    ledger, _ = pg
    job_id = ledger.create_job(1, CONFIG)
    payload = {"step": 1, "note": "progress"}
    benchmark.pedantic(
        lambda: ledger.log_event(job_id, EventType.PROGRESS, payload), rounds=ROUNDS, iterations=1
    )


@pytest.mark.benchmark(group="pg-append")
def test_pg_append_raw(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    _, raw = pg
    now = datetime.now(UTC)
    job_id = raw_create(raw, now)
    version = [1]

    def append() -> None:
        version[0] += 1
        raw.execute("BEGIN")
        raw.execute(jobs_table.lock_row_statement, (job_id,)).fetchone()
        raw.execute(
            events_table.insert_deferred_statement,
            (job_id, version[0], "progress", json.dumps({"step": 1}), now),
        )
        raw.execute(
            "UPDATE jobs SET version = %s, updated_at = %s WHERE id = %s",
            (version[0], now, job_id),
        )
        raw.commit()

    benchmark.pedantic(append, rounds=ROUNDS, iterations=1)


READ_JOBS = size(1000, 20)


@pytest.mark.benchmark(group="pg-read-all")
def test_pg_read_all_ledger(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    ledger, _ = pg
    ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * READ_JOBS)
    events = benchmark(ledger.read_all)
    assert len(events) == READ_JOBS


@pytest.mark.benchmark(group="pg-read-all")
def test_pg_read_all_raw(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    _, raw = pg
    now = datetime.now(UTC)
    for _ in range(READ_JOBS):
        raw_create(raw, now)

    def read() -> list[Any]:
        rows: list[Any] = raw.execute(events_table.after_statement, (0,)).fetchall()
        return rows  # psycopg has parsed each json data already

    assert len(benchmark(read)) == READ_JOBS


@pytest.mark.benchmark(group="pg-batch-create")
def test_pg_batch_create_ledger(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    ledger, _ = pg
    batch = [{"chat_id": 1, "config": CONFIG}] * BATCH
    benchmark.pedantic(lambda: ledger.create_jobs(batch), rounds=size(20, 2), iterations=1)
    assert ledger.verify().ok


@pytest.mark.benchmark(group="pg-batch-create")
def test_pg_batch_create_raw(benchmark: Any, pg: tuple[Ledger, Raw]) -> None:
    _, raw = pg
    now = datetime.now(UTC)

    def batch() -> None:
        ids = [str(uuid.uuid4()) for _ in range(BATCH)]
        raw.execute("BEGIN")
        raw.executemany(
            events_table.insert_deferred_statement,
            [(job_id, 1, "created", _CREATED, now) for job_id in ids],
        )
        raw.executemany(jobs_table.insert_created_statement, [_row(job_id, now) for job_id in ids])
        raw.commit()

    benchmark.pedantic(batch, rounds=size(20, 2), iterations=1)
