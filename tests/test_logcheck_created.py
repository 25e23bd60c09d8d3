"""`LogCheck`'s fast way for created events decides exactly what its careful way decides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ledger.domain import events as ev
from ledger.domain.events import StoredEvent
from ledger.domain.logrules import LogCheck

T0 = datetime(2026, 12, 2, tzinfo=UTC)
CASES = {
    "plain": ({}, "job-1", 1),
    "every int at the edge": (
        {"thread_id": 2**63 - 1, "priority": -(2**63), "max_attempts": 3},
        "job-1",
        1,
    ),
    "chat_id past 64 bits": ({"chat_id": 2**63}, "job-1", 1),
    "priority past 64 bits": ({"priority": -(2**63) - 1}, "job-1", 1),
    "run_at naive": ({"run_at": datetime(2026, 12, 2)}, "job-1", 1),
    "run_at in another zone": (
        {"run_at": datetime(2026, 12, 2, tzinfo=timezone(timedelta(hours=2)))},
        "job-1",
        1,
    ),
    "run_at UTC": ({"run_at": T0}, "job-1", 1),
    "version 2": ({}, "job-1", 2),
    "version 0": ({}, "job-1", 0),
    "empty id": ({}, "", 1),
    "a stream's id": ({}, "queue:default", 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_created_fast_way_equals_careful_way(case: str) -> None:
    fields, job_id, version = CASES[case]
    event = ev.JobCreated(chat_id=fields.pop("chat_id", 7), config={}, **fields)
    stored = StoredEvent(1, job_id, version, T0, event)
    fast, careful = LogCheck(), LogCheck()
    assert fast.problem(stored) == careful._careful(stored, None)
    assert fast.known == careful.known
    again = StoredEvent(2, job_id, version, T0, event)  # the same job created twice
    assert fast.problem(again) == careful._careful(again, careful.known.get(job_id))
