"""`JobState` is built by position on two hot paths (a row read back, a created job): pin that
every value lands in the field of its name, against the same state built by keywords."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from ledger.backends.sqlite import jobs_table
from ledger.domain import events as ev
from ledger.domain.events import StoredEvent
from ledger.domain.model import JobStatus
from ledger.domain.state import JobState
from projections.jobs import created

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def test_the_columns_are_the_fields_in_order() -> None:
    names = tuple("config_json" if c == "config" else c for c in jobs_table.COLUMNS)
    assert names == JobState.__struct_fields__


def _distinct_row() -> tuple[list[object], dict[str, object]]:
    """A row whose every column holds a value no other column holds, and the state it is."""
    row: list[object] = []
    expected: dict[str, object] = {}
    for i, name in enumerate(JobState.__struct_fields__):
        if name == "status":
            row.append("running")
            expected[name] = JobStatus.RUNNING
        elif name.endswith("_at"):
            moment = T0 + timedelta(seconds=i)
            row.append(jobs_table.to_text(moment))
            expected[name] = moment
        elif name in (
            "id",
            "config_json",
            "user_id",
            "worker_id",
            "queue",
            "result_summary",
            "result_status",
            "error_message",
            "idempotency_key",
            "result_json",
            "parent_id",
            "holder_host",
            "holder_boot_id",
        ):
            row.append(f"text-{i}")
            expected[name] = f"text-{i}"
        elif name in (
            "cost_cents",
            "lease_seconds",
            "timeout_seconds",
            "max_cost_cents",
            "subtree_cost_cents",
        ):
            row.append(i + 0.5)
            expected[name] = i + 0.5
        else:
            row.append(1000 + i)
            expected[name] = 1000 + i
    return row, expected


def test_a_row_read_back_puts_each_column_in_its_field() -> None:
    row, expected = _distinct_row()
    state = jobs_table.to_state(row)
    assert msgspec.structs.asdict(state) == expected
    assert state == JobState(**expected)  # type: ignore[arg-type]


def test_a_created_event_gives_the_state_keywords_would() -> None:
    event = ev.JobCreated(
        chat_id=7,
        config={"role": "coder"},
        thread_id=3,
        user_id="u",
        queue="llm",
        priority=5,
        run_at=T0 + timedelta(hours=1),
        max_attempts=4,
        idempotency_key="key",
        timeout=60.0,
        parent_id="parent",
        max_cost_cents=250.0,
    )
    stored = StoredEvent(42, "job-1", 1, T0, event)
    expected = JobState(
        id="job-1",
        chat_id=7,
        thread_id=3,
        user_id="u",
        config_json='{"role":"coder"}',
        status=JobStatus.PENDING,
        worker_id=None,
        started_at=None,
        completed_at=None,
        result_summary=None,
        result_status=None,
        cost_cents=None,
        duration_seconds=None,
        error_message=None,
        created_at=T0,
        updated_at=T0,
        version=1,
        queue="llm",
        priority=5,
        run_at=T0 + timedelta(hours=1),
        attempts=0,
        max_attempts=4,
        lease_expires_at=None,
        idempotency_key="key",
        created_position=42,
        lease_seconds=None,
        timeout_seconds=60.0,
        parent_id="parent",
        max_cost_cents=250.0,
    )
    assert created(stored) == expected
    bare = created(StoredEvent(1, "job-2", 1, T0, ev.JobCreated(chat_id=1, config=None)))
    assert bare.run_at == T0 and bare.queue == "default" and bare.subtree_cost_cents == 0.0
