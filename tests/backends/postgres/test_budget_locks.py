"""A claim on PostgreSQL never waits for a budget row while it holds the log's counter.

A claim of a budgeted chat's job locks the chat's budget row and checks the budget again under
it; the claimer then appends its claim, which takes the log's counter row. A claim whose
transaction appended before it looked (a rescue of an expired lease, or an earlier command of a
shared transaction) already holds the counter: waiting for a budget row that a plain claimer
holds, while that claimer waits for the counter at its COMMIT, was a deadlock (PostgreSQL broke
it after its 1 s deadlock_timeout, and the loser ran again). Such a claim now passes over that
chat's jobs for now, and they stay pending for the next claim.

What is proved here, against a real server, with another session holding the chat's budget row
as a claimer of that chat would between its look and its COMMIT (the ledger's busy_timeout is
short, so a claim that waited for the row fails the test instead of hanging it):
- a claim that rescues an expired lease first claims another chat's job, and the budgeted job
  stays pending; once the row is free, the next claim takes it, within the budget;
- with no other job, that claim answers None, writes its rescue, and leaves the job pending;
- a claim in a shared transaction after another command appended passes over it the same way;
- a claim that appended nothing still waits its turn for the row (claimers of one chat take
  turns), and claims once the other session lets go;
- with two processes' worth of real claimers racing (two Ledgers, threads, expired leases to
  rescue on a budgeted chat), every job is claimed and completed once, and nobody deadlocks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger import JobStatus, Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

CONFIG = {"role": "coder", "task": "budget locks"}
BUDGETED, OTHER = 5, 8


class Clock:
    """A clock the test moves (leases run out when it says so)."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class BudgetRowHolder:
    """Another session holding a chat's budget row (``FOR UPDATE``) until `release`."""

    def __init__(self, url: str, chat_id: int) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("BEGIN")
        rows = self.conn.execute(
            "SELECT chat_id FROM budgets WHERE chat_id = %s FOR UPDATE", (chat_id,)
        ).fetchall()
        assert rows == [(chat_id,)]

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(postgres_schema: str, clock: Clock) -> Iterator[Ledger]:
    with Ledger(postgres_schema, clock=clock, busy_timeout=3) as opened:
        opened.set_budget(BUDGETED, 1000)
        yield opened


def expired_lease(ledger: Ledger, clock: Clock) -> str:
    """A running job whose lease is over (one attempt: its rescue fails it, so the rescued job
    is not itself a candidate of the claim)."""
    job_id = ledger.create_job(OTHER, CONFIG, priority=9, max_attempts=1)
    claimed = ledger.claim("w0", lease=10)
    assert claimed is not None and claimed.id == job_id
    clock.advance(60)
    return job_id


def test_a_rescuing_claim_passes_over_a_held_budget_row(
    ledger: Ledger, clock: Clock, postgres_schema: str
) -> None:
    rescued = expired_lease(ledger, clock)
    budgeted = ledger.create_job(BUDGETED, CONFIG, priority=5, max_cost_cents=100)
    other = ledger.create_job(OTHER, CONFIG, priority=1)
    holder = BudgetRowHolder(postgres_schema, BUDGETED)
    try:
        job = ledger.claim("w1", lease=30)
    finally:
        holder.release()
    assert job is not None and job.id == other
    assert ledger.get_job(rescued).status is JobStatus.FAILED  # the rescue was written
    assert ledger.get_job(budgeted).status is JobStatus.PENDING
    again = ledger.claim("w2", lease=30)
    assert again is not None and again.id == budgeted  # within the budget, once the row is free
    assert ledger.claim("w3") is None
    assert ledger.verify().ok


def test_with_nothing_else_to_claim_it_answers_none(
    ledger: Ledger, clock: Clock, postgres_schema: str
) -> None:
    rescued = expired_lease(ledger, clock)
    budgeted = ledger.create_job(BUDGETED, CONFIG, max_cost_cents=100)
    holder = BudgetRowHolder(postgres_schema, BUDGETED)
    try:
        assert ledger.claim("w1") is None
    finally:
        holder.release()
    assert ledger.get_job(rescued).status is JobStatus.FAILED
    assert ledger.get_job(budgeted).status is JobStatus.PENDING
    job = ledger.claim("w2")
    assert job is not None and job.id == budgeted
    assert ledger.verify().ok


