"""The ``jobs`` projection: one row per job, the fold of that job's events.

`evolve` is the only code that decides what a row holds: a pure function of the row before and
one stored event (its own timestamp and payload; never the clock). `JobsWriter` runs it for live
commands (one event at a time, inside the command's transaction) and for replay (the whole log),
so both paths produce the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import apsw
import msgspec

from ledger import events as ev
from ledger.events import StoredEvent
from ledger.model import JobStatus
from ledger.timeutil import to_db
from projections.base import UnfoldableEvent

COLUMNS = (
    "id",
    "chat_id",
    "thread_id",
    "user_id",
    "config",
    "status",
    "worker_id",
    "started_at",
    "completed_at",
    "result_summary",
    "result_status",
    "cost_cents",
    "duration_seconds",
    "error_message",
    "created_at",
    "updated_at",
    "version",
    "queue",
    "priority",
    "run_at",
    "attempts",
    "max_attempts",
    "lease_expires_at",
    "idempotency_key",
    "created_position",
    "lease_seconds",
)

_statuses = ", ".join(f"'{s.value}'" for s in JobStatus)

table_statement = f"""CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    chat_id INTEGER NOT NULL,
    thread_id INTEGER,
    user_id TEXT,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({_statuses})),
    worker_id TEXT,
    started_at TEXT,
    completed_at TEXT,
    result_summary TEXT,
    result_status TEXT,
    cost_cents REAL,
    duration_seconds INTEGER,
    error_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    run_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    lease_expires_at TEXT,
    idempotency_key TEXT,
    created_position INTEGER NOT NULL,
    lease_seconds REAL,
    CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
)"""

# Each index serves a query in jobs_queries; the partial ones stay as small as the live set, so
# their cost does not grow with the number of finished jobs.
index_statements = (
    # claim: best pending job in priority, then age order; queue and run_at filtered in-index
    "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs "
    "(priority DESC, created_at, created_position, queue, run_at) WHERE status = 'pending'",
    # rescue: running jobs whose lease has run out
    "CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_expires_at) WHERE status = 'running'",
    # listing by status, oldest first (pending_jobs, running_jobs, the CLI)
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at, created_position)",
    # a chat's jobs, newest first (jobs_for_chat, the summary, recent events)
    "CREATE INDEX IF NOT EXISTS jobs_chat ON jobs (chat_id, created_at, created_position)",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
)
drop_statements = ("DROP TABLE IF EXISTS jobs",)

select_row_statement = f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?"
insert_statement = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)
dump_statement = f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY id"

_config_encoder = msgspec.json.Encoder()

Row = dict[str, Any]


def evolve(row: Row | None, stored: StoredEvent) -> Row:
    """The columns that change when ``stored`` is applied to ``row`` (None: the job is new)."""
    event = stored.event
    if type(event) is ev.JobCreated:
        return _created(stored, event)
    if row is None:
        why = f"job {stored.job_id} has no created event before it"
        raise UnfoldableEvent(stored.position, ev.tag_of(event), why)
    changes: Row = {"version": stored.version, "updated_at": stored.recorded_at}
    rule = _RULES.get(type(event))
    if rule is not None:  # activity events only move version and updated_at
        changes.update(rule(row, event, stored.recorded_at))
    return changes


_RUNNING, _PENDING = JobStatus.RUNNING.value, JobStatus.PENDING.value
_COMPLETED, _FAILED, _CANCELLED = (
    JobStatus.COMPLETED.value,
    JobStatus.FAILED.value,
    JobStatus.CANCELLED.value,
)


def _claimed(row: Row, e: ev.JobClaimed, at: str) -> Row:
    return {
        "status": _RUNNING,
        "worker_id": e.worker_id,
        "started_at": at,
        "lease_expires_at": to_db(e.lease_expires_at),
        "attempts": row["attempts"] + 1,
        "lease_seconds": _seconds_between(at, e.lease_expires_at),
    }


def _heartbeat(row: Row, e: ev.HeartbeatRecorded, at: str) -> Row:
    return {} if e.lease_expires_at is None else {"lease_expires_at": to_db(e.lease_expires_at)}


def _ended(status: str, at: str, **more: Any) -> Row:
    """A final state: the job's lease ends with it (the worker is kept, as the one who ran it)."""
    return {"status": status, "completed_at": at, "lease_expires_at": None, **more}


def _requeued(**more: Any) -> Row:
    """Back to pending: no worker and no lease any more."""
    return {"status": _PENDING, "worker_id": None, "lease_expires_at": None, **more}


def _completed(row: Row, e: ev.JobCompleted, at: str) -> Row:
    return _ended(
        _COMPLETED,
        at,
        result_summary=e.summary,
        result_status=e.result_status,
        cost_cents=e.cost_cents,
        duration_seconds=e.duration_seconds,
        error_message=None,
    )


def _failed(row: Row, e: ev.JobFailed, at: str) -> Row:
    return _ended(_FAILED, at, error_message=e.error)


def _retry_scheduled(row: Row, e: ev.RetryScheduled, at: str) -> Row:
    return _requeued(error_message=e.error, run_at=to_db(e.run_at))


def _lease_expired(row: Row, e: ev.LeaseExpired, at: str) -> Row:
    if e.final:
        return _ended(_FAILED, at, error_message=lease_expired_message(row))
    return _requeued(error_message=lease_expired_message(row), run_at=at)


def _cancelled(row: Row, e: ev.JobCancelled, at: str) -> Row:
    return _ended(_CANCELLED, at)


def _released(row: Row, e: ev.JobReleased, at: str) -> Row:
    return _requeued(attempts=max(row["attempts"] - 1, 0))


