"""Opening a ledger on PostgreSQL runs ``schema.sql`` only where the database does not hold
this release's schema already (the digest of the file's text, recorded by its last run)."""

from __future__ import annotations

import pytest

from ledger import Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres.connection import connect, session_statements  # noqa: E402


def test_an_open_of_a_current_ledger_takes_no_table_lock(postgres_schema: str) -> None:
    """A ledger whose schema is this release's (the digest of ``schema.sql`` recorded by its
    last run) opens without running the file: its DDL waited for every writer of other
    processes (and deadlocked with one now and then). Another session holding the tables as
    a writer does, the open and a read go through at once."""
    with Ledger(postgres_schema) as ledger:
        job_id = ledger.create_job(1, {})
    conn = connect(postgres_schema, session_statements("full", 30_000, False), "writing")
    conn.execute("LOCK TABLE jobs, events IN ROW EXCLUSIVE MODE")  # as an open transaction's
    try:
        with Ledger(postgres_schema, busy_timeout=1) as ledger:
            assert ledger.get_job(job_id) is not None
    finally:
        conn.rollback()
        conn.close()
    with Ledger(postgres_schema) as ledger:  # and the ledger was left as it was
        ledger.log_event(job_id, "progress", {})
        assert ledger.verify().ok


def test_an_open_of_a_ledger_from_another_text_runs_the_file(postgres_schema: str) -> None:
    """A database whose recorded digest is another text's (an older release's, or none: from
    before the digest) gets the whole file: a trigger it lacks is back after the open."""
    with Ledger(postgres_schema) as ledger:
        ledger.create_job(1, {})
    conn = connect(postgres_schema, session_statements("full", 30_000, False), "downgrading")
    conn.execute("DROP TRIGGER events_no_update ON events")
    conn.execute("UPDATE ledger_schema SET script_sha256 = 'an older text'")
    conn.commit()
    with Ledger(postgres_schema) as ledger:
        assert ledger.verify().ok
    found = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'events_no_update'"
    ).fetchone()
    digest = conn.execute("SELECT script_sha256 FROM ledger_schema").fetchone()
    conn.close()
    assert found == (1,)
    assert digest is not None and len(digest[0]) == 64


def test_an_open_restores_a_trigger_disabled_by_hand(postgres_schema: str) -> None:
    """The digest matches, but a law-enforcing trigger is disabled: the open runs the file,
    which enables it again (an UPDATE of an event is refused once more)."""
    with Ledger(postgres_schema) as ledger:
        ledger.create_job(1, {})
    conn = connect(postgres_schema, session_statements("full", 30_000, False), "tampering")
    conn.execute("ALTER TABLE events DISABLE TRIGGER events_no_update")
    conn.commit()
    with Ledger(postgres_schema):
        pass
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("UPDATE events SET type = type")
    conn.rollback()
    conn.close()
