"""Issue 13 on every configuration: results, wait, timeouts, Permanent, durable steps, and
`AsyncLedger`, through the public API only."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from ledger import (
    MAX_LOG_EVENTS,
    AsyncLedger,
    EventType,
    InvalidArgument,
    Job,
    JobContext,
    JobNotFound,
    JobStatus,
    LeaseLost,
    Ledger,
    LedgerError,
    Permanent,
    Result,
    WaitTimeout,
    Worker,
)
from tests.conftest import FakeClock
from tests.contract.support import CONFIG

WAIT = 30.0


class Answer(msgspec.Struct):
    text: str
    tokens: int


# -- results ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [{"a": [1, 2.5, None, True]}, [1, "two"], 42, 2.5, True, "", {"nested": {"k": "v"}}],
)
def test_complete_stores_a_result_that_reads_back_equal(ledger: Ledger, value: Any) -> None:
    """Promise: ``complete(..., result=v)`` stores v in the completed event and `Job.result`
    reads back a value equal to it, of the same type; replay rebuilds it."""
    job_id = ledger.create_job(1, CONFIG)
    job = ledger.claim("w")
    assert job is not None
    ledger.complete(job_id, "done", worker_id="w", attempt=job.attempts, result=value)
    got = ledger.get_job(job_id)
    assert got is not None and got.result == value and type(got.result) is type(value)
    (completed,) = ledger.job_events(job_id, types=[EventType.COMPLETED])
    assert completed.payload["result"] == value
    ledger.replay()
    assert ledger.get_job(job_id).result == value  # type: ignore[union-attr]


def test_a_job_without_a_result_reads_none(ledger: Ledger) -> None:
    """Promise: a job completed without a result (as before issue 13), or not completed, has
    ``result`` None (the completed event's result is None too)."""
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.get_job(job_id).result is None  # type: ignore[union-attr]
    ledger.claim("w")
    ledger.complete(job_id, "done", worker_id="w")
    assert ledger.get_job(job_id).result is None  # type: ignore[union-attr]
    (completed,) = ledger.job_events(job_id, types=[EventType.COMPLETED])
    assert completed.payload.get("result") is None


@pytest.mark.parametrize("bad", [{1, 2}, (1, 2), float("nan"), {1: "a"}, b"x", object()])
def test_a_result_json_cannot_hold_is_refused_and_writes_nothing(ledger: Ledger, bad: Any) -> None:
    """Promise: a result follows the payload rule (JSON-native values only); a refused one is an
    `InvalidArgument` naming ``result`` and the job stays running, its log unchanged."""
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w")
    before = ledger.last_position()
    with pytest.raises(InvalidArgument, match="result"):
        ledger.complete(job_id, "done", worker_id="w", result=bad)
    assert ledger.last_position() == before
    assert ledger.get_job(job_id).status is JobStatus.RUNNING  # type: ignore[union-attr]


def test_a_handlers_return_value_is_the_jobs_result(ledger: Ledger) -> None:
    """Promise: a handler may return a dict, list, number, a Struct (stored as its fields) or a
    `Result` carrying ``result``; each is read back as `Job.result`. A str stays the summary."""
    returns: dict[int, Any] = {
        0: {"answer": 42},
        1: [1, 2, 3],
        2: 7,
        3: Answer("hi", 3),
        4: Result("summary", result={"r": 1}),
        5: "just a summary",
    }
    ids = {n: ledger.create_job(1, {"n": n}) for n in returns}

    def handler(job: Job, ctx: JobContext) -> Any:
        return returns[job.config["n"]]

    assert Worker(ledger, handler).run(stop_when_idle=True) == len(returns)
    jobs = {n: ledger.get_job(i) for n, i in ids.items()}
    assert all(j.status is JobStatus.COMPLETED for j in jobs.values())  # type: ignore[union-attr]
    results = {n: j.result for n, j in jobs.items()}  # type: ignore[union-attr]
    assert results == {
        0: {"answer": 42},
        1: [1, 2, 3],
        2: 7,
        3: {"text": "hi", "tokens": 3},
        4: {"r": 1},
        5: None,
    }
    assert jobs[4].result_summary == "summary"  # type: ignore[union-attr]
    assert jobs[5].result_summary == "just a summary"  # type: ignore[union-attr]


def test_a_handler_returning_what_json_cannot_hold_fails_with_a_clear_error(
    ledger: Ledger,
) -> None:
    """Promise: a return value the ledger refuses fails the job, its error saying what was wrong."""
    job_id = ledger.create_job(1, CONFIG)
    Worker(ledger, lambda job, ctx: {"tags": {"a", "b"}}).run(stop_when_idle=True)
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert "set is not JSON-native" in (job.error_message or "")


# -- wait ---------------------------------------------------------------------------------------


def test_wait_returns_a_final_job_at_once_and_refuses_unknown_ids(ledger: Ledger) -> None:
    """Promise: `wait` on a final job returns it; an unknown id is `JobNotFound`."""
    job_id = ledger.create_job(1, CONFIG)
    ledger.cancel(job_id)
    assert ledger.wait(job_id).status is JobStatus.CANCELLED
    with pytest.raises(JobNotFound):
        ledger.wait("no-such-job", timeout=1)


def test_wait_times_out_with_a_ledger_error_that_is_a_timeout_error(ledger: Ledger) -> None:
    """Promise: a job not final within ``timeout`` raises `WaitTimeout`, a `LedgerError` and a
    ``TimeoutError``, saying the job's state; nothing is written."""
    job_id = ledger.create_job(1, CONFIG)
    before = ledger.last_position()
    with pytest.raises(WaitTimeout) as raised:
        ledger.wait(job_id, timeout=timedelta(milliseconds=50))
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, LedgerError)
    assert "pending" in str(raised.value) and raised.value.job_id == job_id
    assert ledger.last_position() == before
    with pytest.raises(InvalidArgument, match="timeout"):
        ledger.wait(job_id, timeout=-1)