def test_a_claim_after_an_append_in_a_shared_transaction_passes_over_it(
    ledger: Ledger, postgres_schema: str
) -> None:
    budgeted = ledger.create_job(BUDGETED, CONFIG, priority=5)
    holder = BudgetRowHolder(postgres_schema, BUDGETED)
    try:
        with ledger._backend.held_writes():  # type: ignore[attr-defined]
            other = ledger.create_job(OTHER, CONFIG, priority=1)  # appends: holds the counter
            job = ledger.claim("w1")
    finally:
        holder.release()
    assert job is not None and job.id == other
    assert ledger.get_job(budgeted).status is JobStatus.PENDING
    job = ledger.claim("w2")
    assert job is not None and job.id == budgeted
    assert ledger.verify().ok


def test_a_claim_that_appended_nothing_waits_its_turn(ledger: Ledger, postgres_schema: str) -> None:
    budgeted = ledger.create_job(BUDGETED, CONFIG, priority=5)
    ledger.create_job(OTHER, CONFIG, priority=1)
    holder = BudgetRowHolder(postgres_schema, BUDGETED)
    claimed: list[Any] = []
    waiting = threading.Thread(target=lambda: claimed.append(ledger.claim("w1")))
    waiting.start()
    try:
        assert wait_for_a_lock_wait(postgres_schema), "the claim never waited for the row"
        assert claimed == []  # still waiting, not passed over
    finally:
        holder.release()
        waiting.join()
    assert len(claimed) == 1 and claimed[0] is not None and claimed[0].id == budgeted
    assert ledger.verify().ok


def wait_for_a_lock_wait(url: str, within: float = 10.0) -> bool:
    """Whether some session of this database comes to wait for a row lock (another
    transaction's) within ``within`` seconds: polls ``pg_locks`` for an ungranted lock."""
    deadline = time.monotonic() + within
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return True
            time.sleep(0.005)  # a poll of the server's lock table, not a synchronisation
    return False


def test_racing_rescuing_and_plain_claimers_do_not_deadlock(
    postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two Ledgers (each its own writer connection), three threads each, claiming jobs of one
    budgeted chat while a quarter of the leases are left to run out and be rescued. A
    transaction PostgreSQL aborts to break a deadlock is run again, and the backend logs each
    such run: none may be logged, and every job ends completed."""
    jobs = 120
    with Ledger(postgres_schema) as setup:
        setup.set_budget(BUDGETED, 10**9)
        for _ in range(jobs):
            setup.create_job(BUDGETED, CONFIG, max_cost_cents=1, max_attempts=50)
    errors: list[BaseException] = []
    ledgers = [Ledger(postgres_schema, busy_timeout=10) for _ in range(2)]
    caplog.set_level(logging.INFO, logger="ledger.backends.postgres.backend")

    def work(ledger: Ledger, n: int) -> None:
        try:
            claims = 0
            while True:
                left = claims % 4 == 0  # this one's lease is left to run out
                job = ledger.claim(f"w{n}", lease=0.05 if left else 30)
                if job is None:
                    if ledger.count_jobs(status="completed") < jobs:
                        continue  # a lease still to run out, or another's claim to finish
                    return
                claims += 1
                if not left:
                    ledger.complete(job.id, "done", cost_cents=1, worker_id=f"w{n}")
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(ledgers[i % 2], i)) for i in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for opened in ledgers:
            opened.close()
    assert errors == []
    retried = [r.getMessage() for r in caplog.records if "running it again" in r.getMessage()]
    assert retried == []
    with Ledger(postgres_schema) as check:
        states = check.jobs(limit=jobs + 1)
        assert len(states) == jobs
        assert {s.status for s in states} == {JobStatus.COMPLETED}
        assert check.verify().ok
