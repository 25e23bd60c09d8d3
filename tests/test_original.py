"""The original Haskell module's test list, ported case by case."""

from __future__ import annotations

import msgspec

from ledger import EventType, JobStatus, Ledger

TEST_CONFIG = {"role": "coder", "task": "test task"}


def test_init_tables_is_idempotent(db_path: str) -> None:
    with Ledger(db_path) as first:
        job_id = first.create_job(123, TEST_CONFIG)
    with Ledger(db_path) as second, Ledger(db_path) as third:
        assert second.get_job(job_id) is not None
        assert third.get_job(job_id) is not None
        assert second.verify().ok


def test_job_status_json_roundtrip() -> None:
    for status in JobStatus:
        assert msgspec.json.decode(msgspec.json.encode(status), type=JobStatus) is status
    assert [s.value for s in JobStatus] == [
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    ]


def test_event_type_json_roundtrip() -> None:
    for event_type in (
        EventType.STARTED,
        EventType.PROGRESS,
        EventType.TOOL_CALL,
        EventType.ERROR,
        EventType.COMPLETED,
    ):
        assert msgspec.json.decode(msgspec.json.encode(event_type), type=EventType) is event_type
    assert EventType.TOOL_CALL.value == "tool_call"
    assert EventType.COMPLETED.value == "completed"


def test_create_job_and_get_job_roundtrip(ledger: Ledger) -> None:
    job_id = ledger.create_job(123, TEST_CONFIG)
    job = ledger.get_job(job_id)
    assert job is not None
    assert job.chat_id == 123
    assert job.status is JobStatus.PENDING
    assert job.config == TEST_CONFIG


def test_claim_job_updates_status(ledger: Ledger) -> None:
    job_id = ledger.create_job(123, TEST_CONFIG)
    claimed = ledger.claim("worker-1")
    assert claimed is not None
    assert claimed.id == job_id
    assert claimed.status is JobStatus.RUNNING
    assert claimed.worker_id == "worker-1"


def test_log_event_and_get_job_events(ledger: Ledger) -> None:
    job_id = ledger.create_job(123, TEST_CONFIG)
    ledger.log_event(job_id, EventType.STARTED, {"role": "coder"})
    ledger.log_event(job_id, EventType.PROGRESS, {"message": "working..."})
    activity = ledger.job_events(job_id, types=[EventType.STARTED, EventType.PROGRESS])
    assert [e.type for e in activity] == [EventType.STARTED, EventType.PROGRESS]
    assert activity[0].payload == {"role": "coder"}
    every = ledger.job_events(job_id)
    assert [e.type for e in every] == [EventType.CREATED, EventType.STARTED, EventType.PROGRESS]
    assert [e.version for e in every] == [1, 2, 3]
