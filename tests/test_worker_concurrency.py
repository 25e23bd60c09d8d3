"""`Worker(concurrency=N)` in one process, on real SQLite files: sync handlers in threads, async
ones on one event loop; per-job heartbeats, cancel and timeouts; per-queue limits; results;
`Permanent` and ``no_retry``; durable steps; stopping with many jobs in flight."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from ledger import (
    EventType,
    InvalidArgument,
    Job,
    JobContext,
    JobInterrupted,
    JobStatus,
    Ledger,
    Permanent,
    Worker,
)

WAIT = 30.0


def _statuses(ledger: Ledger, ids: list[str]) -> list[JobStatus]:
    return [ledger.get_job(i).status for i in ids]  # type: ignore[union-attr]


def _in_thread(worker: Worker, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.01)


def test_sync_handlers_run_concurrently_in_threads(db_path: str) -> None:
    """Four plain handlers meet at a barrier: only possible when all four run at once."""
    with Ledger(db_path) as ledger:
        ids = [ledger.create_job(1, {"n": n}) for n in range(4)]
        barrier = threading.Barrier(4, timeout=WAIT)
        threads: set[str] = set()

        def handler(job: Job, ctx: JobContext) -> dict[str, int]:
            threads.add(threading.current_thread().name)
            barrier.wait()
            return {"n": job.config["n"]}

        assert Worker(ledger, handler, concurrency=4).run(stop_when_idle=True) == 4
        assert _statuses(ledger, ids) == [JobStatus.COMPLETED] * 4
        assert [ledger.get_job(i).result for i in ids] == [{"n": n} for n in range(4)]  # type: ignore[union-attr]
        assert len(threads) == 4
        assert ledger.verify().ok


def test_async_handlers_run_concurrently_on_one_event_loop(db_path: str) -> None:
    """Eight async handlers wait for each other on one loop (one thread)."""
    with Ledger(db_path) as ledger:
        ids = [ledger.create_job(1, {"n": n}) for n in range(8)]
        arrived: list[int] = []
        loops: set[int] = set()
        threads: set[int] = set()

        async def handler(job: Job, ctx: JobContext) -> int:
            loops.add(id(asyncio.get_running_loop()))
            threads.add(threading.get_ident())
            arrived.append(job.config["n"])
            while len(arrived) < 8:  # only ends when all eight are in flight together
                await asyncio.sleep(0.005)
            return int(job.config["n"]) * 10

        worker = Worker(ledger, handler, concurrency=8)
        thread = _in_thread(worker, stop_when_idle=True)
        thread.join(WAIT)
        assert not thread.is_alive()
        assert _statuses(ledger, ids) == [JobStatus.COMPLETED] * 8
        assert [ledger.get_job(i).result for i in ids] == [n * 10 for n in range(8)]  # type: ignore[union-attr]
        assert len(loops) == 1 and len(threads) == 1
        assert ledger.verify().ok


def test_concurrency_one_runs_one_job_at_a_time(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        for n in range(5):
            ledger.create_job(1, {"n": n})
        active, most = [0], [0]
        lock = threading.Lock()

        def handler(job: Job, ctx: JobContext) -> None:
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            with lock:
                active[0] -= 1

        assert Worker(ledger, handler).run(stop_when_idle=True) == 5
        assert most == [1]


def test_a_per_queue_limit_holds_while_other_queues_use_the_rest(db_path: str) -> None:
    """queue_concurrency={"slow": 1}: the slow jobs run one at a time even though the worker
    has four slots, while the fast queue's jobs run beside them."""
    with Ledger(db_path) as ledger:
        slow = [ledger.create_job(1, {}, queue="slow") for _ in range(3)]
        fast = [ledger.create_job(1, {}, queue="fast") for _ in range(3)]
        active = {"slow": 0, "fast": 0}
        most = {"slow": 0, "fast": 0}
        lock = threading.Lock()
        fast_done = threading.Event()
        fast_seen: list[str] = []

        def handler(job: Job, ctx: JobContext) -> str:
            with lock:
                active[job.queue] += 1
                most[job.queue] = max(most[job.queue], active[job.queue])
            if job.queue == "slow":
                fast_done.wait(WAIT)  # holds a slot until the fast ones all ran
            with lock:
                active[job.queue] -= 1
                if job.queue == "fast":
                    fast_seen.append(job.id)
                    if len(fast_seen) == 3:
                        fast_done.set()
            return "ok"

        worker = Worker(ledger, handler, concurrency=4, queue_concurrency={"slow": 1})
        assert worker.run(stop_when_idle=True) == 6
        assert most["slow"] == 1
        assert _statuses(ledger, slow + fast) == [JobStatus.COMPLETED] * 6
        assert ledger.verify().ok


