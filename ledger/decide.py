"""The rules of the job state machine: current state and a command in, events or an error out.

Pure functions: they read the job's projection row (a dict), the command's arguments and the
time the command runs at, and return the events to append. They never touch the database, so
every transition rule lives here and nowhere else.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from . import events as ev
from .backoff import RetryPolicy
from .errors import InvalidArgument, InvalidTransition, JobNotFound, LeaseLost
from .model import FINAL_STATUSES, EventType, JobStatus

Row = dict[str, Any]
_RUNNING = JobStatus.RUNNING.value


def require(row: Row | None, job_id: str) -> Row:
    if row is None:
        raise JobNotFound(job_id)
    return row


def _check_holder(row: Row, worker_id: str | None, command: str) -> None:
    """A worker that names itself must still hold the job; otherwise the job must be running."""
    if worker_id is not None and (row["status"] != _RUNNING or row["worker_id"] != worker_id):
        raise LeaseLost(row["id"], worker_id, row["worker_id"], row["status"])
    if row["status"] != _RUNNING:
        raise InvalidTransition(row["id"], row["status"], command, "only a running job can be")


def claim(row: Row, worker_id: str, lease_until: datetime) -> list[ev.Event]:
    if row["status"] != JobStatus.PENDING.value:
        raise InvalidTransition(row["id"], row["status"], "claim")
    return [ev.JobClaimed(worker_id=worker_id, lease_expires_at=lease_until)]


def heartbeat(row: Row, worker_id: str | None, lease_until: datetime | None) -> list[ev.Event]:
    _check_holder(row, worker_id, "heartbeat")
    return [ev.HeartbeatRecorded(worker_id=worker_id, lease_expires_at=lease_until)]


def complete(
    row: Row,
    worker_id: str | None,
    summary: str,
    result_status: str,
    cost_cents: float,
    duration_seconds: int,
) -> list[ev.Event]:
    _check_holder(row, worker_id, "complete")
    return [
        ev.JobCompleted(
            summary=summary,
            result_status=result_status,
            cost_cents=cost_cents,
            duration_seconds=duration_seconds,
            worker_id=worker_id,
        )
    ]


def fail(
    row: Row,
    worker_id: str | None,
    error: str,
    retry: bool,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
    error_type: str | None = None,
) -> list[ev.Event]:
    _check_holder(row, worker_id, "fail")
    if retry and row["attempts"] < row["max_attempts"]:
        run_at = now + policy.delay(row["attempts"], rng)
        return [
            ev.RetryScheduled(
                error=error, run_at=run_at, worker_id=worker_id, error_type=error_type
            )
        ]
    return [ev.JobFailed(error=error, worker_id=worker_id, error_type=error_type)]


def cancel(row: Row, reason: str | None) -> list[ev.Event]:
    """Cancelling a finished job is not an error: it answers False (no events), as the original."""
    if row["status"] in FINAL_STATUSES:
        return []
    return [ev.JobCancelled(reason=reason)]


def log(
    row: Row, event_type: EventType, payload: Any, worker_id: str | None = None
) -> list[ev.Event]:
    """Activity on a pending or running job. A worker that names itself is fenced like heartbeat:
    it must still hold the job (`LeaseLost` otherwise), so it cannot write into an attempt that
    another worker now holds. The event records the writer and the running attempt."""
    if worker_id is not None:
        _check_holder(row, worker_id, f"log {event_type.value!r} to")
    elif row["status"] in FINAL_STATUSES:
        raise InvalidTransition(
            row["id"],
            row["status"],
            f"log {event_type.value!r} to",
            "activity can only be logged to a pending or running job",
        )
    attempt = row["attempts"] if row["status"] == _RUNNING else None
    return [ev.ACTIVITY_EVENTS[event_type](payload=payload, worker_id=worker_id, attempt=attempt)]


def rescue(row: Row) -> list[ev.Event]:
    """An expired lease: retry when attempts are left, else the job fails."""
    final = row["attempts"] >= row["max_attempts"]
    return [ev.LeaseExpired(worker_id=row["worker_id"], final=final)]


def release(row: Row, worker_id: str, reason: str | None) -> list[ev.Event]:
    _check_holder(row, worker_id, "release")
    return [ev.JobReleased(worker_id=worker_id, reason=reason)]


def lease_until(now: datetime, lease_seconds: float) -> datetime:
    """When a lease taken at ``now`` runs out. The callers' checks (`timeutil.LATEST`,
    `timeutil.MAX_SECONDS`) keep this inside the datetime range; should a lease still end past
    it, the caller gets `InvalidArgument`, not an OverflowError from inside a transaction."""
    try:
        return now + timedelta(seconds=lease_seconds)
    except OverflowError:
        raise InvalidArgument(
            "lease", lease_seconds, f"would end past the latest time a datetime holds ({now})"
        ) from None
