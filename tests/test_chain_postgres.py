"""The tamper-evident log on PostgreSQL: edits and deletions made with another client after
``ALTER TABLE events DISABLE TRIGGER ...`` are found by `verify` at their position, and an old
database without the ``hash`` column upgrades in place (its events chained from then on)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ledger import Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")


def _fill(ledger: Ledger) -> tuple[int, str]:
    for n in range(3):
        ledger.create_job(n, {"n": n})
    job = ledger.claim("w", lease=60)
    assert job is not None
    ledger.log_event(job.id, "progress", {"step": 1}, worker_id="w")
    ledger.complete(job.id, "ok", "success", 1.0, 1, worker_id="w")
    assert ledger.verify().ok
    return ledger.head()


@pytest.fixture
def url(postgres_schema: str) -> Iterator[str]:
    yield postgres_schema


def _raw(url: str) -> Any:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("ALTER TABLE events DISABLE TRIGGER events_no_update")
    conn.execute("ALTER TABLE events DISABLE TRIGGER events_no_delete")
    return conn


def _chain_problems(url: str, **kwargs: Any) -> list[tuple[Any, str | None, str]]:
    with Ledger(url) as ledger:
        report = ledger.verify(**kwargs)
    assert report.ok is (not report.differences)
    return [
        (d.key, d.column, d.problem or "")
        for d in report.differences
        if d.table == "events" and d.column in ("hash", "head")
    ]


def test_an_edit_with_the_triggers_disabled_is_found(url: str) -> None:
    with Ledger(url) as ledger:
        _fill(ledger)
    with _raw(url) as conn:
        conn.execute(
            'UPDATE events SET data = \'{"type":"progress","payload":{"step":2},'
            '"worker_id":"w","attempt":1}\' WHERE type = \'progress\''
        )
        position = conn.execute("SELECT position FROM events WHERE type = 'progress'").fetchone()
    [(key, column, problem)] = _chain_problems(url)
    assert (key, column) == (position[0], "hash") and "changed" in problem


def test_a_deletion_with_the_triggers_disabled_is_found(url: str) -> None:
    with Ledger(url) as ledger:
        head = _fill(ledger)
    with _raw(url) as conn:
        conn.execute("DELETE FROM events WHERE position = 2")
    problems = _chain_problems(url, expect_head=head)
    assert problems[0][:2] == (3, "hash") and "missing" in problems[0][2]
    assert any(column == "head" for _, column, _ in problems)


def test_a_database_without_the_hash_column_upgrades_and_chains(url: str) -> None:
    """As a ledger made before the chain: the column is dropped and the events are written
    again without hashes; opening adds the column, verify is green, appends are chained."""
    with Ledger(url) as ledger:
        _fill(ledger)
        before = ledger.head()
    with _raw(url) as conn:
        conn.execute("ALTER TABLE events DROP COLUMN hash")
        conn.execute("UPDATE ledger_schema SET script_sha256 = NULL")  # before the digest too
    with Ledger(url) as ledger:
        assert ledger.verify().ok
        assert ledger.head() == before  # computed over the unhashed events: the same chain
        ledger.create_job(9, {"after": "upgrade"})
        assert ledger.verify(expect_head=before).ok
    with psycopg.connect(url) as conn:
        hashes = [h for (h,) in conn.execute("SELECT hash FROM events ORDER BY position")]
    assert all(h is None for h in hashes[:-1]) and hashes[-1] is not None
