"""The job lifecycle the README promises: create, claim, heartbeat, complete, fail and retry,
cancel, release, lease expiry, idempotency, priorities, run_at, queues, and fencing."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, timedelta

import pytest

from ledger import (
    MAX_KEY_LENGTH,
    MAX_LOG_EVENTS,
    ConcurrencyError,
    EventType,
    InvalidArgument,
    InvalidTransition,
    JobNotFound,
    JobStatus,
    LeaseLost,
    Ledger,
    RetryPolicy,
    Worker,
)
from tests.conftest import FakeClock
from tests.contract.conftest import LedgerFactory
from tests.contract.support import CONFIG, state

# -- create -------------------------------------------------------------------------------------


def test_create_records_a_pending_job(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `create_job` returns a new id; the job is pending, claimable from its creation
    time, at version 1 with one ``created`` event, and its times are the clock's, in UTC."""
    ids = {ledger.create_job(1, CONFIG) for _ in range(20)}
    assert len(ids) == 20
    job = ledger.get_job(ids.pop())
    assert job is not None
    assert (job.status, job.version, job.attempts, job.max_attempts) == (
        JobStatus.PENDING,
        1,
        0,
        1,
    )
    assert (job.queue, job.priority, job.worker_id, job.lease_expires_at) == (
        "default",
        0,
        None,
        None,
    )
    assert job.created_at == job.updated_at == job.run_at == clock.now
    assert job.created_at.tzinfo is not None and job.created_at.utcoffset() == timedelta(0)
    assert [e.type for e in ledger.job_events(job.id)] == [EventType.CREATED]


def test_create_jobs_keeps_the_order_of_its_specs(ledger: Ledger) -> None:
    """Promise: `create_jobs` returns one id per spec, in order, and the jobs are claimed in
    that order; an empty batch creates nothing."""
    assert ledger.create_jobs([]) == [] and ledger.last_position() == 0
    ids = ledger.create_jobs([{"chat_id": n, "config": {"n": n}} for n in range(10)])
    assert len(set(ids)) == 10
    assert [ledger.get_job(i).config["n"] for i in ids] == list(range(10))  # type: ignore[union-attr]
    assert [ledger.claim("w").id for _ in range(10)] == ids  # type: ignore[union-attr]


def test_an_idempotency_key_returns_the_first_job(ledger: Ledger) -> None:
    """Promise: a reused idempotency key returns the first job's id and writes nothing, also
    within one batch and after the first job has finished."""
    first = ledger.create_job(1, CONFIG, idempotency_key="order-42")
    before = state(ledger)
    assert ledger.create_job(2, {"other": True}, idempotency_key="order-42") == first
    assert state(ledger) == before
    batch = ledger.create_jobs(
        [
            {"chat_id": 1, "config": CONFIG, "idempotency_key": "order-42"},
            {"chat_id": 1, "config": CONFIG, "idempotency_key": "order-43"},
            {"chat_id": 1, "config": CONFIG, "idempotency_key": "order-43"},
        ]
    )
    assert batch[0] == first and batch[1] == batch[2] != first
    assert ledger.count_jobs() == 2
    ledger.claim("w")
    ledger.complete(first, "done")
    assert ledger.create_job(1, CONFIG, idempotency_key="order-42") == first
    assert ledger.get_job(batch[1]).idempotency_key == "order-43"  # type: ignore[union-attr]


# -- claim --------------------------------------------------------------------------------------


