"""PostgreSQL workloads: the ledger against raw psycopg running the same statements, in one run.

Each pair shares a group: create, claim+complete, append (log_event), read-all and batch create
(create_jobs x100). The raw side runs the statements the backend runs (an event INSERT whose
trigger hands out the position, the jobs row, the checkpoint) in one transaction per command,
on a schema of its own on the same server, without the ledger's decide/fold/validation: the
ratio is what the ledger's Python costs. Skips when no server can start; quick under
``LEDGER_BENCH_QUICK=1``.
"""

from __future__ import annotations

import json
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


@pytest.fixture
def pg(server: str) -> Iterator[tuple[Ledger, Any]]:
    """A ledger and a raw connection, each in a fresh schema of its own."""
    ledger_url = postgres_cluster.create_schema(server, prefix="bench")
    raw_url = postgres_cluster.create_schema(server, prefix="benchraw")
    ledger = Ledger(ledger_url)
    conn = psycopg.connect(raw_url)
    conn.execute("SET TimeZone TO 'UTC'")
    conn.execute(schema_text().encode())
    conn.execute(events_table.checkpoint_upsert_statement, ("jobs", 1, 0))
    conn.commit()
    yield ledger, conn
    ledger.close()
    conn.close()
    postgres_cluster.drop_schema(ledger_url)
    postgres_cluster.drop_schema(raw_url)


def _row(job_id: str, position: int, now: datetime) -> tuple[Any, ...]:
    return (
        job_id, 1, None, None, json.dumps(CONFIG), "pending", None, None, None, None, None, None,
        None, None, now, now, 1, "default", 0, now, 0, 1, None, None, position, None, *_LATER,
    )  # fmt: skip


# Columns added after the first 26 (results, trees and budgets, holders): their new-job values.
_LATER = tuple(0.0 if c == "subtree_cost_cents" else None for c in jobs_table.COLUMNS[26:])


def raw_create(conn: Any, now: datetime) -> str:
    job_id = str(uuid.uuid4())
    data = json.dumps({"chat_id": 1, "config": CONFIG})
    (position,) = conn.execute(
        events_table.insert_statement, (job_id, 1, "created", data, now)
    ).fetchone()
    conn.execute(jobs_table.insert_statement, _row(job_id, position, now))
    conn.execute(events_table.checkpoint_advance_statement, (position, "jobs"))
    conn.commit()
    return job_id


def raw_claim_complete(conn: Any, now: datetime) -> None:
    """Two transactions, as the ledger's two commands: the claim (its query locks and returns
    the row) and the completion (the row locked first, as a command deciding on a job does)."""
    with conn.transaction():
        job_id = conn.execute(jobs_table.claim_any_statement, (now,)).fetchone()[0]
        (position,) = conn.execute(
            events_table.insert_statement, (job_id, 2, "claimed", "{}", now)
        ).fetchone()
        conn.execute(
            "UPDATE jobs SET status = 'running', worker_id = 'w', lease_expires_at = %s, "
            "version = 2 WHERE id = %s",
            (now, job_id),
        )
        conn.execute(events_table.checkpoint_advance_statement, (position, "jobs"))
    with conn.transaction():
        conn.execute(jobs_table.lock_row_statement, (job_id,)).fetchone()
        (position,) = conn.execute(
            events_table.insert_statement, (job_id, 3, "completed", "{}", now)
        ).fetchone()
        conn.execute(
            "UPDATE jobs SET status = 'completed', lease_expires_at = NULL, version = 3 "
            "WHERE id = %s",
            (job_id,),
        )
        conn.execute(events_table.checkpoint_advance_statement, (position, "jobs"))


