"""The ``jobs`` table (the jobs projection) as PostgreSQL holds it, and every query on it.

One row per `JobState`, its columns in the state's field order, typed: times ``timestamptz``
(loaded as aware UTC datetimes), integers ``bigint``, the config its JSON text. `row_values` is
the one place a state becomes a row and `to_state` the one place a row becomes a state, so what
commands write, what replay writes and what verify compares are the same values. The table
itself, its indexes and its NOTIFY triggers are in ``schema.sql``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from ...domain.model import JobStatus
from ...domain.state import FIELDS, JobState
from ...errors import CorruptProjection
from ..protocol import JobFilter

Conn = Any  # psycopg.Connection

COLUMNS: tuple[str, ...] = tuple("config" if f == "config_json" else f for f in FIELDS)
_STATUS = {s.value: s for s in JobStatus}
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
select_row_statement = f"{_SELECT} WHERE id = %s"
# A command deciding on a job holds its row until it commits: two writers deciding on one job
# take turns, and the second decides on what the first wrote.
lock_row_statement = select_row_statement + " FOR UPDATE"
insert_statement = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
)
dump_statement = f"{_SELECT} ORDER BY id"
# COLLATE "C": prefix ranges compare code points, as SQLite's text does.
prefix_statement = (
    'SELECT id FROM jobs WHERE id COLLATE "C" >= %s AND id COLLATE "C" < %s '
    'ORDER BY id COLLATE "C" LIMIT %s'
)
idempotency_statement = "SELECT id FROM jobs WHERE idempotency_key = %s"
# SKIP LOCKED: a claimer passes over jobs another claimer holds instead of waiting for it, so
# claimers never block each other and never take the same job.
_CLAIM = (
    "SELECT id FROM jobs WHERE status = 'pending' AND run_at <= %s {queues}"
    "ORDER BY priority DESC, created_at, created_position LIMIT 1 FOR UPDATE SKIP LOCKED"
)
claim_any_statement = _CLAIM.format(queues="")
claim_queues_statement = _CLAIM.format(queues="AND queue = ANY(%s) ")
# Expired leases are locked as they are found (so the rescue holds every row before it appends:
# no deadlock with a command that holds the counter), skipping those a claim holds right now.
_EXPIRED = (
    "SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at <= %s "
    "ORDER BY lease_expires_at, created_position {limit}FOR UPDATE SKIP LOCKED"
)
expired_statement = _EXPIRED.format(limit="")
expired_limit_statement = _EXPIRED.format(limit="LIMIT %s ")
counts_statement = (
    'SELECT status, queue, count(*) FROM jobs GROUP BY status, queue ORDER BY status COLLATE "C", '
    'queue COLLATE "C"'
)
finished_since_statement = (
    "SELECT status, count(*) FROM jobs WHERE completed_at >= %s GROUP BY status"
)
durations_statement = (
    "SELECT duration_seconds FROM jobs WHERE status = 'completed' AND duration_seconds IS NOT NULL "
    "ORDER BY duration_seconds"
)
cost_statement = "SELECT coalesce(sum(cost_cents), 0.0) FROM jobs"
exists_statement = "SELECT to_regclass('jobs') IS NOT NULL"
truncate_statement = "TRUNCATE jobs"

# NULLS FIRST/LAST as SQLite orders them (NULL sorts lowest there).
_ORDERS = {
    "newest": "created_at DESC, created_position DESC",
    "oldest": "created_at, created_position",
    "started": "started_at NULLS FIRST, created_position",
    "finished": "completed_at DESC NULLS LAST, created_position DESC",
}


def row_values(state: JobState) -> tuple[Any, ...]:
    """The row of ``state``, in `COLUMNS` order (the one place a state becomes a row)."""
    return (
        state.id,
        state.chat_id,
        state.thread_id,
        state.user_id,
        state.config_json,
        state.status.value,
        state.worker_id,
        state.started_at,
        state.completed_at,
        state.result_summary,
        state.result_status,
        state.cost_cents,
        state.duration_seconds,
        state.error_message,
        state.created_at,
        state.updated_at,
        state.version,
        state.queue,
        state.priority,
        state.run_at,
        state.attempts,
        state.max_attempts,
        state.lease_expires_at,
        state.idempotency_key,
        state.created_position,
        state.lease_seconds,
    )


def column_value(state: JobState, field: str) -> Any:
    value = getattr(state, field)
    return value.value if field == "status" else value


def to_state(values: Sequence[Any]) -> JobState:
    """The state a row holds (the one place a row becomes a state)."""
    status = values[5]
    known = _STATUS.get(status)
    if known is None:
        raise CorruptProjection("jobs", values[0], f"its status {status!r} is not a job status")
    fields = dict(zip(FIELDS, values, strict=True))
    fields["status"] = known
    return JobState(**fields)


_update_cache: dict[tuple[str, ...], str] = {}


def _update_statement(fields: tuple[str, ...]) -> str:
    statement = _update_cache.get(fields)
    if statement is None:
        assignments = ", ".join(f"{'config' if f == 'config_json' else f} = %s" for f in fields)
        statement = _update_cache[fields] = f"UPDATE jobs SET {assignments} WHERE id = %s"
    return statement


def save(
    conn: Conn, new: Sequence[JobState], changed: Iterable[tuple[JobState, tuple[str, ...]]]
) -> None:
    """INSERT the new jobs in creation order and UPDATE only the changed columns of the others."""
    if len(new) == 1:
        conn.execute(insert_statement, row_values(new[0]))
    elif new:
        with conn.cursor() as cursor:
            cursor.executemany(insert_statement, [row_values(s) for s in new])
    for state, fields in changed:
        conn.execute(
            _update_statement(fields), (*[column_value(state, f) for f in fields], state.id)
        )


def load(conn: Conn, job_id: str, *, lock: bool = False) -> JobState | None:
    statement = lock_row_statement if lock else select_row_statement
    values = conn.execute(statement, (job_id,)).fetchone()
    return None if values is None else to_state(values)


def _filtered(head: str, where: JobFilter, *, order: bool) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if where.statuses is not None:
        clauses.append("status = ANY(%s)")
        params.append([JobStatus(s).value for s in where.statuses])
    if where.chat_id is not None:
        clauses.append("chat_id = %s")
        params.append(where.chat_id)
    if where.queue is not None:
        clauses.append("queue = %s")
        params.append(where.queue)
    statement = head + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
    if order:
        statement += f" ORDER BY {_ORDERS[where.order]}"
        if where.limit is not None:
            statement += " LIMIT %s"
            params.append(where.limit)
    return statement, params


def select(conn: Conn, where: JobFilter) -> list[JobState]:
    statement, params = _filtered(_SELECT, where, order=True)
    return [to_state(values) for values in conn.execute(statement, params)]


def count(conn: Conn, where: JobFilter) -> int:
    statement, params = _filtered("SELECT count(*) FROM jobs", where, order=False)
    return int(conn.execute(statement, params).fetchone()[0])


def prefix(conn: Conn, text: str, limit: int) -> list[str]:
    rows = conn.execute(prefix_statement, (text, text + "\U0010ffff", limit))
    return [r[0] for r in rows]


def dump(conn: Conn) -> Iterator[tuple[str, dict[str, Any]]]:
    for values in conn.execute(dump_statement):
        yield values[0], dict(zip(COLUMNS, values, strict=True))


def stored_form(state: JobState) -> dict[str, Any]:
    return dict(zip(COLUMNS, row_values(state), strict=True))


def exists(conn: Conn) -> bool:
    return bool(conn.execute(exists_statement).fetchone()[0])


def claimable(conn: Conn, now: datetime, queues: Sequence[str] | None) -> str | None:
    if queues is None:
        row = conn.execute(claim_any_statement, (now,)).fetchone()
    else:
        row = conn.execute(claim_queues_statement, (now, list(queues))).fetchone()
    return None if row is None else str(row[0])


def expired(conn: Conn, now: datetime, limit: int | None) -> list[str]:
    if limit is None:
        rows = conn.execute(expired_statement, (now,)).fetchall()
    else:
        rows = conn.execute(expired_limit_statement, (now, limit)).fetchall()
    return [str(r[0]) for r in rows]


def with_key(conn: Conn, key: str) -> str | None:
    row = conn.execute(idempotency_statement, (key,)).fetchone()
    return None if row is None else str(row[0])


def counts(conn: Conn) -> list[tuple[str, str, int]]:
    return [(str(s), str(q), int(n)) for s, q, n in conn.execute(counts_statement)]


def finished_since(conn: Conn, since: datetime) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute(finished_since_statement, (since,))}


def durations(conn: Conn) -> list[int]:
    return [int(r[0]) for r in conn.execute(durations_statement)]


def total_cost(conn: Conn) -> float:
    return float(conn.execute(cost_statement).fetchone()[0])