def test_wait_is_woken_when_another_thread_finishes_the_job(ledger: Ledger) -> None:
    """Promise: `wait` returns the final job once a worker completes it."""
    job_id = ledger.create_job(1, CONFIG)
    waiting = threading.Event()

    def finish() -> None:
        assert waiting.wait(WAIT)
        job = ledger.claim("w")
        assert job is not None
        ledger.complete(job.id, "done", worker_id="w", attempt=job.attempts, result=[1])

    thread = threading.Thread(target=finish)
    thread.start()
    waiting.set()
    job = ledger.wait(job_id, timeout=WAIT)
    thread.join(WAIT)
    assert job.status is JobStatus.COMPLETED and job.result == [1]


# -- timeouts -----------------------------------------------------------------------------------


def test_a_jobs_timeout_is_recorded_in_seconds(ledger: Ledger) -> None:
    """Promise: ``create_job(timeout=...)`` takes seconds or a timedelta and `Job.timeout` reads
    it back in seconds; no timeout reads None; a bad one is refused and writes nothing."""
    a = ledger.create_job(1, CONFIG, timeout=2.5)
    b = ledger.create_job(1, CONFIG, timeout=timedelta(minutes=2))
    c = ledger.create_job(1, CONFIG)
    assert [ledger.get_job(i).timeout for i in (a, b, c)] == [2.5, 120.0, None]  # type: ignore[union-attr]
    (d,) = ledger.create_jobs([{"chat_id": 1, "config": CONFIG, "timeout": 3}])
    assert ledger.get_job(d).timeout == 3.0  # type: ignore[union-attr]
    before = ledger.last_position()
    for bad in (0, -1, float("nan"), "10"):
        with pytest.raises(InvalidArgument, match="timeout"):
            ledger.create_job(1, CONFIG, timeout=bad)  # type: ignore[arg-type]
    assert ledger.last_position() == before
    ledger.replay()
    assert ledger.get_job(b).timeout == 120.0  # type: ignore[union-attr]


def test_an_attempt_past_its_timeout_fails_with_a_timeout_error_and_is_retried(
    ledger: Ledger,
) -> None:
    """Promise: a handler still running at its job's timeout is interrupted (``ctx.timed_out``)
    and the attempt fails with error type ``Timeout``; with attempts left the job is retried."""
    job_id = ledger.create_job(1, CONFIG, timeout=0.2, max_attempts=2)
    saw: list[bool] = []

    def handler(job: Job, ctx: JobContext) -> str:
        event = threading.Event()
        while not ctx.timed_out and not event.wait(0.01):
            pass
        saw.append(ctx.timed_out)
        return "too late"

    Worker(ledger, handler).run(max_jobs=1)
    (retry,) = ledger.job_events(job_id, types=[EventType.RETRY_SCHEDULED])
    assert retry.payload["error_type"] == "Timeout" and "timeout" in retry.payload["error"]
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING and job.attempts == 1


