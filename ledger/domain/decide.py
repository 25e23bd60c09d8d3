"""The rules of the job state machine: a job's state and a command in, events or an error out.

Pure functions: they read the job's `JobState`, the command's arguments and the time the command
runs at, and return the events to append. They never touch a database or read a clock, so every
rule about what a command may do lives here, checked against the one table of legal transitions
(`transitions.TRANSITIONS`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ..errors import BudgetExceeded, InvalidArgument, InvalidTransition, LeaseLost
from . import events as ev
from .backoff import RetryPolicy
from .model import EventType, JobStatus
from .state import JobState
from .transitions import FINAL, TRANSITIONS, require

_RUNNING = JobStatus.RUNNING
_LOGGABLE = TRANSITIONS["log"].sources


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


def claim(
    state: JobState,
    worker_id: str,
    lease_until: datetime,
    holder: tuple[str, str, int, int] | None = None,
) -> list[ev.Event]:
    """``holder``: (host, boot id, pid, process start) of the claiming process, when known."""
    require(state.id, state.status, "claim")
    if holder is None:
        return [ev.JobClaimed(worker_id=worker_id, lease_expires_at=lease_until)]
    host, boot_id, pid, start = holder
    return [
        ev.JobClaimed(
            worker_id=worker_id,
            lease_expires_at=lease_until,
            host=host,
            boot_id=boot_id,
            pid=pid,
            process_start=start,
        )
    ]


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
    result: Any = None,
) -> list[ev.Event]:
    """``duration_seconds`` None: the whole seconds since the job was claimed. ``result``: the
    handler's value, already checked and encoded (`commands.Complete`)."""
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
            result=result,
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


def cancel(state: JobState, reason: str | None, by: str | None = None) -> list[ev.Event]:
    """Cancelling a finished job is not an error: it answers False (no events), as the original."""
    if state.status in FINAL:
        return []
    require(state.id, state.status, "cancel")
    return [ev.JobCancelled(reason=reason, by=by)]


def spawn(parent: JobState, chat_id: int) -> None:
    """A child job may be created under ``parent`` (it raises otherwise): a finished agent
    spawns nothing, and a child belongs to its parent's chat."""
    if parent.status in FINAL:
        raise InvalidTransition(
            parent.id,
            parent.status.value,
            "spawn a child of",
            "only a pending or running job can have children",
        )
    if chat_id != parent.chat_id:
        raise InvalidArgument(
            "chat_id",
            chat_id,
            f"a child belongs to its parent's chat: parent {parent.id} is in chat "
            f"{parent.chat_id}; pass that chat_id",
        )


def cancel_below(state: JobState, ancestor_id: str) -> list[ev.Event]:
    """A pending or running descendant of a cancelled job: cancelled with it."""
    require(state.id, state.status, "cancel")
    reason = f"cancelled with its ancestor {ancestor_id}"
    return [ev.JobCancelled(reason=reason, cause=ancestor_id)]


def reservation(state: JobState) -> float:
    """What a job may still spend of its ``max_cost_cents`` (0 without one)."""
    if state.max_cost_cents is None:
        return 0.0
    return max(state.max_cost_cents - (state.cost_cents or 0.0), 0.0)


def blocked_reason(state: JobState, limit_cents: float | None, used_cents: float) -> str | None:
    """Why a pending job is not handed out by a claim because of its chat's budget (None: it
    is not held back by it); the same rule as the backends' claim queries."""
    if state.status is not JobStatus.PENDING or limit_cents is None:
        return None
    left = max(limit_cents - used_cents, 0.0)
    if state.max_cost_cents is None:
        if used_cents < limit_cents:
            return None
        return (
            f"chat {state.chat_id}'s budget is spent ({used_cents:g} of {limit_cents:g} cents "
            "spent or reserved); raise it with `ledger budget` or wait for running jobs to end"
        )
    need = reservation(state)
    if used_cents + need <= limit_cents:
        return None
    return (
        f"waiting for budget: its max_cost_cents reservation of {need:g} does not fit in the "
        f"{left:g} cents chat {state.chat_id} has left (limit {limit_cents:g}); raise it with "
        "`ledger budget` or wait for running jobs to end"
    )