def test_a_rate_limit_spaces_the_claims_of_its_queue(db_path: str) -> None:
    """rate_limits={"q": 20}: claims of q are at least 1/20 s apart in this worker."""
    with Ledger(db_path) as ledger:
        for _ in range(4):
            ledger.create_job(1, {}, queue="q")
        starts: list[float] = []

        def handler(job: Job, ctx: JobContext) -> None:
            starts.append(time.monotonic())

        assert (
            Worker(ledger, handler, concurrency=4, rate_limits={"q": 20}).run(stop_when_idle=True)
            == 4
        )
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert all(gap >= 0.045 for gap in gaps), gaps  # 1/20 s, less clock granularity


@pytest.mark.parametrize(
    "settings",
    [
        {"concurrency": 0},
        {"concurrency": True},
        {"queue_concurrency": {"q": 0}},
        {"rate_limits": {"q": 0}},
        {"rate_limits": {"q": "fast"}},
        {"timeouts": {"q": -1}},
        {"no_retry": {"q": [42]}},
        {"no_retry": ["q"]},
    ],
)
def test_bad_concurrency_settings_are_refused(ledger: Ledger, settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        Worker(ledger, lambda job, ctx: None, **settings)


def test_an_async_handler_past_its_timeout_is_cancelled_and_retried(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        job_id = ledger.create_job(1, {}, timeout=0.1, max_attempts=2)
        cancelled = threading.Event()

        async def handler(job: Job, ctx: JobContext) -> str:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never"

        Worker(ledger, handler).run(max_jobs=1)
        assert cancelled.wait(WAIT)
        (retry,) = ledger.job_events(job_id, types=[EventType.RETRY_SCHEDULED])
        assert retry.payload["error_type"] == "Timeout"
        (error,) = ledger.job_events(job_id, types=[EventType.ERROR])
        assert error.payload["type"] == "Timeout" and "0.1s" in error.payload["error"]
        assert ledger.get_job(job_id).status is JobStatus.PENDING  # type: ignore[union-attr]
        assert ledger.verify().ok


def test_a_queue_default_timeout_applies_and_a_jobs_own_wins(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        default = ledger.create_job(1, {}, queue="q")
        own = ledger.create_job(1, {}, queue="q", timeout=3600)
        seen: dict[str, bool] = {}

        def handler(job: Job, ctx: JobContext) -> str:
            deadline = time.monotonic() + 0.6  # the queue default (0.1 s) six times over
            while not ctx.timed_out and time.monotonic() < deadline:
                threading.Event().wait(0.01)
            seen[job.id] = ctx.timed_out
            return "ok"

        Worker(ledger, handler, concurrency=2, timeouts={"q": 0.1}).run(stop_when_idle=True)
        _until(lambda: len(seen) == 2, "both handlers to return")
        assert seen == {default: True, own: False}
        job = ledger.get_job(default)
        assert job is not None and job.status is JobStatus.FAILED
        assert ledger.get_job(own).status is JobStatus.COMPLETED  # type: ignore[union-attr]
        assert ledger.verify().ok


def test_a_timed_out_sync_handler_is_not_waited_for_and_cannot_write(db_path: str) -> None:
    """The worker fails the attempt and moves on; the handler, when it finally returns, finds
    its writes refused and its return ignored."""
    with Ledger(db_path) as ledger:
        stuck = ledger.create_job(1, {"stuck": True}, timeout=0.1)
        nxt = ledger.create_job(1, {"stuck": False})
        release = threading.Event()
        late: dict[str, Any] = {}

        def handler(job: Job, ctx: JobContext) -> str:
            if job.config["stuck"]:
                release.wait(WAIT)
                late["logged"] = ctx.log(EventType.PROGRESS, {"late": True})
                try:
                    ctx.check()
                except JobInterrupted as e:
                    late["check"] = str(e)
            return "done"

        Worker(ledger, handler).run(stop_when_idle=True)
        assert ledger.get_job(stuck).status is JobStatus.FAILED  # type: ignore[union-attr]
        assert ledger.get_job(nxt).status is JobStatus.COMPLETED  # type: ignore[union-attr]
        release.set()
        _until(lambda: "check" in late, "the stuck handler to return")
        assert late["logged"] is False
        assert ledger.get_job(stuck).status is JobStatus.FAILED  # type: ignore[union-attr]
        assert ledger.verify().ok


def test_permanent_and_no_retry_types_fail_at_once_others_retry(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        kinds = ["permanent", "listed", "listed_everywhere", "other"]
        ids = {k: ledger.create_job(1, {"kind": k}, queue="q", max_attempts=3) for k in kinds}

        class Quota(Exception):
            pass

        async def handler(job: Job, ctx: JobContext) -> None:
            kind = job.config["kind"]
            if kind == "permanent":
                raise Permanent("cannot ever work")
            if kind == "listed":
                raise KeyError("no such key")
            if kind == "listed_everywhere":
                raise Quota("out of quota")
            raise ValueError("try again")

        worker = Worker(ledger, handler, concurrency=4, no_retry={"q": [KeyError], "*": [Quota]})
        worker.run(stop_when_idle=True)
        jobs = {k: ledger.get_job(i) for k, i in ids.items()}
        assert jobs["permanent"].status is JobStatus.FAILED  # type: ignore[union-attr]
        assert jobs["listed"].status is JobStatus.FAILED  # type: ignore[union-attr]
        assert jobs["listed_everywhere"].status is JobStatus.FAILED  # type: ignore[union-attr]
        assert jobs["other"].status is JobStatus.PENDING  # type: ignore[union-attr]
        assert jobs["permanent"].error_message == "cannot ever work"  # type: ignore[union-attr]
        assert all(j.attempts == 1 for j in jobs.values())  # type: ignore[union-attr]
        assert ledger.verify().ok


def test_a_cancel_reaches_only_its_job_among_many_in_flight(db_path: str) -> None:
    """Heartbeats are per job: cancelling one job cancels its async task; the others finish."""
    with Ledger(db_path) as ledger:
        ids = [ledger.create_job(1, {"n": n}) for n in range(3)]
        started: set[str] = set()
        go = asyncio.Event  # created on the worker's loop below
        state: dict[str, Any] = {}

        async def handler(job: Job, ctx: JobContext) -> str:
            if "go" not in state:
                state["go"] = go()
            started.add(job.id)
            if job.id == ids[0]:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    state["cancelled"] = ctx.cancelled
                    raise
            await state["go"].wait()
            return "finished"

        worker = Worker(ledger, handler, concurrency=3, heartbeat_every=0.02)
        thread = _in_thread(worker, stop_when_idle=True)
        _until(lambda: len(started) == 3, "three jobs in flight")
        assert ledger.cancel(ids[0])
        _until(lambda: "cancelled" in state, "the cancelled job's task to be cancelled")
        assert state["cancelled"] is True
        loop = worker._loop
        assert loop is not None
        loop.call_soon_threadsafe(state["go"].set)
        thread.join(WAIT)
        assert not thread.is_alive()
        assert _statuses(ledger, ids) == [
            JobStatus.CANCELLED,
            JobStatus.COMPLETED,
            JobStatus.COMPLETED,
        ]
        assert ledger.verify().ok


def test_async_steps_run_once_and_a_retry_returns_the_recorded_results(
    db_path: str,
) -> None:
    from tests.conftest import FakeClock

    clock = FakeClock()
    with Ledger(db_path, clock=clock) as ledger:
        job_id = ledger.create_job(1, {}, max_attempts=2)
        calls: list[str] = []

        async def plan() -> list[str]:
            calls.append("plan")
            return ["a", "b"]

        def tally() -> int:
            calls.append("tally")
            return 2

        async def handler(job: Job, ctx: JobContext) -> dict[str, Any]:
            steps = await ctx.step("plan", plan)
            if job.attempts == 1:
                raise RuntimeError("crash between the steps")
            count = ctx.step("tally", tally)  # a plain fn inside an async handler: no await
            return {"steps": steps, "count": count}

        Worker(ledger, handler).run(stop_when_idle=True)
        clock.advance(3600)
        Worker(ledger, handler).run(stop_when_idle=True)
        job = ledger.get_job(job_id)
        assert job is not None and job.status is JobStatus.COMPLETED
        assert calls == ["plan", "tally"]
        assert job.result == {"steps": ["a", "b"], "count": 2}
        steps = ledger.job_events(job_id, types=[EventType.STEP])
        assert [(s.payload["name"], s.attempt) for s in steps] == [("plan", 1), ("tally", 2)]
        assert ledger.verify().ok


def test_a_step_of_a_job_that_is_not_ours_any_more_is_not_recorded(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        job_id = ledger.create_job(1, {})
        seen: dict[str, Any] = {}

        def handler(job: Job, ctx: JobContext) -> str:
            ledger.cancel(job.id)
            try:
                ctx.step("after-cancel", lambda: 1)
            except JobInterrupted as e:
                seen["error"] = str(e)
            seen["cancelled"] = ctx.cancelled
            return "ignored"

        Worker(ledger, handler).run(max_jobs=1)
        assert "not recorded" in seen["error"] and seen["cancelled"] is True
        assert ledger.job_events(job_id, types=[EventType.STEP]) == []
        assert ledger.get_job(job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]


def test_a_step_result_json_cannot_hold_fails_the_job(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        job_id = ledger.create_job(1, {})
        Worker(ledger, lambda job, ctx: ctx.step("bad", lambda: {1, 2})).run(max_jobs=1)
        job = ledger.get_job(job_id)
        assert job is not None and job.status is JobStatus.FAILED
        assert "set is not JSON-native" in (job.error_message or "")
        assert ledger.job_events(job_id, types=[EventType.STEP]) == []


def test_a_stop_with_many_in_flight_completes_the_finishers_and_releases_the_rest(
    db_path: str,
) -> None:
    """First stop: no more claims; handlers that finish within the grace complete, those that
    give up (None) and those still running when it ends are released, never completed."""
    with Ledger(db_path) as ledger:
        ids = {k: ledger.create_job(1, {"kind": k}) for k in ("finish", "give_up", "stuck")}
        extra = ledger.create_job(1, {"kind": "never_claimed"})
        started: set[str] = set()
        forever = threading.Event()

        def handler(job: Job, ctx: JobContext) -> str | None:
            started.add(job.config["kind"])
            while not ctx.stopping:
                threading.Event().wait(0.01)
            if job.config["kind"] == "finish":
                return "finished in the grace period"
            if job.config["kind"] == "give_up":
                return None
            forever.wait(WAIT)  # ignores the stop
            return "too late"

        worker = Worker(ledger, handler, concurrency=3, grace_period=0.3)
        thread = _in_thread(worker)
        _until(lambda: len(started) == 3, "three jobs in flight")
        worker.stop()
        thread.join(WAIT)
        assert not thread.is_alive()
        jobs = {k: ledger.get_job(i) for k, i in ids.items()}
        assert jobs["finish"].status is JobStatus.COMPLETED  # type: ignore[union-attr]
        assert jobs["give_up"].status is JobStatus.PENDING  # type: ignore[union-attr]
        assert jobs["stuck"].status is JobStatus.PENDING  # type: ignore[union-attr]
        assert all(j.attempts == 0 for k, j in jobs.items() if k != "finish")  # type: ignore[union-attr]
        assert ledger.get_job(extra).status is JobStatus.PENDING  # type: ignore[union-attr]
        assert worker.abandoned and worker.exit_status == 1
        forever.set()
        assert ledger.verify().ok


def test_a_forced_stop_releases_every_async_job_in_flight(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        ids = [ledger.create_job(1, {}) for _ in range(5)]
        started: list[str] = []

        async def handler(job: Job, ctx: JobContext) -> str:
            started.append(job.id)
            await asyncio.sleep(3600)
            return "never"

        worker = Worker(ledger, handler, concurrency=5, grace_period=3600)
        thread = _in_thread(worker)
        _until(lambda: len(started) == 5, "five jobs in flight")
        worker.stop()
        worker.force_stop()
        thread.join(WAIT)
        assert not thread.is_alive()
        assert _statuses(ledger, ids) == [JobStatus.PENDING] * 5
        released = [ledger.job_events(i)[-1] for i in ids]
        assert all(e.type is EventType.RELEASED for e in released)
        assert ledger.verify().ok


def test_wait_returns_when_a_concurrent_worker_finishes_the_job(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        job_id = ledger.create_job(1, {"x": 1})

        async def handler(job: Job, ctx: JobContext) -> dict[str, int]:
            return {"doubled": job.config["x"] * 2}

        worker = Worker(ledger, handler, concurrency=4)
        thread = _in_thread(worker, stop_when_idle=True)
        job = ledger.wait(job_id, timeout=WAIT)
        thread.join(WAIT)
        assert job.status is JobStatus.COMPLETED and job.result == {"doubled": 2}
