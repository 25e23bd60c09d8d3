"""The laws of DESIGN.md, each stated once, through the public API, on every configuration.

Left to the backend-specific tests: the database refusing UPDATE/DELETE on its own (law 1,
``tests/test_laws.py``), readable forever (law 7, the fixture file of ``tests/test_upgrade.py``),
survival of ``kill -9`` and power loss (law 8, ``tests/test_crash.py``), and owners across
processes (law 5, ``tests/test_processes.py``).
"""

from __future__ import annotations

import threading

import pytest

from ledger import (
    ConcurrencyError,
    EventType,
    InvalidArgument,
    InvalidTransition,
    JobStatus,
    Ledger,
    LedgerError,
)
from tests.conftest import FakeClock
from tests.contract.conftest import LedgerFactory
from tests.contract.support import CONFIG, all_jobs, busy_ledger, state

WAIT = 30.0  # an upper bound on joining threads; they finish long before it

# -- law 1: append-only -------------------------------------------------------------------------


def test_no_public_call_changes_or_removes_an_event(ledger: Ledger, clock: FakeClock) -> None:
    """Law 1, append-only: every command only adds events; each earlier event reads back as it
    was, at the same position, whatever happens to its job afterwards."""
    ids = busy_ledger(ledger, clock)
    seen = ledger.read_all()
    clock.advance(60)
    job = ledger.claim("late")
    assert job is not None
    ledger.complete(job.id, "late", worker_id="late")
    ledger.cancel(ids[7])
    ledger.replay()
    now = ledger.read_all()
    assert now[: len(seen)] == seen
    assert len(now) > len(seen)


# -- law 2: one transaction ---------------------------------------------------------------------


def test_a_batch_with_one_bad_spec_creates_nothing(ledger: Ledger) -> None:
    """Law 2, one transaction: `create_jobs` is all or nothing; a bad spec anywhere in the batch
    (here the last) leaves the log and the jobs exactly as they were."""
    ledger.create_job(1, CONFIG)
    before = state(ledger)
    specs = [{"chat_id": n, "config": {"n": n}} for n in range(4)]
    with pytest.raises(InvalidArgument):
        ledger.create_jobs([*specs, {"chat_id": 9, "config": {"x": float("nan")}}])
    with pytest.raises(InvalidArgument):
        ledger.create_jobs([*specs, {"chat_id": 9, "config": {}, "colour": "red"}])
    assert state(ledger) == before
    assert len(ledger.create_jobs(specs)) == 4  # the same batch, without the bad spec, works


def test_a_refused_command_writes_nothing(ledger: Ledger) -> None:
    """Law 2, one transaction: a command refused by the state machine (an illegal transition)
    writes no event and changes no job."""
    job_id = ledger.create_job(1, CONFIG)
    before = state(ledger)
    with pytest.raises(InvalidTransition):
        ledger.complete(job_id, "too early")
    with pytest.raises(InvalidTransition):
        ledger.heartbeat(job_id)
    assert state(ledger) == before


def test_a_claim_that_rescues_and_claims_commits_both(ledger: Ledger, clock: FakeClock) -> None:
    """Law 2, one transaction: one command may append several events (a claim rescues an expired
    lease, then claims); they are all there, in order, with consecutive positions."""
    job_id = ledger.create_job(1, CONFIG, max_attempts=2)
    ledger.claim("w1", lease=10)
    clock.advance(10)
    before = ledger.last_position()
    assert ledger.claim("w2").id == job_id  # type: ignore[union-attr]
    added = ledger.read_all(after=before)
    assert [e.type for e in added] == [EventType.LEASE_EXPIRED, EventType.CLAIMED]
    assert [e.position for e in added] == [before + 1, before + 2]


# -- law 3: projection = fold(events) -----------------------------------------------------------


