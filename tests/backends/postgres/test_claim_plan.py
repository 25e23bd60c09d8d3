"""The claim query's plan on the writer's session: a walk of the ``jobs_claim`` index that stops
at the first claimable job, even on a jobs table autovacuum has not analyzed yet (a new ledger,
a burst of jobs). Planned on guessed statistics it was a bitmap scan sorting every pending job:
a claim cost grew with the backlog (measured 7 ms with 3,000 pending, 0.15 ms walking)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledger import Ledger
from ledger.backends.postgres import jobs_table
from tests.backends.postgres.plans import writer_plan

pytest.importorskip("psycopg", reason="psycopg is not installed")


def test_a_claim_walks_the_claim_index_on_an_unanalyzed_backlog(postgres_schema: str) -> None:
    with Ledger(postgres_schema) as ledger:
        config = {"role": "coder", "task": "the same task for every job"}
        ledger.create_jobs([{"chat_id": 1, "config": config}] * 3_000)
        for _ in range(20):  # some claimed and finished, as a draining backlog
            job = ledger.claim("w")
            assert job is not None
            ledger.complete(job.id, "ok", "success", worker_id="w")
        now = datetime.now(UTC)
        for statement, params in (
            (jobs_table.claim_any_statement, (now,)),
            (jobs_table.claim_queues_statement, (now, ["default"])),
        ):
            plan = writer_plan(postgres_schema, statement, params)
            assert "Index Scan using jobs_claim on jobs" in plan, plan
            assert "Sort" not in plan.split("SubPlan")[0], plan
        assert ledger.verify().ok
