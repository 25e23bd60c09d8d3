"""The ``queues`` table: the queues projection (`projections.queues`) as SQLite stores it.

One row per queue an operator paused or resumed. The claim query (`jobs_table`) skips the jobs
of every queue whose row says paused, inside the claim's own write transaction, so a pause is
honoured by every worker the moment it commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apsw

from projections.queues import QueueState

from .timecodec import from_text, to_text

table_statement = """CREATE TABLE IF NOT EXISTS queues (
    queue TEXT PRIMARY KEY,
    paused INTEGER NOT NULL CHECK (paused IN (0, 1)),
    by TEXT,
    reason TEXT,
    changed_at TEXT NOT NULL,
    version INTEGER NOT NULL
)"""
_COLUMNS = "queue, paused, by, reason, changed_at, version"
select_statement = f"SELECT {_COLUMNS} FROM queues WHERE queue = ?"
all_statement = f"SELECT {_COLUMNS} FROM queues ORDER BY queue"
upsert_statement = (
    f"INSERT INTO queues ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (queue) DO UPDATE "
    "SET paused = excluded.paused, by = excluded.by, reason = excluded.reason, "
    "changed_at = excluded.changed_at, version = excluded.version"
)
paused_statement = "SELECT queue FROM queues WHERE paused = 1 ORDER BY queue"
delete_statement = "DELETE FROM queues"
# The claim query's filter (see jobs_table): a job of a paused queue is not claimable.
NOT_PAUSED = "AND queue NOT IN (SELECT queue FROM queues WHERE paused = 1) "


def create(conn: apsw.Connection) -> None:
    conn.execute(table_statement)


def _state(row: Sequence[Any]) -> QueueState:
    queue, paused, by, reason, changed_at, version = row
    return QueueState(
        queue=queue,
        paused=bool(paused),
        by=by,
        reason=reason,
        changed_at=from_text(changed_at),
        version=int(version),
    )


def load(conn: apsw.Connection, queue: str) -> QueueState | None:
    row = conn.execute(select_statement, (queue,)).fetchone()
    return None if row is None else _state(row)


def save(conn: apsw.Connection, states: Sequence[QueueState]) -> None:
    for s in states:
        values = (s.queue, int(s.paused), s.by, s.reason, to_text(s.changed_at), s.version)
        conn.execute(upsert_statement, values)


def states(conn: apsw.Connection) -> list[QueueState]:
    return [_state(row) for row in conn.execute(all_statement)]


def paused(conn: apsw.Connection) -> list[str]:
    return [str(r[0]) for r in conn.execute(paused_statement)]


def reset(conn: apsw.Connection) -> None:
    """Empty the projection for a rebuild (a projection table, not the log: rows may go)."""
    create(conn)
    conn.execute(delete_statement)
