"""Opening a ledger on PostgreSQL runs ``schema.sql`` only where the database does not hold
this release's schema already, untouched: the digest of the file's text and the fingerprint of
the catalog objects it made (`ledger.backends.postgres.catalog`), both recorded by its last run,
and the log's counter row."""

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


def tamper(url: str, *statements: str) -> None:
    """Run ``statements`` as the table owner, in one transaction, as a person (or an older
    release's schema file) would."""
    conn = connect(url, session_statements("full", 30_000, False), "tampering")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def catalog_row(url: str, query: str) -> tuple[object, ...] | None:
    conn = connect(url, session_statements("full", 30_000, True), "reading")
    try:
        return conn.execute(query).fetchone()
    finally:
        conn.close()


def test_an_older_releases_function_bodies_are_replaced_at_the_next_open(
    postgres_schema: str,
) -> None:
    """A rolling deploy: an older worker starting after this release runs its own file, which
    puts back its function bodies and leaves this release's digest in place. The next open by
    this release finds the catalog changed and runs the file: the law is this release's again
    (here the old body let an update of an event through)."""
    with Ledger(postgres_schema) as ledger:
        job_id = ledger.create_job(1, {})
    tamper(
        postgres_schema,
        "CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    )
    with Ledger(postgres_schema) as ledger:
        ledger.log_event(job_id, "progress", {})
    conn = connect(postgres_schema, session_statements("full", 30_000, False), "tampering")
    try:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE events SET type = type")
    finally:
        conn.rollback()
        conn.close()


@pytest.mark.parametrize(
    ("drop", "present"),
    [
        ("DROP INDEX jobs_idempotency", "SELECT to_regclass('jobs_idempotency') IS NOT NULL"),
        ("DROP TABLE queues", "SELECT to_regclass('queues') IS NOT NULL"),
    ],
)
def test_an_object_dropped_by_hand_is_back_after_the_next_open(
    postgres_schema: str, drop: str, present: str
) -> None:
    """The digest matches, but an index or a table of the file is gone: the open runs the
    file, which makes it again (skipping on the digest alone, it stayed gone, and with it the
    idempotency keys' uniqueness, or the queues' pauses)."""
    with Ledger(postgres_schema) as ledger:
        ledger.create_job(1, {}, idempotency_key="k")
    tamper(postgres_schema, drop)
    assert catalog_row(postgres_schema, present) == (False,)
    with Ledger(postgres_schema) as ledger:
        assert ledger.create_job(1, {}, idempotency_key="k") is not None
        assert ledger.verify().ok
    assert catalog_row(postgres_schema, present) == (True,)


def test_a_counter_row_deleted_past_its_triggers_comes_back_at_the_logs_head(
    postgres_schema: str,
) -> None:
    """With its row gone, every append failed ("event_counter has no row"); the next open
    restores the row at the log's head, so the log goes on gap-free and chained."""
    with Ledger(postgres_schema) as ledger:
        job_id = ledger.create_job(1, {})
        ledger.log_events(job_id, [("progress", {"n": n}) for n in range(4)])
    tamper(
        postgres_schema,
        "ALTER TABLE event_counter DISABLE TRIGGER event_counter_no_delete",
        "DELETE FROM event_counter",
        "ALTER TABLE event_counter ENABLE TRIGGER event_counter_no_delete",
    )
    with Ledger(postgres_schema) as ledger:
        assert ledger.log_event(job_id, "progress", {"n": 4}) == 6
        assert [e.position for e in ledger.job_events(job_id)] == [1, 2, 3, 4, 5, 6]
        assert ledger.verify().ok


def test_the_catalog_fingerprint_covers_every_object_the_file_creates() -> None:
    """The names come from the file's own CREATE statements: each table, index, function and
    trigger of it is in the fingerprint's query (a new one needs no list kept by hand)."""
    from ledger.backends.postgres import catalog
    from ledger.backends.postgres.connection import schema_text

    query = catalog.fingerprint_query(schema_text())
    for name in (
        "events",
        "event_counter",
        "jobs",
        "budgets",
        "queues",
        "projection_checkpoints",
        "ledger_schema",
        "jobs_claim",
        "jobs_idempotency",
        "jobs_parent",
        "ledger_events_before_insert",
        "ledger_refuse_change",
        "events_no_update",
        "jobs_notify_update",
    ):
        assert f"'{name}'" in query, name
