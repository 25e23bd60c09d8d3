"""The read half of the API: jobs from the projection, events from the log, summaries, stats."""

from __future__ import annotations

import msgspec
import pytest

from ledger import (
    EventType,
    InvalidArgument,
    Job,
    JobEvent,
    JobNotFound,
    JobStatus,
    Ledger,
    LedgerError,
)
from tests.conftest import FakeClock
from tests.contract.conftest import LedgerFactory
from tests.contract.support import CONFIG, busy_ledger

# -- jobs ---------------------------------------------------------------------------------------


def test_get_job_returns_the_job_or_none(ledger: Ledger) -> None:
    """Promise: `get_job` returns the job with that exact id, or None; an id is only text, never
    SQL."""
    job_id = ledger.create_job(3, CONFIG)
    job = ledger.get_job(job_id)
    assert job is not None and (job.id, job.chat_id, job.config) == (job_id, 3, CONFIG)
    assert ledger.get_job(job_id[:8]) is None
    assert ledger.get_job("'; DROP TABLE jobs; --") is None
    assert ledger.get_job(job_id) == job


def test_find_job_takes_a_unique_prefix(ledger: Ledger) -> None:
    """Promise: `find_job` accepts the id or a unique prefix of it; an unknown prefix raises
    `JobNotFound`, an ambiguous one `InvalidArgument`."""
    ids = ledger.create_jobs([{"chat_id": 1, "config": {}} for _ in range(17)])
    for job_id in ids[:3]:
        assert ledger.find_job(job_id).id == job_id
    by_first: dict[str, list[str]] = {}
    for job_id in ids:
        by_first.setdefault(job_id[0], []).append(job_id)
    shared = next(p for p, same in by_first.items() if len(same) > 1)  # 17 ids, 16 hex digits
    with pytest.raises(InvalidArgument):
        ledger.find_job(shared)
    unique = next(i for i in ids if all(o == i or not o.startswith(i[:12]) for o in ids))
    assert ledger.find_job(unique[:12]).id == unique
    with pytest.raises(JobNotFound):
        ledger.find_job("zzzz")


