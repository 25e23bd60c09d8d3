"""The `Worker` runner in-process: outcomes, activity, cancellation, stopping."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

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


def _stop_mid_job(ledger: Ledger, mode: str) -> tuple[str, Worker]:
    """Run a worker whose handler waits for ``ctx.stopping``, stop the worker mid-job, and
    return the job's id. The handler then raises, returns a str or None, or calls check()."""
    job_id = ledger.create_job(1, {})
    started = threading.Event()

    def handler(job: Job, ctx: JobContext) -> str | None:
        started.set()
        while not ctx.stopping:
            if mode == "check":
                ctx.check()
            threading.Event().wait(0.01)
        assert not ctx.cancelled  # stopping is not cancelling
        if mode == "check":
            ctx.check()
        if mode == "raise":
            raise InterruptedError("asked to stop")
        return "wrapped up" if mode == "str" else None

    worker = Worker(ledger, handler, worker_id="w")
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert started.wait(WAIT)
    worker.stop()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert worker.exit_status == 0 and not worker.abandoned
    return job_id, worker


@pytest.mark.parametrize("mode", ["raise", "none", "check"])
def test_stop_releases_a_job_whose_handler_gives_up(ledger: Ledger, mode: str) -> None:
    """The README pattern (return None when stopping) must not record a success."""
    job_id, _ = _stop_mid_job(ledger, mode)
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
    types = [e.type for e in ledger.job_events(job_id)]
    assert types[-1] is EventType.RELEASED
    assert EventType.COMPLETED not in types and EventType.ERROR not in types
    assert ledger.verify().ok


def test_stop_lets_a_finishing_handler_complete(ledger: Ledger) -> None:
    job_id, _ = _stop_mid_job(ledger, "str")
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.COMPLETED
    assert job.result_summary == "wrapped up"


class _Blocked:
    """A worker (in a thread) whose handler ignores stops until ``unblock`` is set."""

    def __init__(self, ledger: Ledger, grace_period: float) -> None:
        self.job_id = ledger.create_job(1, {})
        self.unblock, self.returned = threading.Event(), threading.Event()
        self.seen: dict[str, bool] = {}
        started = threading.Event()

        def handler(job: Job, ctx: JobContext) -> str:
            started.set()
            self.unblock.wait(WAIT)
            self.seen["logged"] = ctx.log(EventType.PROGRESS, {"late": True})
            self.seen["cancelled"] = ctx.cancelled
            self.returned.set()
            return "too late"

        self.worker = Worker(ledger, handler, worker_id="w", grace_period=grace_period)
        self.thread = threading.Thread(target=self.worker.run)
        self.thread.start()
        assert started.wait(WAIT)


@pytest.mark.parametrize("how", ["grace", "force"])
def test_a_handler_that_will_not_stop_is_abandoned_and_its_job_released(
    ledger: Ledger, how: str
) -> None:
    blocked = _Blocked(ledger, grace_period=0 if how == "grace" else 30)
    if how == "grace":
        blocked.worker.stop()
    else:
        blocked.worker.force_stop()
    blocked.thread.join(WAIT)
    assert not blocked.thread.is_alive()  # run() returned while the handler still blocks
    assert blocked.worker.abandoned and blocked.worker.exit_status == 1
    job = ledger.get_job(blocked.job_id)
    assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
    released = ledger.job_events(blocked.job_id)[-1]
    assert released.type is EventType.RELEASED and "worker stopping" in released.payload["reason"]
    blocked.unblock.set()
    assert blocked.returned.wait(WAIT)
    assert blocked.seen == {"logged": False, "cancelled": True}  # fenced off
    assert ledger.job_events(blocked.job_id)[-1].type is EventType.RELEASED  # return ignored
    assert ledger.verify().ok


def test_cancel_is_not_completed_and_not_a_warning(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The README pattern on a cancel: the job stays cancelled; the worker says so quietly."""
    caplog.set_level(logging.DEBUG, logger="ledger.worker")
    with Ledger(db_path) as ledger:
        job_id = ledger.create_job(1, {})
        started = threading.Event()

        def handler(job: Job, ctx: JobContext) -> None:
            started.set()
            while not ctx.cancelled:
                threading.Event().wait(0.01)

        worker = Worker(ledger, handler, heartbeat_every=0.02)
        thread = threading.Thread(target=worker.run, kwargs={"max_jobs": 1})
        thread.start()
        assert started.wait(WAIT)
        assert ledger.cancel(job_id)
        thread.join(WAIT)
        assert not thread.is_alive()
        assert ledger.get_job(job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert ledger.verify().ok


def test_worker_validates_its_settings(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgument):
        Worker(ledger, "not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Worker(ledger, lambda job, ctx: None, lease=-1)
    with pytest.raises(InvalidArgument):
        Worker(ledger, lambda job, ctx: None, grace_period=-1)
    assert Worker(ledger, lambda job, ctx: None, grace_period=0).grace_period == 0
    assert (
        Worker(ledger, lambda job, ctx: None, grace_period=timedelta(seconds=5)).grace_period == 5
    )
