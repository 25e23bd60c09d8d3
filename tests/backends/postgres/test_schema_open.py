"""Opening a ledger on PostgreSQL runs ``schema.sql`` only where the database does not hold
this release's schema already, untouched: the digest of the file's text and the fingerprint of
the catalog objects it made (`ledger.backends.postgres.catalog`), both recorded by its last run,
and the log's counter row."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

from ledger import Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres.connection import connect, session_statements  # noqa: E402
from tests.postgres_cluster import admin  # noqa: E402


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
        ("DROP TABLE ledger_run", "SELECT to_regclass('ledger_run') IS NOT NULL"),
        (
            "ALTER TABLE ledger_run SET LOGGED",  # crash recovery would no longer empty it
            "SELECT relpersistence = 'u' FROM pg_class WHERE oid = to_regclass('ledger_run')",
        ),
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


def in_schema(url: str, name: str) -> str:
    """``url`` with its connections' search_path the schema ``name``, quoted (so a name with
    capitals stays as written)."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("options", f'-csearch_path="{name}"')]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def test_a_schema_whose_name_has_capitals_is_the_one_fingerprinted(postgres_url: str) -> None:
    """The fingerprint looks at the current schema by its exact name: taken as an unquoted
    name, ``Mixed_x`` was ``mixed_x``, so every open failed (no such schema), or, with a
    lowercase twin holding a ledger, the twin was fingerprinted and a trigger dropped here
    never came back."""
    name = f"Mixed_{uuid.uuid4().hex[:10]}"
    admin(postgres_url, f'CREATE SCHEMA "{name}"')
    admin(postgres_url, f'CREATE SCHEMA "{name.lower()}"')
    mixed, twin = in_schema(postgres_url, name), in_schema(postgres_url, name.lower())
    try:
        with Ledger(twin) as ledger:
            ledger.create_job(1, {})
        with Ledger(mixed) as ledger:
            job_id = ledger.create_job(1, {})
        tamper(mixed, "DROP TRIGGER events_no_update ON events")
        with Ledger(mixed) as ledger:
            ledger.log_event(job_id, "progress", {})
            assert ledger.verify().ok
        count = "SELECT count(*) FROM pg_trigger WHERE tgname = 'events_no_update' AND "
        count += f"tgrelid = '\"{name}\".events'::regclass"
        assert catalog_row(postgres_url, count) == (1,)
    finally:
        admin(postgres_url, f'DROP SCHEMA "{name}" CASCADE')
        admin(postgres_url, f'DROP SCHEMA "{name.lower()}" CASCADE')


def test_a_session_quoting_every_name_opens_without_running_the_file(
    postgres_schema: str,
) -> None:
    """With quote_all_identifiers on, PostgreSQL prints every definition with its names quoted:
    the fingerprint is taken with it off, so such a session's open finds the ledger current
    (it takes no table lock while another session writes) and leaves it as it was."""
    with Ledger(postgres_schema) as ledger:
        ledger.create_job(1, {})
    parts = urlsplit(postgres_schema)
    options = dict(parse_qsl(parts.query))["options"] + " -cquote_all_identifiers=on"
    query = [(k, options if k == "options" else v) for k, v in parse_qsl(parts.query)]
    quoting = urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))
    conn = connect(postgres_schema, session_statements("full", 30_000, False), "writing")
    conn.execute("LOCK TABLE jobs, events IN ROW EXCLUSIVE MODE")  # as an open transaction's
    try:
        with Ledger(quoting, busy_timeout=1) as ledger:
            assert ledger.count_jobs() == 1
    finally:
        conn.rollback()
        conn.close()


def test_a_column_dropped_by_hand_is_back_after_the_next_open(postgres_schema: str) -> None:
    """The fingerprint covers the file's tables' columns: a dropped one (here the jobs'
    timeout_seconds) made the fingerprint differ, and the file adds it back."""
    with Ledger(postgres_schema) as ledger:
        ledger.create_job(1, {})
    tamper(postgres_schema, "ALTER TABLE jobs DROP COLUMN timeout_seconds")
    with Ledger(postgres_schema) as ledger:
        job_id = ledger.create_job(1, {}, timeout=30)
        job = ledger.get_job(job_id)
        assert job is not None and job.timeout == 30
    present = "SELECT count(*) FROM information_schema.columns WHERE table_name = 'jobs' "
    present += "AND column_name = 'timeout_seconds' AND table_schema = current_schema()"
    assert catalog_row(postgres_schema, present) == (1,)


def test_the_catalog_fingerprint_covers_every_object_the_file_creates(
    postgres_schema: str,
) -> None:
    """Every table, index, function and trigger the file creates is one the fingerprint looks
    at: the query names each, and each, dropped, changes it (the names come from the file's
    own CREATE statements: a new one needs no list kept by hand)."""
    from ledger.backends.postgres import catalog
    from ledger.backends.postgres.connection import schema_text

    text = schema_text()
    query = catalog.fingerprint_query(text)
    created = catalog.created_names(text)
    assert len(created["TABLE"]) >= 7 and len(created["TRIGGER"]) >= 10
    for names in created.values():
        for name in names:
            assert f"'{name}'" in query, name
    with Ledger(postgres_schema):
        pass
    before = catalog_row(postgres_schema, f"SELECT {query}")
    tamper(postgres_schema, "DROP INDEX jobs_parent")
    assert catalog_row(postgres_schema, f"SELECT {query}") != before
