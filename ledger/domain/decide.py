"""The rules of the job state machine: a job's state and a command in, events or an error out.

Pure functions: they read the job's `JobState`, the command's arguments and the time the command
runs at, and return the events to append. They never touch a database or read a clock, so every
rule about what a command may do lives here, checked against the one table of legal transitions
(`transitions.TRANSITIONS`).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from ..errors import InvalidArgument, LeaseLost
from . import events as ev
from .backoff import RetryPolicy
from .model import EventType, JobStatus
from .state import JobState
from .transitions import FINAL, require

_RUNNING = JobStatus.RUNNING


def _check_holder(
    state: JobState,
    worker_id: str | None,
    command: str,
    verb: str = "",
    attempt: int | None = None,
) -> None:
    """A worker that names itself must still hold the job (`LeaseLost` otherwise: it was
    cancelled, finished, or its lease expired and another worker took it); with ``attempt``
    too, it must hold that very attempt (the same worker may have claimed the job again since:
    its old attempt is over). Then the command must be legal in the job's state."""
    if worker_id is not None and (
        state.status is not _RUNNING
        or state.worker_id != worker_id
        or (attempt is not None and state.attempts != attempt)
    ):
        raise LeaseLost(state.id, worker_id, state.worker_id, state.status.value)
    require(state.id, state.status, command, verb=verb)


def claim(state: JobState, worker_id: str, lease_until: datetime) -> list[ev.Event]:
    require(state.id, state.status, "claim")
    return [ev.JobClaimed(worker_id=worker_id, lease_expires_at=lease_until)]


def heartbeat(
    state: JobState,
    worker_id: str | None,
    lease_until: datetime | None,
    attempt: int | None = None,
) -> list[ev.Event]:
    _check_holder(state, worker_id, "heartbeat", attempt=attempt)
    return [ev.HeartbeatRecorded(worker_id=worker_id, lease_expires_at=lease_until)]


def complete(
    state: JobState,
    worker_id: str | None,
    summary: str,
    result_status: str,
    cost_cents: float,
    duration_seconds: int | None,
    now: datetime,
    attempt: int | None = None,
) -> list[ev.Event]:
    """``duration_seconds`` None: the whole seconds since the job was claimed."""
    _check_holder(state, worker_id, "complete", attempt=attempt)
    if duration_seconds is None:
        started = state.started_at or now
        duration_seconds = max(0, round((now - started).total_seconds()))
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
    state: JobState,
    worker_id: str | None,
    error: str,
    retry: bool,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
    error_type: str | None = None,
    attempt: int | None = None,
) -> list[ev.Event]:
    """With attempts left (and ``retry``) the job is retried after the policy's backoff (the
    chosen time goes into the event, so replay never re-rolls it); else it fails for good."""
    _check_holder(state, worker_id, "fail", attempt=attempt)
    if retry and state.attempts < state.max_attempts:
        run_at = now + policy.delay(state.attempts, rng)
        return [
            ev.RetryScheduled(
                error=error, run_at=run_at, worker_id=worker_id, error_type=error_type
            )
        ]
    return [ev.JobFailed(error=error, worker_id=worker_id, error_type=error_type)]


def cancel(state: JobState, reason: str | None) -> list[ev.Event]:
    """Cancelling a finished job is not an error: it answers False (no events), as the original."""
    if state.status in FINAL:
        return []
    require(state.id, state.status, "cancel")
    return [ev.JobCancelled(reason=reason)]


def log(
    state: JobState,
    event_type: EventType,
    payload: Any,
    worker_id: str | None = None,
    attempt: int | None = None,
) -> list[ev.Event]:
    """Activity on a pending or running job. A worker that names itself is fenced like heartbeat:
    it must still hold the job (`LeaseLost` otherwise), so it cannot write into an attempt that
    another worker now holds. The event records the writer and the running attempt."""
    verb = f"log {event_type.value!r} to"
    if worker_id is not None:
        _check_holder(state, worker_id, "log", verb=verb, attempt=attempt)
    else:
        require(state.id, state.status, "log", verb=verb)
    attempt = state.attempts if state.status is _RUNNING else None
    return [ev.ACTIVITY_EVENTS[event_type](payload=payload, worker_id=worker_id, attempt=attempt)]


def expire(state: JobState) -> list[ev.Event]:
    """An expired lease: retried when attempts are left, else the job fails."""
    require(state.id, state.status, "expire")
    final = state.attempts >= state.max_attempts
    return [ev.LeaseExpired(worker_id=state.worker_id, final=final)]


def release(
    state: JobState, worker_id: str, reason: str | None, attempt: int | None = None
) -> list[ev.Event]:
    _check_holder(state, worker_id, "release", attempt=attempt)
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