def test_claim_takes_the_job_under_a_lease(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `claim` returns the job it took, running, held by the worker under a lease of
    ``lease`` seconds (a number or a timedelta), as the job's first attempt."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=3)
    ledger.create_job(1, CONFIG)
    job = ledger.claim("w1", lease=10)
    assert job is not None and job.id == job_id
    assert (job.status, job.worker_id, job.attempts) == (JobStatus.RUNNING, "w1", 1)
    assert job.started_at == clock.now
    assert job.lease_expires_at == clock.now + timedelta(seconds=10)
    assert ledger.get_job(job_id) == job
    other = ledger.claim("w2", lease=timedelta(minutes=2))
    assert other is not None and other.lease_expires_at == clock.now + timedelta(minutes=2)
    assert ledger.job_events(job_id)[-1].type is EventType.CLAIMED


def test_claim_with_nothing_claimable_returns_none_and_writes_nothing(ledger: Ledger) -> None:
    """Promise: `claim` answers None when no job is claimable now, and writes nothing."""
    assert ledger.claim("w") is None
    ledger.create_job(1, CONFIG, queue="elsewhere")
    before = state(ledger)
    assert ledger.claim("w", queues=["default"]) is None
    assert state(ledger) == before


def test_claim_takes_highest_priority_then_oldest(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: claims go by priority (highest first), then by creation time (oldest first),
    then by creation order."""
    low_old = ledger.create_job(1, CONFIG, priority=0)
    clock.advance(1)
    high_new = ledger.create_job(1, CONFIG, priority=10)
    clock.advance(1)
    high_newer = ledger.create_job(1, CONFIG, priority=10)
    tie = ledger.create_job(1, CONFIG, priority=10)  # same time as high_newer: creation order
    negative = ledger.create_job(1, CONFIG, priority=-5)
    clock.advance(-60)
    older_written_later = ledger.create_job(1, CONFIG, priority=0)
    clock.advance(60)
    order = [ledger.claim("w").id for _ in range(6)]  # type: ignore[union-attr]
    assert order == [high_new, high_newer, tie, older_written_later, low_old, negative]


def test_run_at_is_the_earliest_claim_inclusive(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: a job with ``run_at`` is not claimable before it, and is claimable from it on."""
    later = clock.now + timedelta(minutes=5)
    job_id = ledger.create_job(1, CONFIG, run_at=later)
    assert ledger.get_job(job_id).run_at == later  # type: ignore[union-attr]
    clock.advance(299.999)
    assert ledger.claim("w") is None
    clock.now = later
    assert ledger.claim("w").id == job_id  # type: ignore[union-attr]


def test_run_at_in_another_time_zone_is_the_same_instant(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: times are timezone-aware; a ``run_at`` given in another zone is read back as the
    same instant, in UTC."""
    from datetime import timezone

    plus_two = (clock.now + timedelta(hours=1)).astimezone(timezone(timedelta(hours=2)))
    job = ledger.get_job(ledger.create_job(1, CONFIG, run_at=plus_two))
    assert job is not None and job.run_at == plus_two
    assert job.run_at.utcoffset() == timedelta(0) and job.run_at.astimezone(UTC) == job.run_at


def test_claim_takes_only_the_queues_asked_for(ledger: Ledger) -> None:
    """Promise: ``queues=[...]`` claims only from those queues; None claims from every queue."""
    mail = ledger.create_job(1, CONFIG, queue="mail")
    ledger.create_job(1, CONFIG, queue="default")
    video = ledger.create_job(1, CONFIG, queue="video")
    assert ledger.claim("w", queues=["video"]).id == video  # type: ignore[union-attr]
    assert ledger.claim("w", queues=["video"]) is None
    assert ledger.claim("w", queues=["mail", "video"]).id == mail  # type: ignore[union-attr]
    last = ledger.claim("w")
    assert last is not None and last.queue == "default"


# -- heartbeat ----------------------------------------------------------------------------------


def test_heartbeat_extends_the_lease(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `heartbeat` extends the lease by the claim's length (or by ``lease``), so a job
    whose worker keeps beating is never rescued; each beat is an event."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=2)
    ledger.claim("w1", lease=10)
    for _ in range(5):
        clock.advance(9)
        ledger.heartbeat(job_id, worker_id="w1")
        assert ledger.claim("w2") is None
    job = ledger.get_job(job_id)
    assert job is not None and job.lease_expires_at == clock.now + timedelta(seconds=10)
    assert (job.updated_at, job.version) == (clock.now, 7)
    ledger.heartbeat(job_id, lease=60)  # without worker_id: any running job
    clock.advance(59)
    assert ledger.rescue_expired() == 0
    assert ledger.get_job(job_id).worker_id == "w1"  # type: ignore[union-attr]
    beats = ledger.job_events(job_id, types=[EventType.HEARTBEAT])
    assert len(beats) == 6


# -- complete -----------------------------------------------------------------------------------


def test_complete_records_the_result(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `complete` finishes a running job with its summary, result status, cost and
    duration; the lease ends with it."""
    job_id = ledger.create_job(7, CONFIG, thread_id=3, user_id="u1")
    ledger.claim("w", lease=60)
    clock.advance(5)
    ledger.complete(job_id, "all good", "success", 12.5, 5, worker_id="w")
    job = ledger.get_job(job_id)
    assert job is not None
    assert (job.status, job.result_summary, job.result_status) == (
        JobStatus.COMPLETED,
        "all good",
        "success",
    )
    assert (job.cost_cents, job.duration_seconds, job.completed_at) == (12.5, 5, clock.now)
    assert (job.worker_id, job.lease_expires_at, job.error_message) == ("w", None, None)
    assert ledger.job_events(job_id)[-1].type is EventType.COMPLETED


def test_complete_defaults_duration_to_the_time_since_claim(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Promise: without ``duration_seconds``, `complete` records the seconds since the claim."""
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w")
    clock.advance(42)
    ledger.complete(job_id, "done")
    job = ledger.get_job(job_id)
    assert job is not None and job.duration_seconds == 42 and job.result_status == "success"
    assert job.cost_cents == 0.0


# -- fail and retry -----------------------------------------------------------------------------


def test_fail_with_attempts_left_retries_after_the_backoff(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Promise: `fail` with attempts left puts the job back to pending, claimable again after
    the policy's backoff (10 s, 20 s, ... here without jitter); the last attempt fails it."""
    ledger = open_ledger(retry_policy=RetryPolicy(base=10, factor=2, cap=3600, jitter=0))
    job_id = ledger.create_job(1, CONFIG, max_attempts=3)
    for attempt, wait in ((1, 10), (2, 20)):
        job = ledger.claim("w")
        assert job is not None and job.attempts == attempt
        ledger.fail(job_id, f"boom {attempt}", worker_id="w")
        job = ledger.get_job(job_id)
        assert job is not None and job.status is JobStatus.PENDING
        assert (job.error_message, job.worker_id) == (f"boom {attempt}", None)
        assert job.run_at == clock.now + timedelta(seconds=wait)
        clock.advance(wait - 0.001)
        assert ledger.claim("w") is None  # not before run_at
        clock.advance(0.001)
    ledger.claim("w")
    ledger.fail(job_id, "boom 3")
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED and job.error_message == "boom 3"
    types = [e.type for e in ledger.job_events(job_id)]
    assert types.count(EventType.RETRY_SCHEDULED) == 2 and types[-1] is EventType.FAILED


def test_backoff_is_capped(open_ledger: LedgerFactory, clock: FakeClock) -> None:
    """Promise: the backoff grows by ``factor`` per attempt up to ``cap``, never beyond."""
    ledger = open_ledger(retry_policy=RetryPolicy(base=10, factor=10, cap=30, jitter=0))
    job_id = ledger.create_job(1, CONFIG, max_attempts=4)
    waits = []
    for _ in range(3):
        ledger.claim("w")
        ledger.fail(job_id, "again")
        run_at = ledger.get_job(job_id).run_at  # type: ignore[union-attr]
        waits.append((run_at - clock.now).total_seconds())
        clock.now = run_at
    assert waits == [10, 30, 30]


def test_default_backoff_is_jittered_within_its_bounds(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: the default policy waits 10 s for the first retry, shortened by up to 25%."""
    ids = [ledger.create_job(1, CONFIG, max_attempts=2) for _ in range(10)]
    for job_id in ids:
        ledger.claim("w")
        ledger.fail(job_id, "flaky")
    waits = [(ledger.get_job(i).run_at - clock.now).total_seconds() for i in ids]  # type: ignore[union-attr]
    assert all(7.5 <= wait <= 10 for wait in waits), waits


def test_fail_without_retry_or_attempts_is_final(ledger: Ledger) -> None:
    """Promise: ``fail(retry=False)`` fails the job for good, attempts left or not; so does a
    failure of the last attempt."""
    no_retry = ledger.create_job(1, CONFIG, max_attempts=5)
    last = ledger.create_job(1, CONFIG)  # max_attempts=1
    ledger.claim("w")
    ledger.claim("w")
    ledger.fail(no_retry, "fatal", retry=False)
    ledger.fail(last, "out of attempts")
    for job_id, message in ((no_retry, "fatal"), (last, "out of attempts")):
        job = ledger.get_job(job_id)
        assert job is not None and job.status is JobStatus.FAILED
        assert job.error_message == message and job.completed_at is not None


# -- cancel and release -------------------------------------------------------------------------


def test_cancel_a_pending_or_running_job(ledger: Ledger) -> None:
    """Promise: `cancel` answers True for a pending or running job, which becomes cancelled
    (final) and is never claimed again."""
    pending = ledger.create_job(1, CONFIG)
    running = ledger.create_job(1, CONFIG)
    ledger.claim("w", queues=["default"])  # the older one: `pending` is now running
    assert ledger.cancel(pending, reason="not needed") is True
    assert ledger.cancel(running) is True
    for job_id in (pending, running):
        job = ledger.get_job(job_id)
        assert job is not None and job.status is JobStatus.CANCELLED
        assert job.completed_at is not None and job.lease_expires_at is None
    assert ledger.claim("w") is None


def test_release_gives_the_job_back_without_counting_the_attempt(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Promise: `release` by the holder returns a running job to pending at once, and the
    attempt does not count."""
    job_id = ledger.create_job(1, CONFIG)  # max_attempts=1: a counted attempt would fail it
    ledger.claim("w1")
    ledger.release(job_id, worker_id="w1", reason="shutting down")
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING
    assert (job.attempts, job.worker_id, job.lease_expires_at) == (0, None, None)
    assert ledger.job_events(job_id)[-1].type is EventType.RELEASED
    again = ledger.claim("w2")
    assert again is not None and again.id == job_id and again.attempts == 1


# -- lease expiry -------------------------------------------------------------------------------


def test_an_expired_lease_is_rescued_by_the_next_claim(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: a job whose lease ran out (at exactly its expiry) is rescued by the next claim:
    back to pending with attempts left, then claimed as a new attempt."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=2)
    ledger.claim("w1", lease=10)
    clock.advance(9.999)
    assert ledger.claim("w2") is None
    clock.advance(0.001)
    job = ledger.claim("w2", lease=10)
    assert job is not None and job.id == job_id
    assert (job.worker_id, job.attempts) == ("w2", 2)
    types = [e.type for e in ledger.job_events(job_id)]
    assert types[-2:] == [EventType.LEASE_EXPIRED, EventType.CLAIMED]


def test_a_claim_that_rescues_claims_the_best_job_counting_the_rescued(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Promise: a claim looks at expired leases and at the best pending job together
    (`before_claim`), but when it rescues anything it chooses again: a rescued job that
    outranks the pending one it first saw is the one claimed, and the one first seen stays
    pending and claimable (not held back by the first look)."""
    low = ledger.create_job(1, CONFIG, priority=1)
    high = ledger.create_job(1, CONFIG, priority=9, max_attempts=2)
    assert ledger.claim("w1", lease=10).id == high  # type: ignore[union-attr]
    clock.advance(10)
    job = ledger.claim("w2", lease=10)
    assert job is not None and job.id == high and job.attempts == 2
    assert ledger.get_job(low).status == JobStatus.PENDING  # type: ignore[union-attr]
    again = ledger.claim("w3", lease=10)
    assert again is not None and again.id == low
    assert ledger.verify().ok


def test_an_expired_lease_without_attempts_left_fails_the_job(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Promise: a lease that runs out on the last attempt fails the job, with an error naming
    the worker that stopped heartbeating."""
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w1", lease=5)
    clock.advance(6)
    assert ledger.claim("w2") is None
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert "w1" in (job.error_message or "")


def test_rescue_expired_counts_what_it_rescued(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `rescue_expired` requeues or fails every running job whose lease ran out, and
    returns how many; a job whose lease holds is left alone."""
    ids = [ledger.create_job(1, CONFIG, max_attempts=2) for _ in range(3)]
    ledger.claim("a", lease=5)
    ledger.claim("b", lease=50)
    ledger.claim("c", lease=5)
    assert ledger.rescue_expired() == 0
    clock.advance(5)
    assert ledger.rescue_expired() == 2
    assert [ledger.get_job(i).status for i in ids] == [  # type: ignore[union-attr]
        JobStatus.PENDING,
        JobStatus.RUNNING,
        JobStatus.PENDING,
    ]
    assert ledger.rescue_expired() == 0


# -- final states -------------------------------------------------------------------------------

FINISH: dict[str, Callable[[Ledger, str], object]] = {
    "completed": lambda lg, j: lg.complete(j, "done"),
    "failed": lambda lg, j: lg.fail(j, "broke", retry=False),
    "cancelled": lambda lg, j: lg.cancel(j),
}


@pytest.mark.parametrize("final", sorted(FINISH))
def test_a_finished_job_refuses_every_command(ledger: Ledger, final: str) -> None:
    """Promise: completed, failed and cancelled are final: every command on such a job is
    refused with `InvalidTransition` (with `LeaseLost` when a worker names itself), `cancel`
    answers False, and nothing is written."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=3)
    ledger.claim("w")
    FINISH[final](ledger, job_id)
    assert ledger.get_job(job_id).status is JobStatus(final)  # type: ignore[union-attr]
    before = state(ledger)
    for call in (
        lambda: ledger.heartbeat(job_id),
        lambda: ledger.complete(job_id, "again"),
        lambda: ledger.fail(job_id, "again"),
        lambda: ledger.log_event(job_id, EventType.PROGRESS, {}),
    ):
        with pytest.raises(InvalidTransition) as raised:
            call()
        assert (raised.value.job_id, raised.value.status) == (job_id, final)
    for fenced in (
        lambda: ledger.heartbeat(job_id, worker_id="w"),
        lambda: ledger.complete(job_id, "again", worker_id="w"),
        lambda: ledger.release(job_id, worker_id="w"),
    ):
        with pytest.raises(LeaseLost):
            fenced()
    assert ledger.cancel(job_id) is False
    assert ledger.claim("w") is None
    assert state(ledger) == before


def test_commands_on_an_unknown_job_raise_job_not_found(ledger: Ledger) -> None:
    """Promise: a command naming a job that does not exist raises `JobNotFound` (carrying the
    id) and writes nothing; `get_job` answers None."""
    ledger.create_job(1, CONFIG)
    before = state(ledger)
    for call in (
        lambda: ledger.heartbeat("nope"),
        lambda: ledger.complete("nope", "s"),
        lambda: ledger.fail("nope", "e"),
        lambda: ledger.cancel("nope"),
        lambda: ledger.release("nope", worker_id="w"),
        lambda: ledger.log_event("nope", EventType.PROGRESS, {}),
    ):
        with pytest.raises(JobNotFound) as raised:
            call()
        assert raised.value.job_id == "nope"
    assert ledger.get_job("nope") is None
    assert state(ledger) == before


# -- fencing: LeaseLost -------------------------------------------------------------------------

FENCED: dict[str, Callable[[Ledger, str, str], object]] = {
    "heartbeat": lambda lg, j, w: lg.heartbeat(j, worker_id=w),
    "complete": lambda lg, j, w: lg.complete(j, "late", worker_id=w),
    "fail": lambda lg, j, w: lg.fail(j, "late", worker_id=w),
    "release": lambda lg, j, w: lg.release(j, worker_id=w),
    "log_event": lambda lg, j, w: lg.log_event(j, "progress", {}, worker_id=w),
    "log_events": lambda lg, j, w: lg.log_events(j, [("progress", {})], worker_id=w),
}


@pytest.mark.parametrize("command", sorted(FENCED))
def test_a_worker_that_lost_its_lease_is_refused(
    ledger: Ledger, clock: FakeClock, command: str
) -> None:
    """Promise (fencing): once a lease expired and another worker claimed the job, the first
    worker's heartbeat, complete, fail and release raise `LeaseLost` naming the holder, and
    write nothing; the new holder's work goes on."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=2)
    ledger.claim("w1", lease=10)
    clock.advance(10)
    assert ledger.claim("w2", lease=10).id == job_id  # type: ignore[union-attr]
    before = state(ledger)
    with pytest.raises(LeaseLost) as raised:
        FENCED[command](ledger, job_id, "w1")
    assert (raised.value.job_id, raised.value.worker_id, raised.value.holder) == (
        job_id,
        "w1",
        "w2",
    )
    assert state(ledger) == before
    FENCED[command](ledger, job_id, "w2")
    assert ledger.get_job(job_id).version == before[1][0].version + 1  # type: ignore[union-attr]


def test_a_cancelled_job_locks_out_its_worker(ledger: Ledger) -> None:
    """Promise (fencing): after a running job is cancelled, its worker is refused with
    `LeaseLost` (status cancelled, no holder left to name)."""
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w1")
    assert ledger.cancel(job_id)
    with pytest.raises(LeaseLost) as raised:
        ledger.complete(job_id, "done anyway", worker_id="w1")
    assert raised.value.status == "cancelled"
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED and job.result_summary is None


def test_another_worker_cannot_act_on_a_held_job(ledger: Ledger) -> None:
    """Promise (fencing): a worker that never held the job is refused with `LeaseLost`, even
    while the holder's lease is valid."""
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("holder")
    before = state(ledger)
    for command in sorted(FENCED):
        with pytest.raises(LeaseLost) as raised:
            FENCED[command](ledger, job_id, "intruder")
        assert raised.value.holder == "holder"
    assert state(ledger) == before


def test_log_events_appends_a_batch_in_order_in_one_transaction(ledger: Ledger) -> None:
    """Promise: `log_events` appends its ``(type, payload)`` pairs to one job in the order
    given, as consecutive versions, and returns the job's new version; the payloads read back
    as written."""
    job_id = ledger.create_job(1, CONFIG)
    pairs = [("progress", {"step": i, "of": 50}) for i in range(50)]
    pairs[7] = (EventType.TOOL_CALL, {"tool": "grep", "args": ["-n", "x"]})
    pairs[-1] = ("error", None)
    assert ledger.log_events(job_id, pairs) == 51
    events = ledger.job_events(job_id)[1:]
    assert [e.version for e in events] == list(range(2, 52))
    assert [(e.type, e.payload) for e in events] == [
        (EventType(kind), payload) for kind, payload in pairs
    ]
    positions = [e.position for e in events]
    assert positions == list(range(positions[0], positions[0] + 50))  # nothing in between
    ledger.claim("w")
    assert ledger.log_events(job_id, iter([("started", {}), ("progress", {"n": 1})])) == 54
    last = ledger.job_events(job_id)[-2:]
    assert [(e.worker_id, e.attempt) for e in last] == [(None, 1), (None, 1)]
    job = ledger.get_job(job_id)
    assert job is not None and job.version == 54 and job.status is JobStatus.RUNNING


def _random_text(length: int, seed: int) -> str:
    """Text of 4-byte UTF-8 characters that no compression shrinks (an index entry of a
    repeated character would fit however long)."""
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x10000, 0x10FFFF)) for _ in range(length))


def test_keys_hold_up_to_max_key_length_characters(ledger: Ledger) -> None:
    """Promise: a queue name, idempotency key, parent id or worker id of `MAX_KEY_LENGTH`
    characters (any characters: 4-byte ones here, incompressible) is stored and reads back as
    written, on every backend; one character more is refused with `InvalidArgument` naming
    the argument and saying to hash it, and nothing is written (PostgreSQL's index would refuse
    such an entry with a storage error at the write, and only when it compresses badly)."""
    queue, key, worker = (_random_text(MAX_KEY_LENGTH, seed) for seed in range(3))
    job_id = ledger.create_job(1, CONFIG, queue=queue, idempotency_key=key)
    assert ledger.create_job(1, CONFIG, queue=queue, idempotency_key=key) == job_id
    job = ledger.get_job(job_id)
    assert job is not None and (job.queue, job.idempotency_key) == (queue, key)
    claimed = ledger.claim(worker, queues=[queue])
    assert claimed is not None and claimed.id == job_id and claimed.worker_id == worker
    assert ledger.pause(queue) is True
    before = state(ledger)
    long = "k" * (MAX_KEY_LENGTH + 1)
    refusals: list[tuple[str, Callable[[], object]]] = [
        ("queue", lambda: ledger.create_job(1, CONFIG, queue=long)),
        ("idempotency_key", lambda: ledger.create_job(1, CONFIG, idempotency_key=long)),
        ("parent_id", lambda: ledger.create_job(1, CONFIG, parent_id=long)),
        (
            "specs[1].idempotency_key",
            lambda: ledger.create_jobs(
                [
                    {"chat_id": 1, "config": {}},
                    {"chat_id": 1, "config": {}, "idempotency_key": long},
                ]
            ),
        ),
        ("worker_id", lambda: ledger.claim(long)),
        ("queue", lambda: ledger.claim("w", queues=[long])),
        ("queue", lambda: ledger.pause(long)),
        ("worker_id", lambda: ledger.heartbeat(job_id, worker_id=long)),
        ("worker_id", lambda: Worker(ledger, lambda job, ctx: None, worker_id=long)),
        ("queue", lambda: Worker(ledger, lambda job, ctx: None, queues=[long])),
    ]
    for name, call in refusals:
        with pytest.raises(InvalidArgument) as raised:
            call()
        assert raised.value.name == name
        assert f"longer than {MAX_KEY_LENGTH} characters" in str(raised.value)
        assert "hash" in str(raised.value)
    assert state(ledger) == before


def test_log_events_is_all_or_nothing(ledger: Ledger) -> None:
    """Promise: a batch with one bad pair, a stale ``expected_version`` or a refused job writes
    none of its events; an empty batch writes nothing and returns the version as it is, after
    the same checks."""
    job_id = ledger.create_job(1, CONFIG)
    before = state(ledger)
    with pytest.raises(InvalidArgument) as raised:
        ledger.log_events(job_id, [("progress", {})] * 5 + [("progress", {"x": {1, 2}})])
    assert raised.value.name == "events[5].payload"
    with pytest.raises(InvalidArgument) as raised:
        ledger.log_events(job_id, [("progress", {}), ("claimed", {})])
    assert raised.value.name == "events[1].type"
    with pytest.raises(ConcurrencyError):
        ledger.log_events(job_id, [("progress", {})] * 3, expected_version=5)
    assert state(ledger) == before
    assert ledger.log_events(job_id, []) == 1
    assert ledger.log_events(job_id, [], expected_version=1) == 1
    with pytest.raises(ConcurrencyError):
        ledger.log_events(job_id, [], expected_version=4)
    assert state(ledger) == before
    assert ledger.log_events(job_id, [("progress", {})] * 3, expected_version=1) == 4
    ledger.cancel(job_id)
    after = state(ledger)
    with pytest.raises(InvalidTransition):
        ledger.log_events(job_id, [("progress", {})] * 3)
    with pytest.raises(InvalidTransition):
        ledger.log_events(job_id, [])
    with pytest.raises(JobNotFound):
        ledger.log_events("no-such-job", [("progress", {})])
    assert state(ledger) == after


def test_log_events_takes_at_most_max_log_events_pairs(ledger: Ledger) -> None:
    """Promise: a batch of exactly `MAX_LOG_EVENTS` pairs is appended; one more (a list, or a
    generator that runs past it) is refused with `InvalidArgument` saying to split it, and
    nothing is written."""
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.log_events(job_id, [("progress", {})] * MAX_LOG_EVENTS) == MAX_LOG_EVENTS + 1
    before = state(ledger)
    for too_many in (
        [("progress", {})] * (MAX_LOG_EVENTS + 1),
        (("progress", {"n": n}) for n in range(MAX_LOG_EVENTS * 3)),
    ):
        with pytest.raises(InvalidArgument) as raised:
            ledger.log_events(job_id, too_many)
        assert raised.value.name == "events"
        assert f"at most {MAX_LOG_EVENTS:,} events" in str(raised.value)
        assert "split them over several calls" in str(raised.value)
    assert state(ledger) == before


def test_log_events_records_the_fenced_worker_and_attempt(ledger: Ledger) -> None:
    """Promise: with ``worker_id`` every event of the batch records the worker and its
    attempt, like `log_event`; another attempt's worker is refused for the whole batch."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=2)
    job = ledger.claim("w1")
    assert job is not None
    ledger.log_events(job_id, [("progress", {"n": n}) for n in range(3)], worker_id="w1")
    assert [(e.worker_id, e.attempt) for e in ledger.job_events(job_id)[-3:]] == [("w1", 1)] * 3
    before = state(ledger)
    with pytest.raises(LeaseLost):
        ledger.log_events(job_id, [("progress", {})] * 2, worker_id="w1", attempt=2)
    assert state(ledger) == before


def test_activity_can_be_logged_to_pending_and_running_jobs(ledger: Ledger) -> None:
    """Promise: `log_event` appends a started, progress, tool_call or error event to a pending
    or running job and returns the job's new version."""
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.log_event(job_id, EventType.STARTED, {"a": 1}) == 2
    ledger.claim("w")
    assert ledger.log_event(job_id, "progress", {"b": 2}) == 4  # a tag works like the enum
    assert ledger.log_event(job_id, EventType.TOOL_CALL, {"tool": "ls"}) == 5
    assert ledger.log_event(job_id, EventType.ERROR) == 6  # the payload is optional
    events = ledger.job_events(job_id)
    assert [e.type for e in events][-3:] == [
        EventType.PROGRESS,
        EventType.TOOL_CALL,
        EventType.ERROR,
    ]
    assert events[-1].payload is None and events[-2].payload == {"tool": "ls"}
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.RUNNING and job.version == 6
