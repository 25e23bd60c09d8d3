"""Tampering and corruption: the log refuses rewrites, undecodable events are named by position,
and files that are not ledgers (or are too new) are refused without being changed."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from ledger import CorruptEvent, Ledger, SchemaError
from ledger.backends.sqlite.events_table import STORE_SCHEMA_VERSION
from tests.conftest import run_cli, snapshot, table_dump


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


# -- damage the triggers cannot stop: verify reports it, replay refuses it by position --------

AT = "2026-01-01T12:00:00.000000+00:00"


def _insert(path: str, job_id: str, version: int, event_type: str, data: str, at: str = AT) -> int:
    """A row INSERTed around the library (the triggers only forbid UPDATE and DELETE)."""
    conn = _raw(path)
    conn.execute(
        "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?)",
        (job_id, version, event_type, data, at),
    )
    position = conn.last_insert_rowid()
    conn.close()
    return position


def _assert_reported_and_refused(ledger: Ledger, position: int, why: str) -> None:
    """verify names the event (never raises); replay refuses it and leaves the projection; the
    CLI says so in words, exits 1, shows no traceback."""
    report = ledger.verify()
    assert not report.ok
    assert [d.position for d in report.differences if d.position is not None] == [position]
    assert why in (report.differences[0].problem or "")
    # written around the ledger, the event has no hash (or leaves a gap): the chain breaks there
    assert [d.key for d in report.differences if d.column == "hash"] == [position]
    before = snapshot(ledger.path)
    with pytest.raises(CorruptEvent) as raised:
        ledger.replay()
    assert raised.value.position == position and why in str(raised.value)
    assert snapshot(ledger.path) == before
    verified = run_cli("verify", db=ledger.path)
    assert verified.returncode == 1 and f"position {position}" in verified.stdout
    replayed = run_cli("replay", db=ledger.path)
    assert replayed.returncode == 1 and "Traceback" not in replayed.stderr
    assert replayed.stderr.count("\n") == 1 and f"position {position}" in replayed.stderr
    assert snapshot(ledger.path) == before


_PROGRESS = '{"type":"progress","payload":1}'


def test_an_event_of_a_job_that_was_never_created(ledger: Ledger) -> None:
    ledger.create_job(1, {"a": 1})
    position = _insert(ledger.path, "no-such-job", 1, "progress", _PROGRESS)
    _assert_reported_and_refused(ledger, position, "no-such-job has no created event")
    with pytest.raises(CorruptEvent, match="no created event before it"):
        Ledger(ledger.path)  # opening catches the projection up: the same refusal, no ValueError


def test_a_version_gap_in_a_jobs_stream(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    ledger.log_event(job_id, "progress", {"n": 1})
    position = _insert(ledger.path, job_id, 4, "progress", _PROGRESS)
    _assert_reported_and_refused(ledger, position, "must be version 3, not 4")


def test_a_second_created_event_for_a_job(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    position = _insert(
        ledger.path, job_id, 2, "created", '{"type":"created","chat_id":1,"config":1}'
    )
    _assert_reported_and_refused(ledger, position, "already has a created event")


def test_an_event_deleted_with_the_triggers_dropped(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    ledger.log_event(job_id, "progress", {"n": 1})
    ledger.log_event(job_id, "progress", {"n": 2})
    conn = _raw(ledger.path)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE job_id = ? AND version = 2", (job_id,))
    conn.close()
    _assert_reported_and_refused(ledger, 3, "must be version 2, not 3")


@pytest.mark.parametrize(
    "at", ["yesterday", "2026-01-01 12:00:00.000000+00:00", "2026-13-01T12:00:00.000000+00:00"]
)
def test_an_event_with_an_unreadable_time(ledger: Ledger, at: str) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    position = _insert(ledger.path, job_id, 2, "progress", _PROGRESS, at=at)
    _assert_reported_and_refused(ledger, position, "not a time in the ledger's format")


def test_an_event_with_values_no_command_writes(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    naive = '{"type":"claimed","worker_id":"w","lease_expires_at":"2026-01-01T12:05:00"}'
    position = _insert(ledger.path, job_id, 2, "claimed", naive)
    _assert_reported_and_refused(ledger, position, "has no timezone")


def test_a_created_event_with_an_int_sqlite_cannot_store(ledger: Ledger) -> None:
    ledger.create_job(1, {"a": 1})
    huge = '{"type":"created","chat_id":9223372036854775808,"config":1}'
    position = _insert(ledger.path, "job-2", 1, "created", huge)
    _assert_reported_and_refused(ledger, position, "does not fit in a 64-bit integer")


def test_a_jobs_row_with_a_status_no_transition_gives(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {"a": 1})
    conn = _raw(ledger.path)
    conn.execute("PRAGMA ignore_check_constraints = ON")  # what another tool could do
    conn.execute("UPDATE jobs SET status = 'bogus' WHERE id = ?", (job_id,))
    conn.close()
    report = ledger.verify()
    assert not report.ok
    assert [(d.key, d.column, d.live, d.rebuilt) for d in report.differences] == [
        (job_id, "status", "bogus", "pending")
    ]
    verified = run_cli("verify", db=ledger.path)
    assert verified.returncode == 1 and "bogus" in verified.stdout
    assert run_cli("replay", db=ledger.path).returncode == 0
    assert ledger.verify().ok
    assert ledger.get_job(job_id).status == "pending"  # type: ignore[union-attr]


def test_a_dropped_jobs_table_is_reported_by_verify(ledger: Ledger) -> None:
    ledger.create_job(1, {"a": 1})
    conn = _raw(ledger.path)
    conn.execute("DROP TABLE jobs")
    conn.close()
    report = ledger.verify()
    assert not report.ok and "cannot read the jobs projection" in (
        report.differences[0].problem or ""
    )
    verified = run_cli("verify", db=ledger.path)
    assert verified.returncode == 1 and "Traceback" not in verified.stderr
    ledger.replay()
    assert ledger.verify().ok