def test_jobs_filters_by_status_chat_and_queue_newest_first(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Promise: `jobs` lists newest first, narrowed by any of status, chat_id and queue, and at
    most ``limit``; `count_jobs` counts by status and queue."""
    made = []
    for n in range(6):
        made.append(ledger.create_job(n % 2, {"n": n}, queue="mail" if n < 3 else "default"))
        clock.advance(1)
    ledger.claim("w", queues=["mail"])  # made[0]
    assert [j.id for j in ledger.jobs()] == made[::-1]
    assert [j.id for j in ledger.jobs(limit=2)] == [made[5], made[4]]
    assert [j.id for j in ledger.jobs(chat_id=1)] == [made[5], made[3], made[1]]
    assert [j.id for j in ledger.jobs(queue="mail")] == [made[2], made[1], made[0]]
    assert [j.id for j in ledger.jobs(status="running")] == [made[0]]
    assert [j.id for j in ledger.jobs(status="pending", chat_id=0, queue="mail")] == [made[2]]
    assert ledger.jobs(status="cancelled") == [] and ledger.jobs(limit=0) == []
    assert ledger.count_jobs() == 6
    assert ledger.count_jobs(status="pending") == 5
    assert ledger.count_jobs(status="pending", queue="mail") == 2
    assert ledger.count_jobs(queue="nowhere") == 0
    with pytest.raises(InvalidArgument):
        ledger.jobs(status="sleeping")


def test_pending_running_and_chat_lists(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `pending_jobs` oldest first, `running_jobs` longest-running first,
    `jobs_for_chat` newest first; each at most ``limit``."""
    a = ledger.create_job(1, {"role": "a"})
    clock.advance(1)
    b = ledger.create_job(2, {"role": "b"})
    clock.advance(1)
    c = ledger.create_job(1, {"role": "c"})
    assert [j.id for j in ledger.pending_jobs()] == [a, b, c]
    assert [j.id for j in ledger.pending_jobs(2)] == [a, b]
    assert [j.id for j in ledger.jobs_for_chat(1)] == [c, a]
    assert [j.id for j in ledger.jobs_for_chat(1, 1)] == [c]
    ledger.claim("w1")
    clock.advance(1)
    ledger.claim("w2")
    assert [j.id for j in ledger.running_jobs()] == [a, b]
    assert [j.id for j in ledger.pending_jobs(10)] == [c]


# -- events -------------------------------------------------------------------------------------


def test_job_events_in_version_order_filtered_by_type(ledger: Ledger) -> None:
    """Promise: `job_events` gives a job's events in version order, only the ``types`` asked
    for when given; activity payloads read back as logged."""
    job_id = ledger.create_job(1, CONFIG)
    ledger.log_event(job_id, EventType.STARTED, {"role": "coder"})
    ledger.claim("w")
    ledger.log_event(job_id, EventType.PROGRESS, {"message": "working..."})
    ledger.heartbeat(job_id)
    every = ledger.job_events(job_id)
    assert [e.type for e in every] == [
        EventType.CREATED,
        EventType.STARTED,
        EventType.CLAIMED,
        EventType.PROGRESS,
        EventType.HEARTBEAT,
    ]
    assert all(e.job_id == job_id for e in every)
    activity = ledger.job_events(job_id, types=[EventType.STARTED, "progress"])
    assert [(e.type, e.payload) for e in activity] == [
        (EventType.STARTED, {"role": "coder"}),
        (EventType.PROGRESS, {"message": "working..."}),
    ]
    assert ledger.job_events("no such job") == []
    with pytest.raises(InvalidArgument):
        ledger.job_events(job_id, types=["bogus"])


def test_event_times_are_the_clock_at_each_command(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: an event's ``created_at`` is the clock's time when its command ran, in UTC."""
    job_id = ledger.create_job(1, CONFIG)
    created = clock.now
    clock.advance(90)
    ledger.log_event(job_id, EventType.PROGRESS, {})
    times = [e.created_at for e in ledger.job_events(job_id)]
    assert times == [created, clock.now]
    assert all(t.utcoffset() is not None and t.utcoffset().total_seconds() == 0 for t in times)  # type: ignore[union-attr]


def test_recent_events_for_chat_newest_first_without_heartbeats(ledger: Ledger) -> None:
    """Promise: `recent_events_for_chat` gives a chat's latest events, newest first, at most
    ``limit``, leaving heartbeats out unless ``types`` asks for them."""
    mine = ledger.create_job(1, CONFIG)
    other = ledger.create_job(2, CONFIG)
    ledger.claim("w")
    ledger.log_event(mine, EventType.PROGRESS, {"n": 1})
    ledger.heartbeat(mine)
    ledger.log_event(other, EventType.PROGRESS, {"n": 2})
    ledger.log_event(mine, EventType.TOOL_CALL, {"tool": "grep"})
    recent = ledger.recent_events_for_chat(1, 10)
    assert [e.type for e in recent] == [
        EventType.TOOL_CALL,
        EventType.PROGRESS,
        EventType.CLAIMED,
        EventType.CREATED,
    ]
    assert all(e.job_id == mine for e in recent)
    assert [e.type for e in ledger.recent_events_for_chat(1, 2)] == recent_types(recent[:2])
    beats = ledger.recent_events_for_chat(1, 10, types=[EventType.HEARTBEAT])
    assert [e.type for e in beats] == [EventType.HEARTBEAT]


def recent_types(events: list[JobEvent]) -> list[EventType]:
    return [e.type for e in events]


def test_read_all_pages_in_position_order(ledger: Ledger) -> None:
    """Promise: `read_all(after, limit)` gives the events after a position in position order,
    at most ``limit``; past the end it is empty."""
    for chat in range(3):
        ledger.create_job(chat, CONFIG)
    ledger.claim("w")
    assert [e.position for e in ledger.read_all()] == [1, 2, 3, 4]
    assert [e.position for e in ledger.read_all(after=2)] == [3, 4]
    assert [e.position for e in ledger.read_all(after=1, limit=2)] == [2, 3]
    assert ledger.read_all(after=4) == [] and ledger.read_all(limit=0) == []
    assert ledger.read_all()[-1].type is EventType.CLAIMED


def test_jobs_and_events_encode_to_json_and_back(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: a `Job` and an activity `JobEvent` encode with ``msgspec.json`` and decode to
    equal values. (A lifecycle event's payload is a plain dict whose times encode as text.)"""
    ids = busy_ledger(ledger, clock)
    for job_id in ids:
        job = ledger.get_job(job_id)
        assert msgspec.json.decode(msgspec.json.encode(job), type=Job) == job
    activity = {EventType.STARTED, EventType.PROGRESS, EventType.TOOL_CALL, EventType.ERROR}
    events = ledger.job_events(ids[0], types=sorted(activity))
    assert {e.type for e in events} == activity - {EventType.ERROR}
    for event in events:
        assert msgspec.json.decode(msgspec.json.encode(event), type=JobEvent) == event
    assert b'"type":"tool_call"' in msgspec.json.encode(events[-1])


# -- summary and stats --------------------------------------------------------------------------


def test_active_jobs_summary_is_the_originals_text(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `active_jobs_summary` prints what the original's getActiveJobsSummary printed:
    the chat's running jobs (role, seconds running, task cut to 50), then its three latest
    finished ones, newest first (role, result status, summary cut to 60); a config without a
    role says ``unknown``; other chats are not shown. (How a failed job reads is not fixed
    here: it may name its error.)"""
    assert ledger.active_jobs_summary(1) == "No active or recent subagents."
    running = ledger.create_job(1, {"role": "coder", "task": "t" * 80})
    done = ledger.create_job(1, {"role": "reviewer", "task": "review"})
    no_role = ledger.create_job(1, ["not", "an", "object"])
    ledger.create_job(2, {"role": "elsewhere"})
    for worker in ("w1", "w2", "w3"):
        ledger.claim(worker)
    ledger.complete(done, "s" * 100, "success", 3.0, 9)
    clock.advance(1)
    ledger.complete(no_role, "", "partial")
    clock.advance(41.5)
    assert ledger.active_jobs_summary(1) == (
        "## Running Subagents\n"
        f'- {running[:8]} (coder): running 42s - "{"t" * 50}"\n'
        "\n"
        "## Recent Subagents\n"
        f"- {no_role[:8]} (unknown): partial - \n"
        f"- {done[:8]} (reviewer): success - {'s' * 60}\n"
    )


def test_active_jobs_summary_shows_the_three_newest_finished(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Promise: with nothing running, the summary is only the three most recently finished
    jobs, newest first."""
    ids = []
    for n in range(5):
        job_id = ledger.create_job(1, {"role": f"r{n}"})
        ledger.claim("w")
        clock.advance(1)
        ledger.complete(job_id, f"summary {n}", "success", 0.0, 1)
        ids.append(job_id)
    lines = ledger.active_jobs_summary(1).splitlines()
    assert lines[:2] == ["", "## Recent Subagents"]
    assert lines[2:] == [f"- {ids[n][:8]} (r{n}): success - summary {n}" for n in (4, 3, 2)]


def test_stats_counts_throughput_durations_cost(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `stats` gives counts by status and queue, the jobs finished in the last hour by
    status, duration percentiles of completed jobs, the total cost, and the oldest pending job."""
    empty = ledger.stats()
    assert (empty.counts, empty.total_cost_cents, empty.oldest_pending) == ({}, 0.0, None)
    assert empty.duration_p50 is None and empty.finished_last_hour == {}
    old = ledger.create_job(1, CONFIG, queue="mail")
    clock.advance(1)
    ids = [ledger.create_job(1, CONFIG) for _ in range(4)]
    for n, job_id in enumerate(ids[:3]):
        ledger.claim("w", queues=["default"])
        ledger.complete(job_id, "ok", "success", 1.25, 10 * (n + 1))
    clock.advance(2 * 3600)  # the three completions are now more than an hour old
    ledger.claim("w", queues=["default"])
    ledger.fail(ids[3], "broke")
    stats = ledger.stats()
    assert stats.counts == {
        "completed": {"default": 3},
        "failed": {"default": 1},
        "pending": {"mail": 1},
    }
    assert stats.finished_last_hour == {"failed": 1}
    assert (stats.duration_p50, stats.duration_p95) == (20.0, 30.0)
    assert stats.total_cost_cents == 3.75
    assert stats.oldest_pending is not None and stats.oldest_pending.id == old
    assert ledger.get_job(old).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_a_ledger_is_a_context_manager_on_the_callers_clock(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Promise: `Ledger` is a context manager that closes on exit, and `now` is the clock it was
    given (aware UTC), the same time its commands record."""
    with open_ledger() as inside:
        assert inside.now() == clock.now
        job_id = inside.create_job(1, CONFIG)
        assert inside.get_job(job_id).created_at == inside.now()  # type: ignore[union-attr]
    open_ledger.close(inside)  # closed already; the factory must not verify it at teardown
    with pytest.raises(LedgerError):
        inside.get_job(job_id)
