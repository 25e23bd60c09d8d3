"""Operator commands through the public API, on every backend: retry, retry_failed, pause and
resume, each recorded as an event naming who acted, each refusing bad input with nothing
written."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger import EventType, InvalidArgument, InvalidTransition, JobNotFound, JobStatus, Ledger
from tests.conftest import FakeClock
from tests.contract.conftest import LedgerFactory
from tests.contract.support import CONFIG, state


def _failed(ledger: Ledger, queue: str = "default") -> str:
    job_id = ledger.create_job(1, CONFIG, queue=queue)
    claimed = ledger.claim("w", queues=[queue])
    assert claimed is not None and claimed.id == job_id
    ledger.fail(job_id, "boom", worker_id="w")
    return job_id


def test_retry_sends_a_failed_job_back_as_a_new_attempt(ledger: Ledger) -> None:
    job_id = _failed(ledger)
    job = ledger.retry(job_id, by="alice", reason="fixed the bug")
    assert job.status is JobStatus.PENDING and job.worker_id is None
    assert (job.attempts, job.max_attempts) == (1, 2)  # its attempt stays counted; one more
    assert job.completed_at is None and job.error_message == "boom"  # the last error kept
    last = ledger.job_events(job_id)[-1]
    assert last.type is EventType.RETRIED
    assert last.payload == {"by": "alice", "reason": "fixed the bug"}
    again = ledger.claim("w2")
    assert again is not None and again.id == job_id and again.attempts == 2
    ledger.complete(job_id, "done", worker_id="w2")
    assert ledger.get_job(job_id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_retry_takes_a_cancelled_job_and_refuses_every_other_state(ledger: Ledger) -> None:
    cancelled = ledger.create_job(1, CONFIG, max_attempts=3)
    assert ledger.cancel(cancelled, by="bob")
    assert ledger.job_events(cancelled)[-1].payload["by"] == "bob"
    job = ledger.retry(cancelled)
    assert job.status is JobStatus.PENDING and (job.attempts, job.max_attempts) == (0, 3)
    before = state(ledger)
    with pytest.raises(InvalidTransition, match="only a failed or cancelled job"):
        ledger.retry(cancelled)  # pending now
    with pytest.raises(JobNotFound):
        ledger.retry("no-such-job")
    with pytest.raises(InvalidArgument):
        ledger.retry(cancelled, by=3)  # type: ignore[arg-type]
    assert state(ledger) == before


def test_a_retried_job_stays_final_as_a_status(ledger: Ledger) -> None:
    """Failed and cancelled are still final for workers and lifecycle commands: only the
    operator's retry leaves them."""
    job_id = _failed(ledger)
    assert ledger.get_job(job_id).status.is_final  # type: ignore[union-attr]
    assert ledger.cancel(job_id) is False


def test_retry_failed_retries_by_queue_and_time(ledger: Ledger, clock: FakeClock) -> None:
    old = _failed(ledger, "mail")
    clock.advance(3600)
    since = clock.now
    recent = [_failed(ledger, "mail"), _failed(ledger, "mail"), _failed(ledger, "other")]
    done = ledger.create_job(1, CONFIG, queue="mail")
    ledger.claim("w", queues=["mail"])
    ledger.complete(done, "ok", worker_id="w")
    assert [j.id for j in ledger.failed_jobs(queue="mail", since=since)] == recent[:2]
    assert ledger.retry_failed(queue="mail", since=since, by="ops") == 2
    assert ledger.get_job(old).status is JobStatus.FAILED  # type: ignore[union-attr]
    assert ledger.get_job(recent[2]).status is JobStatus.FAILED  # type: ignore[union-attr]
    for job_id in recent[:2]:
        assert ledger.get_job(job_id).status is JobStatus.PENDING  # type: ignore[union-attr]
        assert ledger.job_events(job_id)[-1].payload == {"by": "ops", "reason": None}
    assert ledger.retry_failed() == 2  # the rest, of every queue
    assert ledger.retry_failed() == 0
    before = state(ledger)
    with pytest.raises(InvalidArgument):
        ledger.retry_failed(queue="")
    with pytest.raises(InvalidArgument):
        ledger.retry_failed(since=since.replace(tzinfo=None))
    assert state(ledger) == before