def test_verify_is_green_after_every_kind_of_event(ledger: Ledger, clock: FakeClock) -> None:
    """Law 3, projection = fold(events): `verify` folds the whole log and finds the live jobs
    equal to it, on a log holding every event type."""
    ids = busy_ledger(ledger, clock)
    assert {e.type for e in ledger.read_all()} == set(EventType)
    report = ledger.verify()
    assert report.ok and report.differences == []
    assert report.events == ledger.last_position() and report.jobs == len(ids)


def test_replay_rebuilds_the_same_jobs(ledger: Ledger, clock: FakeClock) -> None:
    """Law 3, projection = fold(events): replay folds the log through the same apply code as the
    live commands, so the rebuilt jobs equal the live ones field for field."""
    busy_ledger(ledger, clock)
    live = all_jobs(ledger)
    report = ledger.replay()
    assert all_jobs(ledger) == live
    assert (report.events, report.jobs, report.position) == (
        ledger.last_position(),
        len(live),
        ledger.last_position(),
    )


def test_a_write_from_inside_a_replays_progress_is_refused_and_the_replay_goes_on(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Law 2, all or nothing: a replay's progress callback runs inside the replay's transaction,
    so a write it starts (a ledger method called from there) is refused in words and writes
    nothing, where it would run into the middle of that transaction; the replay completes."""
    ids = busy_ledger(ledger, clock)
    head = ledger.last_position()
    refused: list[LedgerError] = []

    def progress(*_: object) -> None:
        if not refused:
            try:
                ledger.log_event(ids[0], "progress", {"from": "a replay's progress"})
            except LedgerError as e:
                refused.append(e)

    report = ledger.replay(progress=progress)
    assert len(refused) == 1 and "inside another write's command" in str(refused[0])
    assert "nothing of it was written" in str(refused[0])
    assert report.events == head and ledger.last_position() == head
    assert ledger.verify().ok


def test_a_job_reads_back_as_the_fold_of_its_own_events(ledger: Ledger, clock: FakeClock) -> None:
    """Law 3, projection = fold(events): a job's version is its newest event's version, and its
    status follows its newest lifecycle event."""
    ids = busy_ledger(ledger, clock)
    final_status = {
        EventType.COMPLETED: JobStatus.COMPLETED,
        EventType.FAILED: JobStatus.FAILED,
        EventType.CANCELLED: JobStatus.CANCELLED,
        EventType.RETRY_SCHEDULED: JobStatus.PENDING,
        EventType.RELEASED: JobStatus.PENDING,
    }
    for job_id in ids[:4] + ids[6:7]:
        events = ledger.job_events(job_id)
        job = ledger.get_job(job_id)
        assert job is not None and job.version == events[-1].version
        lifecycle = [e.type for e in events if e.type in final_status]
        assert job.status is final_status[lifecycle[-1]]


# -- law 4: per-job order -----------------------------------------------------------------------


def test_versions_are_gap_free_per_job(ledger: Ledger, clock: FakeClock) -> None:
    """Law 4, per-job order: each job's events carry versions 1, 2, 3, ... without gaps, however
    the jobs' commands interleave."""
    ids = busy_ledger(ledger, clock)
    for job_id in ids:
        versions = [e.version for e in ledger.job_events(job_id)]
        assert versions == list(range(1, len(versions) + 1))
    by_job: dict[str, list[int]] = {}
    for event in ledger.read_all():
        by_job.setdefault(event.job_id, []).append(event.version)
    assert all(v == list(range(1, len(v) + 1)) for v in by_job.values())


def test_a_stale_expected_version_is_refused(ledger: Ledger) -> None:
    """Law 4, per-job order: an append with a stale ``expected_version`` fails with
    `ConcurrencyError` (carrying both versions) and writes nothing; the current one succeeds."""
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.log_event(job_id, EventType.PROGRESS, {"n": 1}, expected_version=1) == 2
    before = state(ledger)
    with pytest.raises(ConcurrencyError) as raised:
        ledger.log_event(job_id, EventType.PROGRESS, {"n": 2}, expected_version=1)
    assert (raised.value.job_id, raised.value.expected, raised.value.actual) == (job_id, 1, 2)
    assert state(ledger) == before
    assert ledger.log_event(job_id, EventType.PROGRESS, {"n": 2}, expected_version=2) == 3


def test_positions_only_grow(ledger: Ledger, clock: FakeClock) -> None:
    """Law 4, per-job order: every event has a global position, strictly increasing in log order,
    and `last_position` is the newest."""
    assert ledger.last_position() == 0
    busy_ledger(ledger, clock)
    positions = [e.position for e in ledger.read_all()]
    assert positions == sorted(set(positions))
    assert positions[0] >= 1 and ledger.last_position() == positions[-1]
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.job_events(job_id)[0].position > positions[-1]


# -- law 5: at most one owner -------------------------------------------------------------------


def test_a_job_is_claimed_once(ledger: Ledger) -> None:
    """Law 5, at most one owner: a claimed job is not claimable again while its lease holds; the
    next claim gets another job, or None."""
    first = ledger.create_job(1, CONFIG)
    second = ledger.create_job(1, CONFIG)
    assert ledger.claim("a").id == first  # type: ignore[union-attr]
    assert ledger.claim("b").id == second  # type: ignore[union-attr]
    assert ledger.claim("c") is None
    assert [j.worker_id for j in ledger.running_jobs()] == ["a", "b"]


def test_threads_claiming_at_once_never_share_a_job(ledger: Ledger) -> None:
    """Law 5, at most one owner: threads sharing one `Ledger` and claiming at the same moment
    each get different jobs, and each job is completed exactly once, by its holder."""
    ledger.create_jobs([{"chat_id": 1, "config": {"n": n}} for n in range(60)])
    claimed: dict[str, list[str]] = {}
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def drain(name: str) -> None:
        try:
            start.wait(WAIT)
            mine = claimed.setdefault(name, [])
            while (job := ledger.claim(name)) is not None:
                mine.append(job.id)
                ledger.complete(job.id, "ok", worker_id=name)  # LeaseLost if another held it
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=drain, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    every = [job_id for ids in claimed.values() for job_id in ids]
    assert len(every) == len(set(every)) == 60
    assert ledger.count_jobs(status="completed") == 60
    for name, ids in claimed.items():
        assert all(ledger.get_job(i).worker_id == name for i in ids)  # type: ignore[union-attr]


@pytest.mark.capability("shared_between_handles")
def test_two_handles_on_one_ledger_never_share_a_job(open_ledger: LedgerFactory) -> None:
    """Law 5, at most one owner: two handles on the same ledger (as two processes hold) see one
    queue; a job claimed through one is not claimable through the other."""
    first = open_ledger()
    other = open_ledger.second_handle(first)
    ids = first.create_jobs([{"chat_id": 1, "config": {}} for _ in range(3)])
    got = [first.claim("a"), other.claim("b"), first.claim("c"), other.claim("d")]
    assert [j.id for j in got if j is not None] == ids and got[3] is None
    assert other.get_job(ids[0]).worker_id == "a"  # type: ignore[union-attr]


# -- law 6: deterministic replay ----------------------------------------------------------------


def test_replay_twice_gives_the_same_jobs_and_events(ledger: Ledger, clock: FakeClock) -> None:
    """Law 6, deterministic replay: replaying the same log twice gives identical jobs and leaves
    the log itself untouched."""
    busy_ledger(ledger, clock)
    before = state(ledger)
    ledger.replay()
    once = state(ledger)
    ledger.replay()
    assert state(ledger) == once == before


def test_replay_ignores_the_clock(ledger: Ledger, clock: FakeClock) -> None:
    """Law 6, deterministic replay: applying an event uses its own timestamp, never the clock; a
    replay a week later (past every lease and run_at) rebuilds exactly the same jobs."""
    busy_ledger(ledger, clock)
    live = all_jobs(ledger)
    clock.advance(7 * 24 * 3600)
    ledger.replay()
    assert all_jobs(ledger) == live


def test_replay_keeps_the_backoff_that_was_chosen(ledger: Ledger, clock: FakeClock) -> None:
    """Law 6, deterministic replay: a retry's random backoff is chosen once and written into
    the event; replay does not roll it again."""
    ids = [ledger.create_job(1, CONFIG, max_attempts=3) for _ in range(5)]
    for job_id in ids:
        ledger.claim("w")
        ledger.fail(job_id, "flaky", worker_id="w")
    chosen = [ledger.get_job(i).run_at for i in ids]  # type: ignore[union-attr]
    ledger.replay()
    assert [ledger.get_job(i).run_at for i in ids] == chosen  # type: ignore[union-attr]


# -- law 8: nothing acknowledged is lost --------------------------------------------------------


@pytest.mark.capability("shared_between_handles")
def test_everything_acknowledged_is_there_after_reopening(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Law 8, nothing acknowledged is lost: once calls return, closing and opening the ledger
    again gives back every event and every job as they were."""
    first = open_ledger()
    busy_ledger(first, clock)
    before = state(first)
    reopened = open_ledger.reopen(first)
    assert state(reopened) == before
    assert reopened.verify().ok


@pytest.mark.capability("shared_between_handles")
def test_a_write_through_one_handle_is_seen_by_another(open_ledger: LedgerFactory) -> None:
    """Law 8, nothing acknowledged is lost: a command that returned is visible at once to every
    other handle on the ledger."""
    first = open_ledger()
    other = open_ledger.second_handle(first)
    job_id = first.create_job(5, CONFIG)
    seen = other.get_job(job_id)
    assert seen is not None and seen.chat_id == 5 and seen.config == CONFIG
    assert other.read_all() == first.read_all()


# -- law 9: the record is true ------------------------------------------------------------------

JSON_VALUES = [
    {"role": "coder", "nested": {"list": [1, 2.5, True, None, "x"], "empty": {}}, "n": -7},
    ["a", ["b", ["c"]], {}],
    "just text, ünïcödé, emoji \U0001f600, a tab\t, quotes \"' and \\ backslash",
    2**63 - 1,
    -(2**63),
    1.0000000000000002,
    1e300,
    -0.5,
    0,
    True,
    None,
    [],
]


@pytest.mark.parametrize("value", JSON_VALUES, ids=range(len(JSON_VALUES)))
def test_values_read_back_as_written(ledger: Ledger, value: object) -> None:
    """Law 9, the record is true: a config and a payload of JSON-native values read back equal
    to what was written, type for type (an int stays an int, a float a float)."""
    job_id = ledger.create_job(1, value)
    ledger.log_event(job_id, EventType.PROGRESS, value)
    job = ledger.get_job(job_id)
    assert job is not None
    payload = ledger.job_events(job_id, types=[EventType.PROGRESS])[0].payload
    for read in (job.config, payload):
        assert read == value and type(read) is type(value)
    assert ledger.claim("w").config == value  # type: ignore[union-attr]


def test_job_fields_read_back_as_written(ledger: Ledger, clock: FakeClock) -> None:
    """Law 9, the record is true: every field a command takes is read back unchanged."""
    run_at = clock.now
    job_id = ledger.create_job(
        -12,
        CONFIG,
        thread_id=2**62,
        user_id="user ü",
        queue="q-1",
        priority=-3,
        run_at=run_at,
        max_attempts=4,
        idempotency_key="key ☃",
    )
    ledger.claim("worker ☃", lease=45)
    ledger.complete(job_id, "sum\nmary", "partial", 0.1 + 0.2, 17, worker_id="worker ☃")
    job = ledger.get_job(job_id)
    assert job is not None
    assert (job.chat_id, job.thread_id, job.user_id, job.queue) == (-12, 2**62, "user ü", "q-1")
    assert (job.priority, job.run_at, job.max_attempts) == (-3, run_at, 4)
    assert (job.idempotency_key, job.worker_id) == ("key ☃", "worker ☃")
    assert (job.result_summary, job.result_status) == ("sum\nmary", "partial")
    assert (job.cost_cents, job.duration_seconds) == (0.1 + 0.2, 17)


BAD_VALUES = {
    "NaN": {"x": float("nan")},
    "infinity": [float("inf")],
    "an object": {"x": object()},
}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_values_json_cannot_hold_are_refused(ledger: Ledger, name: str) -> None:
    """Law 9, the record is true: a value that would not read back as written is refused with
    `InvalidArgument` naming the argument, before anything is stored."""
    job_id = ledger.create_job(1, CONFIG)
    before = state(ledger)
    with pytest.raises(InvalidArgument) as config_error:
        ledger.create_job(1, BAD_VALUES[name])
    with pytest.raises(InvalidArgument) as payload_error:
        ledger.log_event(job_id, EventType.PROGRESS, BAD_VALUES[name])
    assert (config_error.value.name, payload_error.value.name) == ("config", "payload")
    assert state(ledger) == before


def test_bad_arguments_are_refused_before_anything_is_written(ledger: Ledger) -> None:
    """Law 9, the record is true: an argument of the wrong kind is refused with an
    `InvalidArgument` naming it, and nothing is stored."""
    from datetime import datetime

    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w")
    before = state(ledger)
    calls = {
        "chat_id": lambda: ledger.create_job("1", CONFIG),  # type: ignore[arg-type]
        "max_attempts": lambda: ledger.create_job(1, CONFIG, max_attempts=0),
        "run_at": lambda: ledger.create_job(1, CONFIG, run_at=datetime(2026, 1, 1)),
        "cost_cents": lambda: ledger.complete(job_id, "s", "ok", float("nan")),
        "duration_seconds": lambda: ledger.complete(job_id, "s", "ok", 1.0, -1),
        "lease": lambda: ledger.heartbeat(job_id, lease=0),
        "limit": lambda: ledger.pending_jobs(-1),
        "type": lambda: ledger.log_event(job_id, EventType.COMPLETED, {}),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidArgument) as raised:
            call()
        assert raised.value.name == name and str(raised.value)
    assert state(ledger) == before


def test_a_closed_ledger_refuses_calls_with_a_ledger_error(open_ledger: LedgerFactory) -> None:
    """Law 9, the record is true: a call on a closed ledger is refused with a `LedgerError`, not
    a driver's exception."""
    closed = open_ledger()
    closed.create_job(1, CONFIG)
    open_ledger.close(closed)
    for call in (lambda: closed.get_job("x"), lambda: closed.create_job(1, CONFIG)):
        with pytest.raises(LedgerError):
            call()


# -- law 10: followers never skip ---------------------------------------------------------------


def test_a_follower_sees_every_event_exactly_once(ledger: Ledger, clock: FakeClock) -> None:
    """Law 10, followers never skip: reading ``read_all(after=last_seen)`` a page at a time,
    while commands keep appending between pages, sees every event exactly once, in order."""
    busy_ledger(ledger, clock)
    followed = []
    last_seen = 0
    for n in range(200):
        page = ledger.read_all(after=last_seen, limit=3)
        if not page and n > 20:
            break
        followed += page
        if page:
            last_seen = page[-1].position
        if n < 20:  # keep writing while the follower reads
            ledger.log_event(ledger.create_job(n, CONFIG), EventType.PROGRESS, {"n": n})
    everything = ledger.read_all()
    assert followed == everything
    assert [e.position for e in everything] == list(range(1, len(everything) + 1))


@pytest.mark.capability("shared_between_handles")
def test_a_follower_on_another_handle_sees_every_event_once(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Law 10, followers never skip: a follower reading through its own handle while another
    handle writes sees every event exactly once, with gap-free positions."""
    writer = open_ledger()
    follower = open_ledger.second_handle(writer)
    followed = []
    for n in range(30):
        job_id = writer.create_job(n, CONFIG)
        writer.log_event(job_id, EventType.PROGRESS, {"n": n})
        after = followed[-1].position if followed else 0
        followed += follower.read_all(after=after, limit=1 + n % 3)
    followed += follower.read_all(after=followed[-1].position)
    assert [e.position for e in followed] == list(range(1, 61))
    assert followed == writer.read_all()
