"""Listings by status on PostgreSQL: jobs_status leaves running jobs out (as on SQLite), so a
running listing walks the partial jobs_lease, the others jobs_status, and none reads every
finished job. The statuses are written into the statement: the planner proves a partial index
fits from constants only."""

from __future__ import annotations

import pytest

from ledger import JobStatus, Ledger
from ledger.backends.postgres import jobs_table
from ledger.backends.postgres.connection import connect, session_statements
from ledger.backends.protocol import JobFilter
from tests.backends.postgres.plans import writer_plan

pytest.importorskip("psycopg", reason="psycopg is not installed")


def _plan(url: str, where: JobFilter) -> str:
    statement, params = jobs_table._filtered(jobs_table._SELECT, where, order=True)
    # the table is small: analyzed, and with sequential scans off, to ask which index fits
    return writer_plan(url, statement, params, before=("ANALYZE jobs", "SET enable_seqscan = off"))


def test_status_listings_walk_the_index_that_holds_that_status(postgres_schema: str) -> None:
    running, pending, done = JobStatus.RUNNING, JobStatus.PENDING, JobStatus.COMPLETED
    with Ledger(postgres_schema) as ledger:
        ledger.create_jobs([{"chat_id": n % 3, "config": {}} for n in range(300)])
        for _ in range(100):
            job = ledger.claim("w")
            assert job is not None
            ledger.complete(job.id, "ok", "success", worker_id="w")
        ledger.claim("w")
        for where, index in (
            (JobFilter(statuses=(running,), order="started"), "jobs_lease"),
            (JobFilter(statuses=(pending,), order="oldest", limit=5), "jobs_status"),
            (JobFilter(statuses=(done,), order="newest", limit=5), "jobs_status"),
            # every finished job by its end: either index of ended jobs, sorted after
            (
                JobFilter(statuses=(done, JobStatus.FAILED), order="finished"),
                ("jobs_status", "jobs_chat_ended"),
            ),
            # the summary's latest finished jobs of a chat: its newest ends, no sort
            (
                JobFilter(statuses=(done, JobStatus.FAILED), chat_id=1, order="finished", limit=3),
                "jobs_chat_ended",
            ),
        ):
            plan = _plan(postgres_schema, where)
            scans = [line for line in plan.splitlines() if "Index" in line and " on " in line]
            fits = (index,) if isinstance(index, str) else index
            assert scans and all(any(i in line for i in fits) for line in scans), (where, plan)
            assert "Seq Scan" not in plan, (where, plan)
        assert [j.status for j in ledger.running_jobs()] == [running]
        assert ledger.count_jobs(status="pending") == 199 and ledger.verify().ok


def test_the_full_status_index_of_an_older_release_is_replaced_on_open(
    postgres_schema: str,
) -> None:
    with Ledger(postgres_schema) as ledger:
        ledger.create_jobs([{"chat_id": 1, "config": {}}] * 3)
        ledger.claim("w")
    conn = connect(postgres_schema, session_statements("full", 30_000, False), "downgrading")
    conn.execute("DROP INDEX jobs_status")
    conn.execute("CREATE INDEX jobs_status ON jobs (status, created_at, created_position)")
    conn.execute("UPDATE projection_checkpoints SET schema_version = 4 WHERE name = 'jobs'")
    conn.execute("UPDATE ledger_schema SET script_sha256 = NULL")  # written by an older text
    conn.commit()
    with Ledger(postgres_schema) as ledger:
        assert ledger.verify().ok and ledger.count_jobs(status="running") == 1
    predicate = conn.execute(
        "SELECT pg_get_expr(indpred, indrelid) FROM pg_index "
        "WHERE indexrelid = to_regclass('jobs_status')"
    ).fetchone()
    conn.close()
    assert predicate is not None and "running" in str(predicate[0]), predicate
