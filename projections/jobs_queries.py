"""Read queries on the ``jobs`` projection, and the conversion of a row to a `Job`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import apsw
import msgspec

from ledger.model import Job, JobStatus

from .jobs import COLUMNS

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
_ORDER_CLAIM = "ORDER BY priority DESC, created_at, created_position"

get_statement = f"{_SELECT} WHERE id = ?"
prefix_statement = "SELECT id FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT 2"
pending_statement = (
    f"{_SELECT} WHERE status = 'pending' ORDER BY created_at, created_position LIMIT ?"
)
running_statement = f"{_SELECT} WHERE status = 'running' ORDER BY started_at, created_position"
for_chat_statement = (
    f"{_SELECT} WHERE chat_id = ? ORDER BY created_at DESC, created_position DESC LIMIT ?"
)
running_for_chat_statement = (
    f"{_SELECT} WHERE chat_id = ? AND status = 'running' ORDER BY started_at, created_position"
)
recent_finished_for_chat_statement = (
    f"{_SELECT} WHERE chat_id = ? AND status IN ('completed', 'failed') "
    "ORDER BY completed_at DESC, created_position DESC LIMIT ?"
)
# INDEXED BY: without ANALYZE statistics the planner prefers jobs_status and sorts every pending
# job on each claim; the partial index yields them already in claim order (and SQLite refuses
# the query outright if the index ever stops fitting it, instead of silently scanning).
claim_any_statement = (
    "SELECT id FROM jobs INDEXED BY jobs_claim WHERE status = 'pending' AND run_at <= ? "
    f"{_ORDER_CLAIM} LIMIT 1"
)
expired_statement = (
    "SELECT id FROM jobs INDEXED BY jobs_lease WHERE status = 'running' AND lease_expires_at <= ? "
    "ORDER BY lease_expires_at"
)
# A literal LIMIT: with a bound one SQLite runs this (every claim's first query) twice as slowly.
expired_batch_statement = expired_statement + " LIMIT 100"
idempotency_statement = "SELECT id FROM jobs WHERE idempotency_key = ?"


def claim_statement(queue_count: int | None) -> str:
    if queue_count is None:
        return claim_any_statement
    marks = ", ".join("?" * queue_count)
    return (
        "SELECT id FROM jobs INDEXED BY jobs_claim WHERE status = 'pending' AND run_at <= ? "
        f"AND queue IN ({marks}) "
        f"{_ORDER_CLAIM} LIMIT 1"
    )


_config_decoder = msgspec.json.Decoder()
_fromiso = datetime.fromisoformat
_STATUS = {s.value: s for s in JobStatus}  # a dict lookup is 5x cheaper than JobStatus(text)


def row_to_job(values: Sequence[Any]) -> Job:
    (
        job_id,
        chat_id,
        thread_id,
        user_id,
        config,
        status,
        worker_id,
        started_at,
        completed_at,
        result_summary,
        result_status,
        cost_cents,
        duration_seconds,
        error_message,
        created_at,
        updated_at,
        version,
        queue,
        priority,
        run_at,
        attempts,
        max_attempts,
        lease_expires_at,
        idempotency_key,
        _position,
        _lease_seconds,
    ) = values
    return Job(
        id=job_id,
        chat_id=chat_id,
        thread_id=thread_id,
        user_id=user_id,
        config=_config_decoder.decode(config),
        status=_STATUS[status],
        worker_id=worker_id,
        started_at=None if started_at is None else _fromiso(started_at),
        completed_at=None if completed_at is None else _fromiso(completed_at),
        result_summary=result_summary,
        result_status=result_status,
        cost_cents=cost_cents,
        duration_seconds=duration_seconds,
        error_message=error_message,
        created_at=_fromiso(created_at),
        updated_at=_fromiso(updated_at),
        version=version,
        queue=queue,
        priority=priority,
        run_at=_fromiso(run_at),
        attempts=attempts,
        max_attempts=max_attempts,
        lease_expires_at=None if lease_expires_at is None else _fromiso(lease_expires_at),
        idempotency_key=idempotency_key,
    )


def row_dict_to_job(row: dict[str, Any]) -> Job:
    return row_to_job(tuple(row[c] for c in COLUMNS))


def fetch_jobs(conn: apsw.Connection, statement: str, params: Iterable[Any] = ()) -> list[Job]:
    return [row_to_job(values) for values in conn.execute(statement, tuple(params))]


def fetch_job(conn: apsw.Connection, job_id: str) -> Job | None:
    values = conn.execute(get_statement, (job_id,)).fetchone()
    return None if values is None else row_to_job(values)


def find_by_prefix(conn: apsw.Connection, prefix: str) -> list[str]:
    """Up to two job ids starting with ``prefix`` (two means it is ambiguous)."""
    return [r[0] for r in conn.execute(prefix_statement, (prefix, prefix + "\U0010ffff"))]


def list_statement(status: bool, chat: bool, queue: bool) -> str:
    """Newest first, with the filters the CLI's ``jobs`` offers."""
    where = [
        c for c, on in (("status = ?", status), ("chat_id = ?", chat), ("queue = ?", queue)) if on
    ]
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"{_SELECT}{clause} ORDER BY created_at DESC, created_position DESC LIMIT ?"


def count_statement(status: bool, queue: bool) -> str:
    where = [c for c, on in (("status = ?", status), ("queue = ?", queue)) if on]
    return "SELECT count(*) FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")


stats_counts_statement = (
    "SELECT status, queue, count(*) FROM jobs GROUP BY status, queue ORDER BY 1, 2"
)
stats_finished_since_statement = (
    "SELECT status, count(*) FROM jobs WHERE completed_at >= ? GROUP BY status"
)
stats_durations_statement = (
    "SELECT duration_seconds FROM jobs WHERE status = 'completed' AND duration_seconds IS NOT NULL "
    "ORDER BY duration_seconds"
)
stats_cost_statement = "SELECT coalesce(sum(cost_cents), 0.0) FROM jobs"
stats_oldest_pending_statement = (
    f"{_SELECT} WHERE status = 'pending' ORDER BY created_at, created_position LIMIT 1"
)