# One rule per lifecycle event type; a type missing here changes only version and updated_at.
_RULES: dict[type, Any] = {
    ev.JobClaimed: _claimed,
    ev.HeartbeatRecorded: _heartbeat,
    ev.JobCompleted: _completed,
    ev.JobFailed: _failed,
    ev.RetryScheduled: _retry_scheduled,
    ev.LeaseExpired: _lease_expired,
    ev.JobCancelled: _cancelled,
    ev.JobReleased: _released,
}


def _seconds_between(at: str, until: datetime) -> float:
    return (until - datetime.fromisoformat(at)).total_seconds()


def lease_expired_message(row: Row) -> str:
    return (
        f"lease expired: worker {row['worker_id']!r} stopped heartbeating "
        f"(attempt {row['attempts']} of {row['max_attempts']})"
    )


def _created(stored: StoredEvent, e: ev.JobCreated) -> Row:
    at = stored.recorded_at
    return {
        "id": stored.job_id,
        "chat_id": e.chat_id,
        "thread_id": e.thread_id,
        "user_id": e.user_id,
        "config": _config_encoder.encode(e.config).decode(),
        "status": JobStatus.PENDING.value,
        "worker_id": None,
        "started_at": None,
        "completed_at": None,
        "result_summary": None,
        "result_status": None,
        "cost_cents": None,
        "duration_seconds": None,
        "error_message": None,
        "created_at": at,
        "updated_at": at,
        "version": stored.version,
        "queue": e.queue,
        "priority": e.priority,
        "run_at": at if e.run_at is None else to_db(e.run_at),
        "attempts": 0,
        "max_attempts": e.max_attempts,
        "lease_expires_at": None,
        "idempotency_key": e.idempotency_key,
        "created_position": stored.position,
        "lease_seconds": None,
    }


class JobsWriter:
    """A write-back cache of job rows: `apply` folds events in memory, `flush` writes each
    touched row once (INSERT for new jobs, UPDATE of the changed columns otherwise)."""

    def __init__(self, conn: apsw.Connection, *, max_cached: int = 100_000) -> None:
        self._conn = conn
        self._rows: dict[str, Row | None] = {}
        self._new: dict[str, None] = {}  # insertion-ordered: same rowids on every replay
        self._dirty: dict[str, Row] = {}  # job -> changed columns (keys)
        self._max_cached = max_cached

    def load(self, job_id: str) -> Row | None:
        """The job's current row (with this command's changes so far), or None."""
        if job_id in self._rows:
            return self._rows[job_id]
        values = self._conn.execute(select_row_statement, (job_id,)).fetchone()
        row = None if values is None else dict(zip(COLUMNS, values, strict=True))
        self._rows[job_id] = row
        return row

    def reset(self) -> None:
        """Forget everything cached (after a rolled-back command)."""
        if self._rows:
            self._rows.clear()
            self._new.clear()
            self._dirty.clear()

    def mark_absent(self, job_id: str) -> None:
        """Tell the cache a job has no row yet (its id was just minted), saving a lookup."""
        self._rows.setdefault(job_id, None)

    def apply(self, stored: StoredEvent) -> None:
        job_id = stored.job_id
        # A creation has no row before it (a duplicate would fail the INSERT's primary key), so
        # replay does not look up each of its jobs in the table it is rebuilding.
        row = None if type(stored.event) is ev.JobCreated else self.load(job_id)
        changes = evolve(row, stored)
        if row is None:
            self._rows[job_id] = changes
            self._new[job_id] = None
        else:
            row.update(changes)
            if job_id not in self._new:
                dirty = self._dirty.get(job_id)
                if dirty is None:
                    self._dirty[job_id] = changes  # only its keys matter: values come from row
                else:
                    dirty.update(changes)
        if len(self._rows) >= self._max_cached:
            self.flush()

    def flush(self) -> None:
        execute = self._conn.execute
        if self._new:
            self._conn.executemany(
                insert_statement,
                [tuple(self._rows[j].values()) for j in self._new],  # type: ignore[union-attr]
            )
        for job_id, columns in self._dirty.items():
            row = self._rows[job_id]
            assert row is not None
            names = tuple(columns)
            execute(_update_statement(names), (*[row[c] for c in names], job_id))
        self._rows.clear()
        self._new.clear()
        self._dirty.clear()


_update_cache: dict[tuple[str, ...], str] = {}


def _update_statement(columns: tuple[str, ...]) -> str:
    statement = _update_cache.get(columns)
    if statement is None:
        assignments = ", ".join(f"{c} = ?" for c in columns)
        statement = _update_cache[columns] = f"UPDATE jobs SET {assignments} WHERE id = ?"
    return statement


class JobsProjection:
    name: str = "jobs"
    schema_version: int = 1
    tables: tuple[str, ...] = ("jobs",)

    def create_schema(self, conn: apsw.Connection, *, indexes: bool = True) -> None:
        """The table, and (unless a bulk load comes first: it is faster to index afterwards)
        its indexes."""
        conn.execute(table_statement)
        if indexes:
            self.create_indexes(conn)

    def create_indexes(self, conn: apsw.Connection) -> None:
        for statement in index_statements:
            conn.execute(statement)

    def drop_schema(self, conn: apsw.Connection) -> None:
        for statement in drop_statements:
            conn.execute(statement)

    def writer(self, conn: apsw.Connection) -> JobsWriter:
        return JobsWriter(conn)

    def dump(self, conn: apsw.Connection) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        for values in conn.execute(dump_statement):
            yield "jobs", values[0], dict(zip(COLUMNS, values, strict=True))
