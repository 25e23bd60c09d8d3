"""The ``queues`` table (the queues projection, `projections.queues`) as PostgreSQL holds it.

The table itself is in ``schema.sql``; the claim query (`jobs_table`) skips the jobs of every
queue whose row says paused, inside the claim's own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projections.queues import QueueState

Conn = Any  # psycopg.Connection

_COLUMNS = "queue, paused, by, reason, changed_at, version"
select_statement = f"SELECT {_COLUMNS} FROM queues WHERE queue = %s"
lock_statement = select_statement + " FOR UPDATE"
lock_nowait_statement = lock_statement + " NOWAIT"
all_statement = f'SELECT {_COLUMNS} FROM queues ORDER BY queue COLLATE "C"'
upsert_statement = (
    f"INSERT INTO queues ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (queue) "
    "DO UPDATE SET paused = EXCLUDED.paused, by = EXCLUDED.by, reason = EXCLUDED.reason, "
    "changed_at = EXCLUDED.changed_at, version = EXCLUDED.version"
)
paused_statement = 'SELECT queue FROM queues WHERE paused ORDER BY queue COLLATE "C"'
delete_statement = "DELETE FROM queues"


def _state(row: Sequence[Any]) -> QueueState:
    queue, paused, by, reason, changed_at, version = row
    return QueueState(
        queue=queue,
        paused=bool(paused),
        by=by,
        reason=reason,
        changed_at=changed_at,
        version=int(version),
    )


def load(conn: Conn, queue: str, *, lock: bool = False, nowait: bool = False) -> QueueState | None:
    """The row (``lock``: ``FOR UPDATE``; with ``nowait``, `LockNotAvailable` at once when
    another transaction holds it)."""
    statement = select_statement
    if lock:
        statement = lock_nowait_statement if nowait else lock_statement
    row = conn.execute(statement, (queue,)).fetchone()
    return None if row is None else _state(row)


def save(conn: Conn, states: Sequence[QueueState]) -> None:
    for s in states:
        conn.execute(upsert_statement, (s.queue, s.paused, s.by, s.reason, s.changed_at, s.version))


def states(conn: Conn) -> list[QueueState]:
    return [_state(row) for row in conn.execute(all_statement)]


def paused(conn: Conn) -> list[str]:
    return [str(r[0]) for r in conn.execute(paused_statement)]


def reset(conn: Conn) -> None:
    """Empty the projection for a rebuild (a projection table, not the log)."""
    conn.execute(delete_statement)
