"""The `Worker` runner in-process: outcomes, activity, cancellation, stopping."""

from __future__ import annotations

import threading

import pytest

from ledger import (
    EventType,
    InvalidArgument,
    Job,
    JobContext,
    JobStatus,
    Ledger,
    Result,
    Worker,
)

WAIT = 30.0  # upper bound on waiting for a condition; tests finish long before it


def test_worker_completes_jobs_with_each_kind_of_return(ledger: Ledger) -> None:
    returns = {0: None, 1: "a summary", 2: Result("rich", "partial", cost_cents=2.5)}
    ids = [ledger.create_job(1, {"n": n}) for n in returns]

    def handler(job: Job, ctx: JobContext) -> Result | str | None:
        ctx.log(EventType.PROGRESS, {"n": job.config["n"]})
        return returns[job.config["n"]]

    assert Worker(ledger, handler, worker_id="w").run(stop_when_idle=True) == 3
    jobs = [ledger.get_job(i) for i in ids]
    assert all(j.status is JobStatus.COMPLETED for j in jobs)  # type: ignore[union-attr]
    assert [j.result_summary for j in jobs] == ["", "a summary", "rich"]  # type: ignore[union-attr]
    assert jobs[2].result_status == "partial" and jobs[2].cost_cents == 2.5  # type: ignore[union-attr]
    assert jobs[0].duration_seconds == 0 and jobs[0].worker_id == "w"  # type: ignore[union-attr]
    progress = ledger.job_events(ids[1], types=[EventType.PROGRESS])
    assert [e.payload for e in progress] == [{"n": 1}]


def test_exception_fails_the_job_with_traceback_and_retries(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {}, max_attempts=2)

    def handler(job: Job, ctx: JobContext) -> str:
        raise ValueError(f"bad attempt {job.attempts}")

    worker = Worker(ledger, handler)
    assert worker.run(stop_when_idle=True) == 1  # the retry waits for its backoff
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING
    assert job.error_message == "bad attempt 1"
    errors = ledger.job_events(job_id, types=[EventType.ERROR])
    assert errors[0].payload["type"] == "ValueError"
    assert "Traceback" in errors[0].payload["traceback"]
    assert "bad attempt 1" in errors[0].payload["traceback"]


def test_max_jobs_stops_the_loop(ledger: Ledger) -> None:
    ledger.create_jobs([{"chat_id": 1, "config": {}} for _ in range(5)])
    assert Worker(ledger, lambda job, ctx: None).run(max_jobs=2) == 2
    assert len(ledger.pending_jobs(10)) == 3


def test_queues_are_respected(ledger: Ledger) -> None:
    ledger.create_job(1, {}, queue="mail")
    other = ledger.create_job(1, {}, queue="other")
    assert Worker(ledger, lambda job, ctx: None, queues=["mail"]).run(stop_when_idle=True) == 1
    assert ledger.get_job(other).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_running_handler_sees_cancellation(db_path: str) -> None:
    with Ledger(db_path) as ledger:  # real clock: heartbeats run on real time here
        job_id = ledger.create_job(1, {})
        started = threading.Event()
        seen = threading.Event()

        def handler(job: Job, ctx: JobContext) -> str:
            started.set()
            deadline = threading.Event()
            while not ctx.cancelled and not deadline.wait(0.01):
                pass
            if ctx.cancelled and ctx.lost:
                seen.set()
            return "finished anyway"

        worker = Worker(ledger, handler, heartbeat_every=0.02)
        thread = threading.Thread(target=worker.run, kwargs={"max_jobs": 1})
        thread.start()
        assert started.wait(WAIT)
        assert ledger.cancel(job_id)
        thread.join(WAIT)
        assert not thread.is_alive()
        assert seen.is_set()
        job = ledger.get_job(job_id)
        assert job is not None and job.status is JobStatus.CANCELLED
        assert job.result_summary is None  # the worker did not complete a job it lost


def _stop_mid_job(ledger: Ledger, *, give_up: bool) -> str:
    """Run a worker whose handler waits for ``ctx.cancelled``, stop the worker mid-job, and
    return the job's id. The handler then raises (``give_up``) or returns normally."""
    job_id = ledger.create_job(1, {})
    started = threading.Event()

    def handler(job: Job, ctx: JobContext) -> str:
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        if give_up:
            raise InterruptedError("asked to stop")
        return "wrapped up"

    worker = Worker(ledger, handler, worker_id="w")
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert started.wait(WAIT)
    worker.stop()
    thread.join(WAIT)
    assert not thread.is_alive()
    return job_id


def test_stop_releases_a_job_whose_handler_gives_up(ledger: Ledger) -> None:
    job_id = _stop_mid_job(ledger, give_up=True)
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
    assert ledger.job_events(job_id)[-1].type is EventType.RELEASED


def test_stop_lets_a_finishing_handler_complete(ledger: Ledger) -> None:
    job_id = _stop_mid_job(ledger, give_up=False)
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.COMPLETED
    assert job.result_summary == "wrapped up"


def test_worker_validates_its_settings(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgument):
        Worker(ledger, "not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Worker(ledger, lambda job, ctx: None, lease=-1)