def test_a_paused_queue_is_not_claimed_until_resumed(ledger: Ledger) -> None:
    mail = ledger.create_job(1, CONFIG, queue="mail", priority=10)
    other = ledger.create_job(1, CONFIG, queue="other")
    assert ledger.pause("mail", by="carol", reason="provider down") is True
    assert ledger.pause("mail") is False  # already paused: nothing written
    assert ledger.paused_queues() == ["mail"]
    assert ledger.claim("w", queues=["mail"]) is None
    claimed = ledger.claim("w")
    assert claimed is not None and claimed.id == other  # mail has priority, but is paused
    assert ledger.claim("w") is None
    assert ledger.resume("mail", by="dave") is True
    assert ledger.resume("mail") is False
    assert ledger.paused_queues() == []
    claimed = ledger.claim("w")
    assert claimed is not None and claimed.id == mail


def test_pause_and_resume_are_events_of_the_queue_stream(ledger: Ledger, clock: FakeClock) -> None:
    ledger.pause("mail", by="carol", reason="provider down")
    clock.advance(5)
    ledger.resume("mail", by="dave")
    events = ledger.job_events("queue:mail")
    assert [(e.type, e.version, e.payload) for e in events] == [
        (EventType.QUEUE_PAUSED, 1, {"by": "carol", "reason": "provider down"}),
        (EventType.QUEUE_RESUMED, 2, {"by": "dave", "reason": None}),
    ]
    [queue] = ledger.queue_states()
    assert (queue.queue, queue.paused, queue.by, queue.version) == ("mail", False, "dave", 2)
    assert queue.changed_at == clock.now
    assert ledger.count_jobs() == 0  # a queue's stream is not a job


def test_pause_survives_replay_and_refuses_bad_names(ledger: Ledger) -> None:
    ledger.create_job(1, CONFIG, queue="mail")
    ledger.pause("mail", by="carol")
    ledger.replay()
    assert ledger.paused_queues() == ["mail"]
    assert ledger.claim("w") is None
    before = state(ledger)
    for bad in ("", None, 7):
        with pytest.raises(InvalidArgument):
            ledger.pause(bad)  # type: ignore[arg-type]
    assert state(ledger) == before
    assert ledger.verify().ok


@pytest.mark.capability("shared_between_handles")
def test_a_pause_is_honoured_by_another_handle(open_ledger: LedgerFactory) -> None:
    first = open_ledger()
    second = open_ledger.second_handle(first)
    first.create_job(1, CONFIG, queue="mail")
    second.pause("mail", by="ops")
    assert first.claim("w") is None
    first.resume("mail")
    assert second.claim("w") is not None


def test_enqueue_records_who_enqueued(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG, by="erin", run_at=None)
    assert ledger.job_events(job_id)[0].payload["by"] == "erin"
    assert ledger.get_job(job_id).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_archive_works_on_a_file_and_is_refused_elsewhere(
    ledger: Ledger, backend: Any, clock: FakeClock, tmp_path: Path
) -> None:
    """SQLite files archive; ``:memory:`` (no disk to bound) and PostgreSQL (its log cannot be
    split without deleting rows) refuse with `InvalidArgument`, writing nothing."""
    done = _failed(ledger)
    live = ledger.create_job(1, CONFIG)
    clock.advance(7 * 86400)
    target = tmp_path / "archive.db"
    if backend.name != "sqlite-file":
        before = state(ledger)
        with pytest.raises(InvalidArgument, match="archive works on an SQLite ledger file"):
            ledger.archive(timedelta(days=1), target)
        assert state(ledger) == before and not target.exists()
        return
    report = ledger.archive(timedelta(days=1), target)
    assert (report.archived_jobs, report.live_jobs) == (1, 1)
    assert ledger.get_job(done) is None and ledger.get_job(live) is not None
    with Ledger(str(target), readonly=True) as archived:
        assert archived.get_job(done) is not None and archived.verify().ok