# -- Permanent ----------------------------------------------------------------------------------


def test_permanent_fails_the_job_whatever_attempts_are_left(ledger: Ledger) -> None:
    """Promise: a handler raising `Permanent` fails its job for good on the first attempt."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=5)

    def handler(job: Job, ctx: JobContext) -> str:
        raise Permanent("the config names a model that does not exist")

    Worker(ledger, handler).run(stop_when_idle=True)
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED and job.attempts == 1
    assert job.error_message == "the config names a model that does not exist"
    assert ledger.job_events(job_id, types=[EventType.RETRY_SCHEDULED]) == []


def test_fail_with_retry_false_fails_at_once(ledger: Ledger) -> None:
    """Promise: ``fail(..., retry=False)`` (the path Permanent takes) ends the job now."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=3)
    ledger.claim("w")
    ledger.fail(job_id, "no", worker_id="w", retry=False, error_type="Permanent")
    assert ledger.get_job(job_id).status is JobStatus.FAILED  # type: ignore[union-attr]


# -- durable steps ------------------------------------------------------------------------------


def test_a_step_runs_once_per_job_and_a_retry_gets_the_recorded_result(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Promise: ``ctx.step(name, fn)`` runs fn and records its result as a step event; on a
    retry of the job the recorded result is returned and fn is not called again."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=2)
    calls: list[str] = []

    def expensive() -> dict[str, Any]:
        calls.append("llm")
        return {"text": "answer", "cost": 1.5}

    def handler(job: Job, ctx: JobContext) -> Any:
        first = ctx.step("llm", expensive)
        if job.attempts == 1:
            raise RuntimeError("crashed after the step")
        return first

    Worker(ledger, handler).run(stop_when_idle=True)
    assert ledger.get_job(job_id).status is JobStatus.PENDING  # type: ignore[union-attr]
    clock.advance(3600)  # past the retry's backoff
    Worker(ledger, handler).run(stop_when_idle=True)
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.COMPLETED and job.attempts == 2
    assert calls == ["llm"]
    assert job.result == {"text": "answer", "cost": 1.5}
    (step,) = ledger.job_events(job_id, types=[EventType.STEP])
    assert step.payload["name"] == "llm" and step.payload["result"] == job.result
    assert step.attempt == 1 and step.worker_id is not None


def test_record_step_is_fenced_by_worker_and_attempt(ledger: Ledger) -> None:
    """Promise: only the worker holding the attempt may record a step (`LeaseLost` otherwise),
    and a refused step writes nothing."""
    job_id = ledger.create_job(1, CONFIG)
    job = ledger.claim("w")
    assert job is not None
    before = ledger.last_position()
    with pytest.raises(LeaseLost):
        ledger.record_step(job_id, "s", 1, worker_id="other", attempt=job.attempts)
    with pytest.raises(LeaseLost):
        ledger.record_step(job_id, "s", 1, worker_id="w", attempt=job.attempts + 1)
    with pytest.raises(InvalidArgument, match="result"):
        ledger.record_step(job_id, "s", {1}, worker_id="w", attempt=job.attempts)
    assert ledger.last_position() == before
    ledger.record_step(job_id, "s", [1], worker_id="w", attempt=job.attempts)
    assert ledger.job_events(job_id)[-1].type is EventType.STEP


# -- AsyncLedger --------------------------------------------------------------------------------


def test_async_ledger_runs_every_call_and_wait_on_this_configuration(ledger: Ledger) -> None:
    """Promise: an `AsyncLedger` wrapping a ledger awaits its calls (commands, reads, wait),
    with the same results; ``wait`` is woken by a completion made by another task."""

    async def main() -> tuple[Job, Job | None, int]:
        async with AsyncLedger(ledger) as lg:
            job_id = await lg.create_job(1, CONFIG, timeout=5)

            async def work() -> None:
                job = await lg.claim("w")
                assert job is not None
                await lg.complete(job.id, "ok", worker_id="w", attempt=job.attempts, result=2)

            task = asyncio.create_task(work())
            done = await lg.wait(job_id, timeout=WAIT)
            await task
            with pytest.raises(WaitTimeout):
                await lg.wait(await lg.create_job(1, CONFIG), timeout=0.05)
            return done, await lg.get_job(job_id), await lg.count_jobs()

    done, again, count = asyncio.run(main())
    assert done.status is JobStatus.COMPLETED and done.result == 2 and done.timeout == 5.0
    assert again == done and count == 2


def test_async_ledger_logs_batches_from_many_tasks(ledger: Ledger) -> None:
    """Promise: `AsyncLedger.log_events` from many tasks at once (group commit) writes every
    batch whole and in order, each to its own job; a generator of events works like a list;
    a refused batch fails alone and writes nothing."""

    async def main() -> tuple[list[str], list[int], BaseException]:
        async with AsyncLedger(ledger) as lg:
            jobs = [await lg.create_job(1, CONFIG) for _ in range(12)]

            async def log(n: int, job_id: str) -> int:
                pairs = (("progress", {"task": n, "step": i}) for i in range(n + 1))
                return await lg.log_events(job_id, pairs)  # type: ignore[no-any-return]

            await lg.cancel(jobs[5])
            results = await asyncio.gather(
                *(log(n, job_id) for n, job_id in enumerate(jobs)), return_exceptions=True
            )
            refused = results.pop(5)
            assert isinstance(refused, BaseException)
            return jobs, results, refused  # type: ignore[return-value]

    jobs, versions, refused = asyncio.run(main())
    assert isinstance(refused, LedgerError) and "cancelled" in str(refused)
    assert versions == [n + 2 for n in range(12) if n != 5]
    for n, job_id in enumerate(jobs):
        logged = ledger.job_events(job_id, types=[EventType.PROGRESS])
        expected = [] if n == 5 else [{"task": n, "step": i} for i in range(n + 1)]
        assert [e.payload for e in logged] == expected


def test_a_concurrent_worker_runs_async_and_plain_handlers_at_once(ledger: Ledger) -> None:
    """Promise: ``Worker(concurrency=N)`` has N jobs in flight at once, on every backend: four
    async handlers (one event loop) and then four plain ones (threads) each wait for all four."""
    async_ids = [ledger.create_job(1, {"n": n}, queue="a") for n in range(4)]
    arrived: list[int] = []

    async def async_handler(job: Job, ctx: JobContext) -> int:
        arrived.append(job.config["n"])
        while len(arrived) < 4:
            await asyncio.sleep(0.005)
        return int(job.config["n"])

    worker = Worker(ledger, async_handler, concurrency=4, queues=["a"])
    assert worker.run(stop_when_idle=True) == 4
    assert [ledger.get_job(i).result for i in async_ids] == [0, 1, 2, 3]  # type: ignore[union-attr]

    plain_ids = [ledger.create_job(1, {"n": n}, queue="p") for n in range(4)]
    barrier = threading.Barrier(4, timeout=WAIT)

    def plain_handler(job: Job, ctx: JobContext) -> int:
        barrier.wait()
        return int(job.config["n"])

    assert Worker(ledger, plain_handler, concurrency=4, queues=["p"]).run(stop_when_idle=True) == 4
    assert [ledger.get_job(i).result for i in plain_ids] == [0, 1, 2, 3]  # type: ignore[union-attr]


def test_async_log_events_refuses_an_endless_generator_without_drawing_it(
    ledger: Ledger,
) -> None:
    """Promise: `AsyncLedger.log_events` takes at most `MAX_LOG_EVENTS` pairs, as `Ledger`'s
    does; a generator that runs past them (here an endless one) is refused with
    `InvalidArgument` after one pair more is drawn, and nothing is written."""
    drawn = itertools.count()

    def endless() -> Iterator[tuple[str, dict[str, int]]]:
        while True:
            yield ("progress", {"n": next(drawn)})

    async def main() -> BaseException | None:
        async with AsyncLedger(ledger) as lg:
            job_id = await lg.create_job(1, CONFIG)
            try:
                await lg.log_events(job_id, endless())
            except InvalidArgument as e:
                assert ledger.job_events(job_id)[1:] == []
                return e
        return None

    refused = asyncio.run(main())
    assert isinstance(refused, InvalidArgument) and refused.name == "events"
    assert next(drawn) == MAX_LOG_EVENTS + 1  # drawn: the most it takes, and one more
