"""The `Worker` loop on every configuration: what a handler's return or exception records.

Stopping and cancelling mid-job (signals, grace periods, ``ctx.stopping``) are the worker's own
tests (``tests/test_worker.py``); here only the outcomes a caller relies on."""

from __future__ import annotations

from datetime import timedelta

from ledger import EventType, Job, JobContext, JobStatus, Ledger, Result, RetryPolicy, Worker
from tests.conftest import FakeClock
from tests.contract.conftest import LedgerFactory
from tests.contract.support import CONFIG


def test_a_worker_completes_every_claimable_job(ledger: Ledger) -> None:
    """Promise: ``run(stop_when_idle=True)`` handles every claimable job and returns how many;
    a handler returning a `Result`, a str or None completes the job with that summary."""
    returns = {0: None, 1: "a summary", 2: Result("rich", "partial", cost_cents=2.5)}
    ids = [ledger.create_job(1, {"n": n}) for n in returns]

    def handler(job: Job, ctx: JobContext) -> Result | str | None:
        return returns[job.config["n"]]

    assert Worker(ledger, handler, worker_id="w").run(stop_when_idle=True) == 3
    jobs = [ledger.get_job(i) for i in ids]
    assert [j.status for j in jobs] == [JobStatus.COMPLETED] * 3  # type: ignore[union-attr]
    assert [j.result_summary for j in jobs] == ["", "a summary", "rich"]  # type: ignore[union-attr]
    assert (jobs[2].result_status, jobs[2].cost_cents) == ("partial", 2.5)  # type: ignore[union-attr]
    assert all(j.worker_id == "w" for j in jobs)  # type: ignore[union-attr]
    assert ledger.claim("other") is None


def test_a_handlers_activity_is_in_the_jobs_events(ledger: Ledger) -> None:
    """Promise: ``ctx.log`` appends an activity event to the job being handled."""
    job_id = ledger.create_job(1, CONFIG)

    def handler(job: Job, ctx: JobContext) -> str:
        assert ctx.log(EventType.STARTED, {"task": job.config["task"]})
        assert ctx.log(EventType.TOOL_CALL, {"tool": "grep"})
        assert ctx.log_events([("progress", {"n": 1}), ("progress", {"n": 2})])
        return "done"

    assert Worker(ledger, handler, worker_id="w").run(stop_when_idle=True) == 1
    activity = ledger.job_events(
        job_id, types=[EventType.STARTED, EventType.TOOL_CALL, EventType.PROGRESS]
    )
    assert [e.payload for e in activity] == [
        {"task": "contract"},
        {"tool": "grep"},
        {"n": 1},
        {"n": 2},
    ]
    assert all((e.worker_id, e.attempt) == ("w", 1) for e in activity)
    assert ledger.get_job(job_id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_a_raising_handler_fails_the_job_then_it_is_retried(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Promise: a handler that raises fails the attempt with the exception's message: with
    attempts left the job is retried after its backoff, on the last attempt it fails for good."""
    ledger = open_ledger(retry_policy=RetryPolicy(base=10, factor=2, cap=3600, jitter=0))
    job_id = ledger.create_job(1, CONFIG, max_attempts=2)

    def handler(job: Job, ctx: JobContext) -> str:
        raise ValueError(f"bad attempt {job.attempts}")

    worker = Worker(ledger, handler)
    assert worker.run(stop_when_idle=True) == 1  # the retry waits for its backoff
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING
    assert "bad attempt 1" in (job.error_message or "")
    assert job.run_at == clock.now + timedelta(seconds=10)
    assert worker.run(stop_when_idle=True) == 0  # not before run_at
    clock.advance(10)
    assert worker.run(stop_when_idle=True) == 1
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert "bad attempt 2" in (job.error_message or "") and job.attempts == 2
    errors = ledger.job_events(job_id, types=[EventType.ERROR])
    assert len(errors) == 2


def test_a_worker_takes_only_its_queues(ledger: Ledger) -> None:
    """Promise: a worker with ``queues=[...]`` leaves other queues' jobs pending."""
    ledger.create_job(1, {}, queue="mail")
    other = ledger.create_job(1, {}, queue="other")
    assert Worker(ledger, lambda job, ctx: None, queues=["mail"]).run(stop_when_idle=True) == 1
    assert ledger.get_job(other).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_max_jobs_stops_the_loop(ledger: Ledger) -> None:
    """Promise: ``run(max_jobs=n)`` handles n jobs and returns, leaving the rest pending."""
    ledger.create_jobs([{"chat_id": 1, "config": {}} for _ in range(5)])
    assert Worker(ledger, lambda job, ctx: "ok").run(max_jobs=2) == 2
    assert ledger.count_jobs(status="pending") == 3
    assert ledger.count_jobs(status="completed") == 2
