"""What callers read: job states, event types, and the `Job` / `JobEvent` records."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec


class JobStatus(enum.StrEnum):
    """Where a job is in its life. The jobs table's CHECK constraint is built from this enum.

    - PENDING: waiting to be claimed (maybe not before ``run_at``). Left by claim or cancel.
    - RUNNING: held by one worker under a lease. Left by complete, fail, cancel, release, or
      lease expiry (back to PENDING when attempts are left, else FAILED).
    - COMPLETED, FAILED, CANCELLED: final; no command moves a job out of them.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """No command moves a job out of this state (see `ledger.domain.transitions`)."""
        from .transitions import FINAL  # the one table of transitions says which are final

        return self in FINAL


class EventType(enum.StrEnum):
    """The stable tag of every event in a job's stream. Tags never change once released."""

    # lifecycle
    CREATED = "created"
    CLAIMED = "claimed"
    HEARTBEAT = "heartbeat"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY_SCHEDULED = "retry_scheduled"
    LEASE_EXPIRED = "lease_expired"
    RELEASED = "released"
    CHARGED = "charged"  # spending recorded on a running job (`Ledger.charge`)
    BUDGET_SET = "budget_set"  # a chat's budget limit (on the chat's stream, ``chat:<id>``)
    RETRIED = "retried"  # an operator sent a failed or cancelled job back to pending
    # a queue's own stream (``queue:<name>``): operator actions on the whole queue
    QUEUE_PAUSED = "queue_paused"
    QUEUE_RESUMED = "queue_resumed"
    # worker activity (the original's event types)
    STARTED = "started"
    PROGRESS = "progress"
    TOOL_CALL = "tool_call"
    ERROR = "error"
    # durable steps (ctx.step)
    STEP = "step"


ACTIVITY_TYPES = frozenset(
    {EventType.STARTED, EventType.PROGRESS, EventType.TOOL_CALL, EventType.ERROR}
)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One job as the projection sees it. Encodes to JSON with ``msgspec.json.encode``."""

    id: str
    chat_id: int
    thread_id: int | None
    user_id: str | None
    config: Any
    status: JobStatus
    worker_id: str | None
    started_at: datetime | None
    completed_at: datetime | None
    result_summary: str | None
    result_status: str | None
    cost_cents: float | None
    duration_seconds: int | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    queue: str
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    lease_expires_at: datetime | None
    idempotency_key: str | None
    result: Any = None  # what the handler returned (completed jobs), as JSON-native values
    timeout: float | None = None  # seconds an attempt may run (None: no limit of its own)
    parent_id: str | None = None  # the job that spawned this one (None: a root)
    max_cost_cents: float | None = None  # what the job may spend at most (its claim reserves it)
    subtree_cost_cents: float = 0.0  # its own cost plus that of every descendant
    blocked_reason: str | None = None  # why a pending job is not handed out (its chat's budget)


class Budget(msgspec.Struct, frozen=True, kw_only=True):
    """A chat's spending: ``limit_cents`` None when unlimited (then ``remaining_cents`` is None
    too). ``spent_cents``: the cost of the chat's jobs so far (charges and completed costs);
    ``reserved_cents``: what running jobs may still spend of their ``max_cost_cents``."""

    chat_id: int
    limit_cents: float | None
    spent_cents: float
    reserved_cents: float
    remaining_cents: float | None


class JobEvent(msgspec.Struct, frozen=True, gc=False):
    """One stored event. ``payload`` is the worker's payload for activity events and the event's
    fields (a dict) for lifecycle events. ``worker_id`` and ``attempt``: who wrote an activity
    event and during which attempt (None when not recorded: older logs, or a caller that did not
    name itself); ``worker_id`` is also set for lifecycle events that name a worker. Not
    keyword-only: a read of the whole log builds one per event, and msgspec builds a Struct
    from keywords markedly slower. Not tracked by the garbage collector (``gc=False``): a read
    of 100,000 events spent a quarter of its time in collections walking them (445 against
    300-366 ms); an event holds only what was decoded from its row, which never refers back
    to it."""

    position: int
    job_id: str
    version: int
    type: EventType
    payload: Any
    created_at: datetime
    worker_id: str | None = None
    attempt: int | None = None


class Result(msgspec.Struct, frozen=True):
    """What a worker handler may return to describe a successful run."""

    summary: str
    result_status: str = "success"
    cost_cents: float = 0.0
    result: Any = None  # any JSON-native value, read back as `Job.result`
