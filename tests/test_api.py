"""Each public call of the core API, on a real file."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from ledger import (
    EventType,
    InvalidTransition,
    Job,
    JobEvent,
    JobNotFound,
    JobStatus,
    Ledger,
)
from tests.conftest import FakeClock, event_count

CONFIG = {"role": "coder", "task": "write tests"}


def test_memory_ledger_works() -> None:
    with Ledger(":memory:") as ledger:
        job_id = ledger.create_job(1, CONFIG)
        assert ledger.claim("w").id == job_id  # type: ignore[union-attr]
        assert ledger.verify().ok


def test_ids_are_unique_and_times_are_utc(ledger: Ledger, clock: FakeClock) -> None:
    ids = {ledger.create_job(1, CONFIG) for _ in range(50)}
    assert len(ids) == 50
    job = ledger.get_job(next(iter(ids)))
    assert job is not None
    assert job.created_at == clock.now and job.created_at.tzinfo is not None
    assert job.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_claim_takes_oldest_by_creation_time_then_position(
    ledger: Ledger, clock: FakeClock
) -> None:
    later = ledger.create_job(1, CONFIG)
    clock.advance(-60)  # an older creation time written after: creation time wins over position
    older = ledger.create_job(1, CONFIG)
    tie_second = ledger.create_job(1, CONFIG)
    clock.advance(120)  # every job's run_at (its creation time) has passed
    assert [ledger.claim("w").id for _ in range(3)] == [older, tie_second, later]  # type: ignore[union-attr]
    assert ledger.claim("w") is None


def test_claim_returns_the_job_it_claimed_not_another(ledger: Ledger) -> None:
    # The original read back "the newest running job of this worker", which could be another.
    first = ledger.create_job(1, CONFIG)
    second = ledger.create_job(1, CONFIG)
    assert ledger.claim("same-worker").id == first  # type: ignore[union-attr]
    assert ledger.claim("same-worker").id == second  # type: ignore[union-attr]


def test_complete_records_the_result(ledger: Ledger, clock: FakeClock) -> None:
    job_id = ledger.create_job(7, CONFIG, thread_id=3, user_id="u1")
    ledger.claim("w")
    clock.advance(5)
    ledger.complete(job_id, "all good", "success", 12.5, 5)
    job = ledger.get_job(job_id)
    assert job is not None
    assert (job.status, job.result_summary, job.result_status) == (
        JobStatus.COMPLETED,
        "all good",
        "success",
    )
    assert (job.cost_cents, job.duration_seconds, job.completed_at) == (12.5, 5, clock.now)
    assert (job.thread_id, job.user_id, job.worker_id) == (3, "u1", "w")
    assert ledger.job_events(job_id)[-1].type is EventType.COMPLETED


def test_fail_records_the_error(ledger: Ledger) -> None:
    job_id = ledger.create_job(7, CONFIG)
    ledger.claim("w")
    ledger.fail(job_id, "boom")
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED and job.error_message == "boom"


def test_cancel_answers_like_the_original(ledger: Ledger) -> None:
    pending = ledger.create_job(1, CONFIG)
    running = ledger.create_job(1, CONFIG)
    ledger.claim("w")  # takes `pending`, the older one
    assert ledger.cancel(running) is True
    assert ledger.cancel(pending) is True
    before = event_count(ledger.path)
    assert ledger.cancel(pending) is False  # already final: False, nothing written
    assert event_count(ledger.path) == before
    assert ledger.get_job(pending).status is JobStatus.CANCELLED  # type: ignore[union-attr]


def test_commands_on_unknown_jobs_raise_job_not_found(ledger: Ledger) -> None:
    for call in (
        lambda: ledger.heartbeat("nope"),
        lambda: ledger.complete("nope", "s", "ok", 0.0, 1),
        lambda: ledger.fail("nope", "e"),
        lambda: ledger.cancel("nope"),
        lambda: ledger.log_event("nope", "progress", {}),
    ):
        with pytest.raises(JobNotFound):
            call()
    assert ledger.get_job("nope") is None
    assert event_count(ledger.path) == 0


@pytest.mark.parametrize("finish", ["complete", "fail", "cancel"])
def test_finished_jobs_refuse_further_commands(ledger: Ledger, finish: str) -> None:
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w")
    {
        "complete": lambda: ledger.complete(job_id, "s", "ok", 1.0, 1),
        "fail": lambda: ledger.fail(job_id, "e"),
        "cancel": lambda: ledger.cancel(job_id),
    }[finish]()
    before = event_count(ledger.path)
    for call in (
        lambda: ledger.heartbeat(job_id),
        lambda: ledger.complete(job_id, "s", "ok", 1.0, 1),
        lambda: ledger.fail(job_id, "e"),
        lambda: ledger.log_event(job_id, "progress", {}),
    ):
        with pytest.raises(InvalidTransition) as raised:
            call()
        assert raised.value.job_id == job_id
    assert event_count(ledger.path) == before


def test_complete_needs_a_running_job(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG)
    with pytest.raises(InvalidTransition, match="pending"):
        ledger.complete(job_id, "s", "ok", 0.0, 1)


def test_heartbeat_moves_updated_at_and_version(ledger: Ledger, clock: FakeClock) -> None:
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w")
    clock.advance(30)
    ledger.heartbeat(job_id)
    job = ledger.get_job(job_id)
    assert job is not None and job.updated_at == clock.now and job.version == 3


def test_queries_order_and_filter(ledger: Ledger, clock: FakeClock) -> None:
    a = ledger.create_job(1, {"role": "a"})
    clock.advance(1)
    b = ledger.create_job(2, {"role": "b"})
    clock.advance(1)
    c = ledger.create_job(1, {"role": "c"})
    assert [j.id for j in ledger.pending_jobs(10)] == [a, b, c]
    assert [j.id for j in ledger.pending_jobs(2)] == [a, b]
    assert [j.id for j in ledger.jobs_for_chat(1, 10)] == [c, a]
    ledger.claim("w1")
    clock.advance(1)
    ledger.claim("w2")
    assert [j.id for j in ledger.running_jobs()] == [a, b]
    assert [j.id for j in ledger.pending_jobs(10)] == [c]


def test_recent_events_for_chat_newest_first_without_heartbeats(ledger: Ledger) -> None:
    mine = ledger.create_job(1, CONFIG)
    other = ledger.create_job(2, CONFIG)
    ledger.claim("w")
    ledger.log_event(mine, "progress", {"n": 1})
    ledger.heartbeat(mine)
    ledger.log_event(other, "progress", {"n": 2})
    ledger.log_event(mine, "tool_call", {"tool": "grep"})
    recent = ledger.recent_events_for_chat(1, 10)
    assert [e.type for e in recent] == [
        EventType.TOOL_CALL,
        EventType.PROGRESS,
        EventType.CLAIMED,
        EventType.CREATED,
    ]
    assert all(e.job_id == mine for e in recent)
    assert len(ledger.recent_events_for_chat(1, 2)) == 2
    beats = ledger.recent_events_for_chat(1, 10, types=[EventType.HEARTBEAT])
    assert [e.type for e in beats] == [EventType.HEARTBEAT]


def test_read_all_in_position_order_with_after_and_limit(ledger: Ledger) -> None:
    for chat in range(3):
        ledger.create_job(chat, CONFIG)
    ledger.claim("w")
    everything = ledger.read_all()
    assert [e.position for e in everything] == [1, 2, 3, 4]
    assert [e.position for e in ledger.read_all(after=2)] == [3, 4]
    assert [e.position for e in ledger.read_all(after=1, limit=2)] == [2, 3]
    assert ledger.read_all(after=4) == []


def test_job_and_event_encode_to_json(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG)
    ledger.log_event(job_id, "tool_call", {"tool": "ls"})
    job = ledger.get_job(job_id)
    decoded = msgspec.json.decode(msgspec.json.encode(job), type=Job)
    assert decoded == job
    event = ledger.job_events(job_id)[-1]
    assert msgspec.json.decode(msgspec.json.encode(event), type=JobEvent) == event
    assert b'"type":"tool_call"' in msgspec.json.encode(event)


def test_datetimes_are_timezone_aware_utc(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w")
    job = ledger.get_job(job_id)
    assert job is not None
    for moment in (
        job.created_at,
        job.updated_at,
        job.started_at,
        job.lease_expires_at,
        job.run_at,
    ):
        assert isinstance(moment, datetime) and moment.tzinfo is not None
        assert moment.astimezone(UTC) == moment


def test_expected_version_guards_appends(ledger: Ledger) -> None:
    from ledger import ConcurrencyError

    job_id = ledger.create_job(1, CONFIG)
    assert ledger.log_event(job_id, "progress", {"n": 1}, expected_version=1) == 2
    before = event_count(ledger.path)
    with pytest.raises(ConcurrencyError) as raised:
        ledger.log_event(job_id, "progress", {"n": 2}, expected_version=1)
    assert (raised.value.expected, raised.value.actual) == (1, 2)
    assert event_count(ledger.path) == before