def charge(
    state: JobState,
    cents: float,
    detail: Any,
    worker_id: str | None,
    attempt: int | None,
    limit_cents: float | None,
    used_cents: float,
) -> list[ev.Event]:
    """Spending on a running job. Refused (`BudgetExceeded`) past the job's own maximum, or
    when the part beyond the job's reservation does not fit in what its chat has left
    (``used_cents``: the chat's spent + reserved, this job's reservation included)."""
    _check_holder(state, worker_id, "charge", attempt=attempt)
    spent = state.cost_cents or 0.0
    if state.max_cost_cents is not None and spent + cents > state.max_cost_cents:
        raise BudgetExceeded(
            state.id,
            cents,
            f"it has spent {spent:g} of its max_cost_cents {state.max_cost_cents:g}",
        )
    beyond = cents - min(cents, reservation(state))
    if limit_cents is not None and beyond > 0 and used_cents + beyond > limit_cents:
        raise BudgetExceeded(
            state.id,
            cents,
            f"chat {state.chat_id} has {max(limit_cents - used_cents, 0.0):g} of its "
            f"{limit_cents:g} cents left",
        )
    return [ev.JobCharged(cents=cents, detail=detail, worker_id=worker_id, attempt=state.attempts)]


def log(
    state: JobState,
    activities: Sequence[tuple[EventType, Any]],
    worker_id: str | None = None,
    attempt: int | None = None,
) -> list[ev.Event]:
    """Activity on a pending or running job: one event per ``(type, payload)`` pair, in order
    (`log_event` gives one, `log_events` many; all are checked against the same state, so a
    batch is refused or written whole). A worker that names itself is fenced like heartbeat: it
    must still hold the job (`LeaseLost` otherwise), so it cannot write into an attempt that
    another worker now holds. Each event records the writer and the running attempt."""
    status = state.status
    if status not in _LOGGABLE or (
        worker_id is not None
        and (
            status is not _RUNNING
            or state.worker_id != worker_id
            or (attempt is not None and state.attempts != attempt)
        )
    ):  # refused: the checks below raise, naming the event (its words are built only here)
        verb = f"log {activities[0][0].value!r} to" if activities else "log events to"
        if worker_id is not None:
            _check_holder(state, worker_id, "log", verb=verb, attempt=attempt)
        require(state.id, status, "log", verb=verb)
    attempt = state.attempts if status is _RUNNING else None
    made = ev.ACTIVITY_EVENTS
    return [
        made[event_type](payload=payload, worker_id=worker_id, attempt=attempt)
        for event_type, payload in activities
    ]


def step(state: JobState, name: str, result: Any, worker_id: str, attempt: int) -> list[ev.Event]:
    """A durable step's result, fenced like every write of an attempt: only the worker that
    holds this very attempt may record it (`LeaseLost` otherwise)."""
    _check_holder(state, worker_id, "log", verb=f"record step {name!r} of", attempt=attempt)
    return [ev.StepRecorded(name=name, result=result, worker_id=worker_id, attempt=attempt)]


def retry(state: JobState, by: str | None, reason: str | None = None) -> list[ev.Event]:
    """An operator's retry of a failed or cancelled job: back to pending, claimable now."""
    require(state.id, state.status, "retry")
    return [ev.JobRetried(by=by, reason=reason)]


def expire(state: JobState, holder_gone: bool = False) -> list[ev.Event]:
    """An expired lease (or, ``holder_gone``, a holder process that no longer exists): retried
    when attempts are left, else the job fails."""
    require(state.id, state.status, "expire")
    final = state.attempts >= state.max_attempts
    if holder_gone:
        return [ev.LeaseExpired(worker_id=state.worker_id, final=final, holder_gone=True)]
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
