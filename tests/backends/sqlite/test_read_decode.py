"""The fast decode of a full read (`domain.reading.to_job_events`, straight from the cursor)
reads exactly what the careful decode (`events.decode`, one event at a time) reads, and refuses
what it refuses, on rows the ledger wrote and on rows written around it."""

from __future__ import annotations

from datetime import UTC, datetime

import apsw
import pytest

from ledger import CorruptEvent, EventType, Ledger
from ledger.backends.sqlite import events_table
from ledger.domain import reading
from ledger.domain.model import JobEvent
from tests.conftest import FakeClock
from tests.contract.support import busy_ledger

_AT = "2026-01-01T00:00:00.000000+00:00"


def _careful(position: int, event_type: str, text: object) -> datetime:
    return datetime.fromisoformat(text)  # type: ignore[arg-type]


def _carefully(path: str) -> list[JobEvent]:
    """The log read one event at a time the careful way, the reference."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute(events_table.select_after_statement, (0,)).fetchall()
        return [reading.to_job_event(row, _careful) for row in rows]  # type: ignore[arg-type]
    finally:
        conn.close()


def _insert(path: str, job_id: str, version: int, kind: str, data: str, at: str = _AT) -> int:
    conn = apsw.Connection(path)
    try:
        conn.execute(
            "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?)",
            (job_id, version, kind, data, at),
        )
        return int(conn.last_insert_rowid())
    finally:
        conn.close()


def test_every_event_type_reads_back_as_the_careful_decode_reads_it(
    ledger: Ledger, clock: FakeClock
) -> None:
    busy_ledger(ledger, clock)
    fast = ledger.read_all()
    assert {e.type for e in fast} == set(EventType)  # every type is in the log
    assert fast == _carefully(ledger.path)
    assert fast[0].payload["chat_id"] == 0 and fast[0].payload["queue"] == "default"
    assert all(e.created_at.tzinfo is UTC for e in fast)
    assert ledger.read_all(after=3, limit=5) == fast[3:8]
    assert ledger.verify().ok


def test_data_the_ledger_did_not_write_takes_the_careful_way(ledger: Ledger) -> None:
    """The tag not first, or absent: a decoder of one type would accept data without a tag,
    the union does not. Either way the full read agrees with the careful one."""
    job_id = ledger.create_job(1, {"a": 1})
    later = _insert(ledger.path, job_id, 2, "progress", '{"payload":{"n":2},"type":"progress"}')
    events = ledger.read_all()
    assert events == _carefully(ledger.path)
    assert events[-1].position == later and events[-1].payload == {"n": 2}
    _insert(ledger.path, job_id, 3, "progress", '{"payload":3}')
    with pytest.raises(CorruptEvent, match="type"):
        ledger.read_all()


@pytest.mark.parametrize(
    ("kind", "data", "at", "why"),
    [
        ("progress", '{"type":"tool_call","payload":1}', _AT, "data says 'tool_call'"),
        ("progress", '{"type":"progress","payload":1', _AT, "truncated"),
        ("progress", '{"type":"progress","worker_id":7}', _AT, "Expected `str | null`"),
        ("no_such_type", '{"type":"no_such_type"}', _AT, "no_such_type"),
        ("progress", '{"type":"progress","payload":1}', "yesterday", "its recorded_at 'yesterday'"),
    ],
)
def test_a_row_the_fast_way_cannot_read_is_a_corrupt_event_naming_it(
    ledger: Ledger, kind: str, data: str, at: str, why: str
) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    position = _insert(ledger.path, job_id, 2, kind, data, at)
    with pytest.raises(CorruptEvent, match=why) as raised:
        ledger.read_all()
    assert raised.value.position == position
    assert len(ledger.read_all(limit=1)) == 1  # the events before it still read
