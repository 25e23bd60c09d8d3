"""Tampering and corruption: the log refuses rewrites, undecodable events are named by position,
and files that are not ledgers (or are too new) are refused without being changed."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from ledger import CorruptEvent, Ledger, SchemaError
from ledger.store import STORE_SCHEMA_VERSION
from tests.conftest import snapshot, table_dump


def _raw(path: str) -> apsw.Connection:
    return apsw.Connection(path)


def test_update_and_delete_of_events_are_refused_by_sqlite(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    conn = _raw(ledger.path)
    for statement in ("UPDATE events SET job_id = 'other'", "DELETE FROM events WHERE 1",
                      "UPDATE events SET version = version + 1"):  # fmt: skip
        with pytest.raises(apsw.ConstraintError, match="append-only"):
            conn.execute(statement)
    conn.close()
    assert [e.job_id for e in ledger.read_all()] == [job_id]


def _append_garbage(path: str, job_id: str, version: int) -> int:
    """A buggy writer that goes around the library and INSERTs a row it cannot read back."""
    conn = _raw(path)
    conn.execute(
        "INSERT INTO events (job_id, version, type, data, recorded_at) "
        "VALUES (?, ?, 'progress', '{not json', '2026-01-01T00:00:00.000000+00:00')",
        (job_id, version),
    )
    position = conn.last_insert_rowid()
    conn.close()
    return position


def test_undecodable_event_stops_replay_by_position_and_verify_reports_it(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    ledger.log_event(job_id, "progress", {"n": 1})
    position = _append_garbage(ledger.path, job_id, 3)
    before = table_dump(ledger.path)
    with pytest.raises(CorruptEvent) as raised:
        ledger.replay()
    assert raised.value.position == position
    assert f"position {position}" in str(raised.value)
    assert table_dump(ledger.path) == before  # the old projection stands
    report = ledger.verify()
    assert not report.ok and report.differences[0].position == position
    with pytest.raises(CorruptEvent):
        ledger.read_all()


def test_event_with_the_wrong_tag_in_its_data_is_corrupt(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    conn = _raw(ledger.path)
    conn.execute(
        "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES "
        "(?, 2, 'progress', '{\"type\":\"tool_call\",\"payload\":1}', '2026-01-01T00:00:00+00:00')",
        (job_id,),
    )
    conn.close()
    with pytest.raises(CorruptEvent, match="data says 'tool_call'"):
        ledger.replay()


def test_a_file_that_is_not_sqlite_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = path.read_bytes()
    with pytest.raises(SchemaError, match="not an SQLite database"):
        Ledger(str(path))
    assert path.read_bytes() == before
    assert not Path(str(path) + "-wal").exists()


def test_another_apps_sqlite_file_is_refused_unchanged(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    conn = _raw(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    before = Path(path).read_bytes()
    with pytest.raises(SchemaError, match="not a ledger"):
        Ledger(path)
    with pytest.raises(SchemaError, match="not a ledger"):
        Ledger(path, readonly=True)
    assert Path(path).read_bytes() == before


def test_a_ledger_from_a_newer_release_is_refused_unchanged(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        ledger.create_job(1, {"a": 1})
    conn = _raw(db_path)
    conn.execute(f"PRAGMA user_version = {STORE_SCHEMA_VERSION + 1}")
    conn.close()
    before = snapshot(db_path)
    with pytest.raises(SchemaError, match="newer release"):
        Ledger(db_path)
    with pytest.raises(SchemaError, match="newer release"):
        Ledger(db_path, readonly=True)
    assert snapshot(db_path) == before