@pytest.mark.benchmark(group="pg-create")
def test_pg_create_ledger(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    ledger, _ = pg
    benchmark.pedantic(lambda: ledger.create_job(1, CONFIG), rounds=ROUNDS, iterations=1)
    assert ledger.verify().ok


@pytest.mark.benchmark(group="pg-create")
def test_pg_create_raw(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    _, conn = pg
    now = datetime.now(UTC)
    benchmark.pedantic(lambda: raw_create(conn, now), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="pg-claim-complete")
def test_pg_claim_complete_ledger(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    ledger, _ = pg
    ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * (ROUNDS + 5))

    def claim_complete() -> None:
        job = ledger.claim("w")
        assert job is not None
        ledger.complete(job.id, "ok", "success", worker_id="w")

    benchmark.pedantic(claim_complete, rounds=ROUNDS, iterations=1)
    assert ledger.verify().ok


@pytest.mark.benchmark(group="pg-claim-complete")
def test_pg_claim_complete_raw(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    _, conn = pg
    now = datetime.now(UTC)
    for _ in range(ROUNDS + 5):
        raw_create(conn, now)
    benchmark.pedantic(lambda: raw_claim_complete(conn, now), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="pg-append")
def test_pg_append_ledger(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    ledger, _ = pg
    job_id = ledger.create_job(1, CONFIG)
    payload = {"step": 1, "note": "progress"}
    benchmark.pedantic(
        lambda: ledger.log_event(job_id, EventType.PROGRESS, payload), rounds=ROUNDS, iterations=1
    )


@pytest.mark.benchmark(group="pg-append")
def test_pg_append_raw(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    _, conn = pg
    now = datetime.now(UTC)
    job_id = raw_create(conn, now)
    version = [1]

    def append() -> None:
        version[0] += 1
        with conn.transaction():
            conn.execute(jobs_table.lock_row_statement, (job_id,)).fetchone()
            (position,) = conn.execute(
                events_table.insert_statement,
                (job_id, version[0], "progress", json.dumps({"step": 1}), now),
            ).fetchone()
            conn.execute(
                "UPDATE jobs SET version = %s, updated_at = %s WHERE id = %s",
                (version[0], now, job_id),
            )
            conn.execute(events_table.checkpoint_advance_statement, (position, "jobs"))

    benchmark.pedantic(append, rounds=ROUNDS, iterations=1)


READ_JOBS = size(1000, 20)


@pytest.mark.benchmark(group="pg-read-all")
def test_pg_read_all_ledger(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    ledger, _ = pg
    ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * READ_JOBS)
    events = benchmark(ledger.read_all)
    assert len(events) == READ_JOBS


@pytest.mark.benchmark(group="pg-read-all")
def test_pg_read_all_raw(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    _, conn = pg
    now = datetime.now(UTC)
    for _ in range(READ_JOBS):
        raw_create(conn, now)

    def read() -> list[Any]:
        rows = conn.execute(events_table.after_statement, (0,)).fetchall()
        conn.commit()
        return rows  # psycopg has parsed each json data already

    assert len(benchmark(read)) == READ_JOBS


@pytest.mark.benchmark(group="pg-batch-create")
def test_pg_batch_create_ledger(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    ledger, _ = pg
    batch = [{"chat_id": 1, "config": CONFIG}] * BATCH
    benchmark.pedantic(lambda: ledger.create_jobs(batch), rounds=size(20, 2), iterations=1)
    assert ledger.verify().ok


@pytest.mark.benchmark(group="pg-batch-create")
def test_pg_batch_create_raw(benchmark: Any, pg: tuple[Ledger, Any]) -> None:
    _, conn = pg
    now = datetime.now(UTC)
    data = json.dumps({"chat_id": 1, "config": CONFIG})

    def batch() -> None:
        with conn.transaction():
            position = 0
            for _ in range(BATCH):
                job_id = str(uuid.uuid4())
                (position,) = conn.execute(
                    events_table.insert_statement, (job_id, 1, "created", data, now)
                ).fetchone()
                conn.execute(jobs_table.insert_statement, _row(job_id, position, now))
            conn.execute(events_table.checkpoint_advance_statement, (position, "jobs"))

    benchmark.pedantic(batch, rounds=size(20, 2), iterations=1)
