"""An import on PostgreSQL, where another process may write to the same ledger meanwhile.

SQLite's import holds the file's write lock from its look at the (empty) log on; PostgreSQL's
look takes no lock, so another writer can append between it and the first line's insert. What
is proved here against a real server: an import whose lines then land after another writer's
event is refused, and nothing of it is written; and the insert trigger lets an empty log start
at a later position only where the import recorded that its chain starts there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger import Ledger, LedgerError

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from tests import postgres_cluster  # noqa: E402

CONFIG = {"role": "coder", "task": "import"}


@pytest.fixture
def source(postgres_url: str) -> Iterator[Ledger]:
    url = postgres_cluster.create_schema(postgres_url, prefix="importsource")
    with Ledger(url) as opened:
        yield opened
    postgres_cluster.drop_schema(url)


def test_an_import_another_writer_got_ahead_of_is_refused_and_writes_nothing(
    source: Ledger, postgres_schema: str
) -> None:
    source.create_job(1, CONFIG)
    job_id = source.create_job(2, CONFIG)
    source.log_event(job_id, "progress", {"n": 1})
    lines = list(source.export_events(after=1))  # positions 2 and 3
    with Ledger(postgres_schema) as target, Ledger(postgres_schema) as other:

        def racing() -> Iterator[bytes]:
            other.create_job(9, {"by": "another writer"})  # after the look, before any insert
            yield from lines

        with pytest.raises(LedgerError, match="another writer appended event 1"):
            target.import_events(racing())
        events = target.read_all()
        assert [(e.position, e.job_id) for e in events] == [(1, events[0].job_id)]
        assert target.get_job(job_id) is None
        assert target.verify().ok


def test_an_empty_log_starts_later_only_where_the_chain_is_recorded_to_start(
    postgres_schema: str,
) -> None:
    named = (
        "INSERT INTO events (position, job_id, version, type, data, recorded_at, hash) "
        "VALUES (5, 'a', 1, 'created', '{}', now(), %s)"
    )
    with Ledger(postgres_schema):
        pass  # the schema
    with psycopg.connect(postgres_schema) as conn:
        with pytest.raises(
            psycopg.errors.CheckViolation, match="position 5 given, but the next position is 1"
        ):
            conn.execute(named, ("0" * 64,))
        conn.rollback()
        conn.execute(
            "INSERT INTO projection_checkpoints (name, schema_version, position) "
            "VALUES ('chain_start', 1, 5)"
        )
        conn.execute(named, ("0" * 64,))
        conn.commit()
        assert conn.execute("SELECT last_position FROM event_counter").fetchone() == (5,)
