"""The log's rules (`LogCheck`), event by event: the fast way it takes for a known job's next
event refuses what the full check refuses."""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.domain import events as ev
from ledger.domain.events import StoredEvent
from ledger.domain.logrules import LogCheck

AT = datetime(2026, 1, 1, tzinfo=UTC)


def _problems(*events: tuple[str, int, ev.Event]) -> list[str | None]:
    check = LogCheck()
    return [
        check.problem(StoredEvent(position, job_id, version, AT, event))
        for position, (job_id, version, event) in enumerate(events, start=1)
    ]


def test_a_jobs_events_in_order_pass() -> None:
    assert (
        _problems(
            ("j", 1, ev.JobCreated(chat_id=1, config={})),
            ("j", 2, ev.Progress(payload=1)),
            ("j", 3, ev.JobClaimed(worker_id="w", lease_expires_at=AT)),
            ("queue:q", 1, ev.QueuePaused()),
            ("queue:q", 2, ev.QueueResumed()),
        )
        == [None] * 5
    )


def test_a_known_streams_next_event_is_still_checked_in_full() -> None:
    created = ev.JobCreated(chat_id=1, config={})
    *_, gap = _problems(("j", 1, created), ("j", 3, ev.Progress()))
    assert gap is not None and "must be version 2, not 3" in gap
    *_, again = _problems(("j", 1, created), ("j", 2, created))
    assert again is not None and "already has a created event" in again
    *_, misplaced = _problems(("queue:q", 1, ev.QueuePaused()), ("queue:q", 2, ev.Progress()))
    assert misplaced is not None and "cannot be in the queue:... stream" in misplaced
    *_, wide = _problems(("j", 1, created), ("j", 2, ev.Progress(attempt=2**63)))
    assert wide is not None and "does not fit in a 64-bit integer" in wide
    naive = datetime(2026, 1, 1)
    *_, unzoned = _problems(
        ("j", 1, created), ("j", 2, ev.HeartbeatRecorded(lease_expires_at=naive))
    )
    assert unzoned is not None and "has no timezone" in unzoned


def test_a_refused_event_is_not_remembered() -> None:
    """After a refused event the job is still at its last good version."""
    check = LogCheck()
    created = StoredEvent(1, "j", 1, AT, ev.JobCreated(chat_id=1, config={}))
    assert check.problem(created) is None
    assert check.problem(StoredEvent(2, "j", 2, AT, ev.Progress(attempt=2**63))) is not None
    assert check.problem(StoredEvent(3, "j", 2, AT, ev.Progress(attempt=1))) is None


def test_a_job_first_seen_mid_log_continues_from_its_prior_version() -> None:
    """A catch-up's check asks ``prior`` once per job it has not seen, then takes the fast way
    from there; a job's event in a stream's id is refused however often the stream was seen."""
    asked: list[str] = []
    check = LogCheck(lambda job_id: asked.append(job_id) or 4)
    claimed = ev.JobClaimed(worker_id="w", lease_expires_at=AT)
    got = [
        check.problem(StoredEvent(n, "j", version, AT, event))
        for n, (version, event) in enumerate(
            [(5, ev.Progress()), (6, claimed), (7, ev.Progress()), (9, ev.Progress())], start=1
        )
    ]
    assert got[:3] == [None, None, None] and asked == ["j"]
    assert got[3] is not None and "must be version 8, not 9" in got[3]
    stream = [("queue:q", n, ev.QueuePaused()) for n in range(1, 4)]
    *_, misplaced = _problems(*stream, ("queue:q", 4, ev.Progress()))
    assert misplaced is not None and "cannot be in the queue:... stream" in misplaced
