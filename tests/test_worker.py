"""The `Worker` runner in-process: outcomes, activity, cancellation, stopping."""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

import pytest

from ledger import (
    EventType,
    InvalidArgument,
    Job,
    JobContext,
    JobStatus,
    LeaseLost,
    Ledger,
    Result,
    Worker,
)
from tests.conftest import FakeClock

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


class QuotaExceeded(Exception):
    """A handler's own exception type: recorded by its qualified name."""


class Unusual(BaseException):
    """Not an Exception: must still fail the job, never leave it running."""


BAD_OUTCOMES: dict[str, tuple[object, str]] = {
    # kind: (what the handler returns, or raises if an exception; words the error must hold)
    # (a dict, an int, a bool is a result since issue 13; values JSON cannot hold are refused)
    "int keys": ({1: "x"}, "not a str"),
    "tuple": ((7,), "tuple"),
    "set": ({True}, "set"),
    "nan cost": (Result("x", cost_cents=float("nan")), "cost_cents"),
    "str cost": (Result("x", cost_cents="1"), "cost_cents"),  # type: ignore[arg-type]
    "surrogate summary": ("half \udcff", "not valid Unicode"),
    "surrogate status": (Result("x", "ok \ud800"), "result_status"),
    "surrogate message": (ValueError("bad \udcff byte"), "bad \\udcff byte"),
    "base exception": (Unusual("odd"), "odd"),
    "broken str": (type("Broken", (Exception,), {"__str__": lambda self: 1 / 0})(), "str()"),
}


@pytest.mark.parametrize("kind", BAD_OUTCOMES)
def test_a_bad_outcome_fails_the_job_and_the_worker_goes_on(ledger: Ledger, kind: str) -> None:
    outcome, words = BAD_OUTCOMES[kind]
    bad = ledger.create_job(1, {"bad": True})
    good = ledger.create_job(1, {"bad": False})

    def handler(job: Job, ctx: JobContext) -> object:
        if not job.config["bad"]:
            return "fine"
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert Worker(ledger, handler).run(stop_when_idle=True) == 2  # type: ignore[arg-type]
    failed = ledger.get_job(bad)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error_message is not None and words in failed.error_message
    (error,) = ledger.job_events(bad, types=[EventType.ERROR])
    assert (
        error.payload["error"] == failed.error_message and "Traceback" in error.payload["traceback"]
    )
    assert ledger.job_events(bad)[-1].payload["error_type"] == error.payload["type"]
    assert ledger.get_job(good).status is JobStatus.COMPLETED  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_errors_keep_their_type_and_traceback(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {}, max_attempts=2)

    def handler(job: Job, ctx: JobContext) -> str:
        raise QuotaExceeded(f"over quota on attempt {job.attempts}")

    Worker(ledger, handler).run(stop_when_idle=True)
    name = f"{QuotaExceeded.__module__}.QuotaExceeded"
    (error,) = ledger.job_events(job_id, types=[EventType.ERROR])
    assert error.payload["type"] == name and error.payload["error"] == "over quota on attempt 1"
    assert "raise QuotaExceeded" in error.payload["traceback"]
    (retry,) = ledger.job_events(job_id, types=[EventType.RETRY_SCHEDULED])
    assert retry.payload["error_type"] == name and retry.payload["error"] == error.payload["error"]
    assert error.worker_id == retry.worker_id and error.attempt == 1


@pytest.mark.parametrize(
    ("interrupt", "status"),
    [(KeyboardInterrupt(), 130), (SystemExit(3), 3), (SystemExit(None), 0), (SystemExit("bye"), 1)],
)
def test_an_interrupt_raised_by_the_handler_releases_and_stops(
    ledger: Ledger, interrupt: BaseException, status: int
) -> None:
    first = ledger.create_job(1, {})
    second = ledger.create_job(1, {})

    def handler(job: Job, ctx: JobContext) -> str:
        raise interrupt

    worker = Worker(ledger, handler)
    assert worker.run() == 1  # stopped after the first job, without being told to
    assert worker.exit_status == status and type(interrupt).__name__ in str(worker.stop_reason)
    job = ledger.get_job(first)
    assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
    assert ledger.job_events(first)[-1].type is EventType.RELEASED
    assert ledger.get_job(second).status is JobStatus.PENDING  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_log_is_fenced_after_another_worker_reclaimed(ledger: Ledger, clock: FakeClock) -> None:
    job_id = ledger.create_job(1, {}, max_attempts=2)
    first = ledger.claim("a", lease=10)
    assert first is not None
    ledger.log_event(job_id, EventType.PROGRESS, {"step": 1}, worker_id="a")
    clock.advance(11)  # a's lease runs out; b rescues and claims the job
    second = ledger.claim("b", lease=10)
    assert second is not None and second.id == job_id and second.attempts == 2
    stale = JobContext(ledger, first, "a")
    before = len(ledger.job_events(job_id))
    with pytest.raises(LeaseLost):
        ledger.log_event(job_id, EventType.PROGRESS, {"step": 2}, worker_id="a")
    assert stale.log(EventType.PROGRESS, {"step": 2}) is False and stale.cancelled
    assert len(ledger.job_events(job_id)) == before  # the refused appends wrote nothing
    ledger.log_event(job_id, EventType.TOOL_CALL, {"tool": "grep"}, worker_id="b")
    activity = ledger.job_events(job_id, types=[EventType.PROGRESS, EventType.TOOL_CALL])
    assert [(e.payload, e.worker_id, e.attempt) for e in activity] == [
        ({"step": 1}, "a", 1),
        ({"tool": "grep"}, "b", 2),
    ]
    assert ledger.verify().ok


def test_unnamed_log_records_the_attempt_only_while_running(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {})
    ledger.log_event(job_id, EventType.STARTED, {"queued": True})
    with pytest.raises(LeaseLost):  # a worker that names itself must hold the job
        ledger.log_event(job_id, EventType.STARTED, None, worker_id="w")
    ledger.claim("w")
    ledger.log_event(job_id, EventType.PROGRESS, None)
    events = ledger.job_events(job_id, types=[EventType.STARTED, EventType.PROGRESS])
    assert [(e.worker_id, e.attempt) for e in events] == [(None, None), (None, 1)]
    ledger.replay()
    assert ledger.verify().ok


def test_worker_logs_what_it_does(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ledger.worker")
    ok = ledger.create_job(1, {"fail": False}, queue="mail")
    bad = ledger.create_job(1, {"fail": True}, queue="mail")

    def handler(job: Job, ctx: JobContext) -> str:
        if job.config["fail"]:
            raise QuotaExceeded("no more")
        return "sent"

    Worker(ledger, handler, worker_id="w-7", queues=["mail"]).run(stop_when_idle=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "ledger.worker"]
    assert ledger.path in lines[0] and "w-7" in lines[0] and "mail" in lines[0]
    assert f"pid {os.getpid()}" in lines[0]
    assert any(f"claimed job {ok} (queue mail, attempt 1 of 1)" in line for line in lines)
    assert any(f"job {ok} completed (success)" in line for line in lines)
    assert any(f"job {bad} failed" in line and "QuotaExceeded" in line for line in lines)
    assert "stopped" in lines[-1] and "2 job(s) handled" in lines[-1]
