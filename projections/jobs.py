"""The jobs projection's fold: one `JobState` per job, computed from that job's events.

`evolve` is the only code that decides what a job's state holds: a pure function of the state
before and one stored event (its own time and payload; never the clock, never the database).
`JobsFold` runs it for live commands (a few events inside one transaction) and for replay and
verify (the whole log) alike, caching the states it touched and remembering which fields
changed, so a backend writes each touched row once and only the columns that moved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import msgspec

from ledger.domain import events as ev
from ledger.domain.events import StoredEvent
from ledger.domain.model import JobStatus
from ledger.domain.state import JobState
from ledger.errors import CorruptEvent

from .budgets import BudgetsFold, BudgetState
from .queues import QueuesFold, QueueState

_replace = msgspec.structs.replace
_encoder = msgspec.json.Encoder()
_PENDING, _RUNNING = JobStatus.PENDING, JobStatus.RUNNING
_COMPLETED, _FAILED, _CANCELLED = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED


def evolve(state: JobState | None, stored: StoredEvent) -> JobState:
    """The job's state after ``stored`` (``state`` None: the job does not exist yet)."""
    return advance(state, stored)[0]


Moved = tuple[str, ...]
"""The names of the fields an event changed (in the order a backend writes them)."""
_ACTIVITY_MOVED: Moved = ("version", "updated_at")
_ACTIVITY_DIRTY = dict.fromkeys(_ACTIVITY_MOVED)  # (read only: merged into a job's own)
_UNSEEN: Any = object()  # `JobsFold.apply`: a job the fold holds no state (nor None) for yet


def advance(state: JobState | None, stored: StoredEvent) -> tuple[JobState, Moved | None]:
    """`evolve`, also saying which fields changed (None: a new job), so a backend can write
    only those. It is the one place a job's state changes (`JobsFold.apply` takes its short way
    for activity events inline, tested to give the same states).

    An event without a rule (activity: most of a log) moves only version and updated_at. A
    lifecycle event's rule builds the new state itself, with one `msgspec.structs.replace` of
    every field it moves (version and updated_at first) and names them: no dict of changes
    between (building, merging and spreading one cost 2-3x the replace)."""
    if state is None:
        return created(stored), None
    event = stored.event
    kind = type(event)
    if kind in _ACTIVITY_TYPES:
        return (
            _replace(state, version=stored.version, updated_at=stored.recorded_at),
            _ACTIVITY_MOVED,
        )
    rule = _RULES.get(kind)
    if rule is None:
        if kind is ev.JobCreated:
            raise CorruptEvent(
                stored.position, "created", f"job {stored.job_id} is created a second time"
            )
        return (  # no job event lacks both a rule and a place among the activity types
            _replace(state, version=stored.version, updated_at=stored.recorded_at),
            _ACTIVITY_MOVED,
        )
    return rule(state, event, stored)


def created(stored: StoredEvent) -> JobState:
    event = stored.event
    if type(event) is not ev.JobCreated:
        raise CorruptEvent(
            stored.position,
            ev.tag_of(event),
            f"job {stored.job_id} has no created event before it; the log was damaged "
            "(run `ledger verify` for details)",
        )
    at = stored.recorded_at
    return JobState(  # by position, in field order (`JobState`: a seventh of 35 keywords' cost)
        stored.job_id,  # id
        event.chat_id,
        event.thread_id,
        event.user_id,
        _encoder.encode(event.config).decode(),  # config_json
        _PENDING,  # status
        None,  # worker_id
        None,  # started_at
        None,  # completed_at
        None,  # result_summary
        None,  # result_status
        None,  # cost_cents
        None,  # duration_seconds
        None,  # error_message
        at,  # created_at
        at,  # updated_at
        stored.version,
        event.queue,
        event.priority,
        at if event.run_at is None else event.run_at,  # run_at
        0,  # attempts
        event.max_attempts,
        None,  # lease_expires_at
        event.idempotency_key,
        stored.position,  # created_position
        None,  # lease_seconds
        None,  # result_json
        event.timeout,  # timeout_seconds
        event.parent_id,
        event.max_cost_cents,
    )  # the rest (cost of the subtree, the holder) at their defaults


# Each rule: (the state after a lifecycle event, the names of the fields it set). Every one sets
# version and updated_at first; the names are listed beside each replace, in its order.
Rule = Callable[[JobState, Any, StoredEvent], tuple[JobState, Moved]]

_CLAIMED: Moved = (
    *_ACTIVITY_MOVED,
    "status",
    "worker_id",
    "started_at",
    "lease_expires_at",
    "attempts",
    "lease_seconds",
    "holder_host",
    "holder_boot_id",
    "holder_pid",
    "holder_start",
)


def _claimed(state: JobState, e: ev.JobClaimed, stored: StoredEvent) -> tuple[JobState, Moved]:
    at = stored.recorded_at
    after = _replace(
        state,
        version=stored.version,
        updated_at=at,
        status=_RUNNING,
        worker_id=e.worker_id,
        started_at=at,
        lease_expires_at=e.lease_expires_at,
        attempts=state.attempts + 1,
        lease_seconds=(e.lease_expires_at - at).total_seconds(),
        holder_host=e.host,
        holder_boot_id=e.boot_id,
        holder_pid=e.pid,
        holder_start=e.process_start,
    )
    return after, _CLAIMED


_HEARTBEAT: Moved = (*_ACTIVITY_MOVED, "lease_expires_at")


def _heartbeat(
    state: JobState, e: ev.HeartbeatRecorded, stored: StoredEvent
) -> tuple[JobState, Moved]:
    if e.lease_expires_at is None:
        after = _replace(state, version=stored.version, updated_at=stored.recorded_at)
        return after, _ACTIVITY_MOVED
    after = _replace(
        state,
        version=stored.version,
        updated_at=stored.recorded_at,
        lease_expires_at=e.lease_expires_at,
    )
    return after, _HEARTBEAT


# A final state: the job's lease ends with it (the worker is kept, as the one who ran it).
_ENDED: Moved = (*_ACTIVITY_MOVED, "status", "completed_at", "lease_expires_at")
# Back to pending: no worker, no lease and no holder process any more.
_REQUEUED: Moved = (
    *_ACTIVITY_MOVED,
    "status",
    "worker_id",
    "lease_expires_at",
    "holder_host",
    "holder_boot_id",
    "holder_pid",
    "holder_start",
)
_COMPLETED_MOVED: Moved = (
    *_ENDED,
    "result_summary",
    "result_status",
    "cost_cents",
    "duration_seconds",
    "error_message",
    "result_json",
)
_SUBTREE: Moved = ("subtree_cost_cents",)


def _subtree_after(state: JobState, cost: float | None) -> float | None:
    """A job's own subtree cost once its own cost is ``cost`` (ancestors: `JobsFold`), or None
    when it does not move."""
    delta = (cost or 0.0) - (state.cost_cents or 0.0)
    return state.subtree_cost_cents + delta if delta else None


def _completed(state: JobState, e: ev.JobCompleted, stored: StoredEvent) -> tuple[JobState, Moved]:
    at = stored.recorded_at
    cost = _plus(state.cost_cents, e.cost_cents)  # with what it charged before
    subtree = _subtree_after(state, cost)
    after = _replace(
        state,
        version=stored.version,
        updated_at=at,
        status=_COMPLETED,
        completed_at=at,
        lease_expires_at=None,
        result_summary=e.summary,
        result_status=e.result_status,
        cost_cents=cost,
        duration_seconds=e.duration_seconds,
        error_message=None,
        result_json=None if e.result is None else _encoder.encode(e.result).decode(),
        subtree_cost_cents=state.subtree_cost_cents if subtree is None else subtree,
    )
    return after, _COMPLETED_MOVED if subtree is None else _COMPLETED_MOVED + _SUBTREE


def _plus(cost: float | None, cents: float) -> float:
    """A job's cost after spending ``cents`` more (None: it recorded none yet)."""
    return cents if cost is None else cost + cents


_CHARGED: Moved = (*_ACTIVITY_MOVED, "cost_cents")


def _charged(state: JobState, e: ev.JobCharged, stored: StoredEvent) -> tuple[JobState, Moved]:
    cost = _plus(state.cost_cents, e.cents)
    subtree = _subtree_after(state, cost)
    if subtree is None:
        after = _replace(
            state, version=stored.version, updated_at=stored.recorded_at, cost_cents=cost
        )
        return after, _CHARGED
    after = _replace(
        state,
        version=stored.version,
        updated_at=stored.recorded_at,
        cost_cents=cost,
        subtree_cost_cents=subtree,
    )
    return after, _CHARGED + _SUBTREE


_ENDED_ERROR: Moved = (*_ENDED, "error_message")


def _ended(
    state: JobState, stored: StoredEvent, status: JobStatus, error: Any
) -> tuple[JobState, Moved]:
    """A final state, with ``error`` its error message (`_KEEP`: the message is not set)."""
    at = stored.recorded_at
    if error is _KEEP:
        after = _replace(
            state,
            version=stored.version,
            updated_at=at,
            status=status,
            completed_at=at,
            lease_expires_at=None,
        )
        return after, _ENDED
    after = _replace(
        state,
        version=stored.version,
        updated_at=at,
        status=status,
        completed_at=at,
        lease_expires_at=None,
        error_message=error,
    )
    return after, _ENDED_ERROR


_KEEP: Any = object()  # `_ended`: no error message set


def _failed(state: JobState, e: ev.JobFailed, stored: StoredEvent) -> tuple[JobState, Moved]:
    return _ended(state, stored, _FAILED, e.error)


def _requeued(
    state: JobState, stored: StoredEvent, moved: Moved, **more: Any
) -> tuple[JobState, Moved]:
    """Back to pending (`_REQUEUED`'s fields), with ``more`` set too; ``moved`` names them all,
    `_REQUEUED`'s first. The events that requeue are few in any log, so the keywords ``more``
    costs (a dict) do not show in a replay."""
    after = _replace(
        state,
        version=stored.version,
        updated_at=stored.recorded_at,
        status=_PENDING,
        worker_id=None,
        lease_expires_at=None,
        holder_host=None,
        holder_boot_id=None,
        holder_pid=None,
        holder_start=None,
        **more,
    )
    return after, moved


_REQUEUED_RUN: Moved = (*_REQUEUED, "error_message", "run_at")


def _requeued_at(
    state: JobState, stored: StoredEvent, error: str, run_at: datetime
) -> tuple[JobState, Moved]:
    """Back to pending, with an error message and the time it can run again."""
    return _requeued(state, stored, _REQUEUED_RUN, error_message=error, run_at=run_at)


def _retry_scheduled(
    state: JobState, e: ev.RetryScheduled, stored: StoredEvent
) -> tuple[JobState, Moved]:
    return _requeued_at(state, stored, e.error, e.run_at)


def _lease_expired(
    state: JobState, e: ev.LeaseExpired, stored: StoredEvent
) -> tuple[JobState, Moved]:
    message = holder_gone_message(state) if e.holder_gone else lease_expired_message(state)
    if e.final:
        return _ended(state, stored, _FAILED, message)
    return _requeued_at(state, stored, message, stored.recorded_at)


def _cancelled(state: JobState, e: ev.JobCancelled, stored: StoredEvent) -> tuple[JobState, Moved]:
    return _ended(state, stored, _CANCELLED, _KEEP)


_RELEASED: Moved = (*_REQUEUED, "attempts")


def _released(state: JobState, e: ev.JobReleased, stored: StoredEvent) -> tuple[JobState, Moved]:
    return _requeued(state, stored, _RELEASED, attempts=max(state.attempts - 1, 0))


_RETRIED: Moved = (*_REQUEUED, "run_at", "completed_at", "max_attempts")


def _retried(state: JobState, e: ev.JobRetried, stored: StoredEvent) -> tuple[JobState, Moved]:
    """An operator's retry: pending again, claimable at once; the attempts used stay counted
    and at least one more is allowed (``max_attempts`` is raised to ``attempts + 1`` if needed).
    The last error stays in ``error_message`` until the next outcome replaces it."""
    at = stored.recorded_at
    max_attempts = max(state.max_attempts, state.attempts + 1)
    return _requeued(
        state, stored, _RETRIED, run_at=at, completed_at=None, max_attempts=max_attempts
    )


# One rule per lifecycle event type, and the command of the transition table it carries out; a
# type missing here (an activity event) changes only version and updated_at.
_RULES: dict[type, Rule] = {
    ev.JobClaimed: _claimed,
    ev.HeartbeatRecorded: _heartbeat,
    ev.JobCompleted: _completed,
    ev.JobFailed: _failed,
    ev.RetryScheduled: _retry_scheduled,
    ev.LeaseExpired: _lease_expired,
    ev.JobCancelled: _cancelled,
    ev.JobReleased: _released,
    ev.JobRetried: _retried,
    ev.JobCharged: _charged,
}
# The job events without a rule (`advance`'s short way) and every job event (not a stream's).
_JOB_TYPES = frozenset(c for c in ev.AnyEvent.__args__ if not issubclass(c, ev.StreamEvent))
_ACTIVITY_TYPES = frozenset(c for c in _JOB_TYPES if c not in _RULES and c is not ev.JobCreated)
ACTIVITY_TYPES = _ACTIVITY_TYPES
COMMAND_OF_EVENT: dict[type, str] = {
    ev.JobCreated: "create",
    ev.JobClaimed: "claim",
    ev.HeartbeatRecorded: "heartbeat",
    ev.JobCompleted: "complete",
    ev.JobFailed: "fail",
    ev.RetryScheduled: "fail",
    ev.LeaseExpired: "expire",
    ev.JobCancelled: "cancel",
    ev.JobReleased: "release",
    ev.JobRetried: "retry",
    ev.JobCharged: "charge",
    **{cls: "log" for cls in ev.ACTIVITY_EVENTS.values()},
    ev.StepRecorded: "log",  # a durable step's result: activity of the running attempt
}


def holder_gone_message(state: JobState) -> str:
    return (
        f"holder gone: worker {state.worker_id!r} (process {state.holder_pid} on "
        f"{state.holder_host}) is no longer running (attempt {state.attempts} of "
        f"{state.max_attempts})"
    )


def lease_expired_message(state: JobState) -> str:
    return (
        f"lease expired: worker {state.worker_id!r} stopped heartbeating "
        f"(attempt {state.attempts} of {state.max_attempts})"
    )


class JobsFold:
    """`evolve` over a stream of events, with the states it touched kept in memory.

    ``load`` fetches a job's state from wherever the fold's earlier results went (the backend's
    projection table, inside the same transaction); without one, every job must be created
    within the events folded. A live command folds its few events and flushes them to the
    backend (`ledger.rebuild.write_fold`); replay folds the whole log, flushing a batch whenever
    `len` reaches its limit."""

    __slots__ = ("_dirty", "_load", "_new", "_states", "_touched", "budgets", "queues")

    def __init__(
        self,
        load: Callable[[str], JobState | None] | None = None,
        load_queue: Callable[[str], QueueState | None] | None = None,
        load_budget: Callable[[int], BudgetState | None] | None = None,
    ) -> None:
        self._load = load
        # A queue's own events (stream ``queue:<name>``) fold into the queues projection; other
        # non-job streams (`ev.StreamEvent`) are not the jobs fold's business and are skipped.
        self.queues = QueuesFold(load_queue)
        self.budgets = BudgetsFold(load_budget)  # a chat's own events (stream ``chat:<id>``)
        self._states: dict[str, JobState | None] = {}
        self._new: dict[str, None] = {}  # insertion-ordered
        self._dirty: dict[str, dict[str, None]] = {}  # job -> changed field names, in order
        # a job created since the last flush -> its last activity event, whose version and
        # updated_at are not in `_states` yet (`apply`: set once, when the state is next read or
        # written, not per event); None until there is one (a command on an older job: never)
        self._touched: dict[str, tuple[int, datetime]] | None = None

    def __len__(self) -> int:
        return len(self._states)

    def state(self, job_id: str) -> JobState | None:
        """The job's state with everything folded so far, or None when it does not exist."""
        if job_id in self._states:
            if self._touched and job_id in self._touched:
                self._settle(job_id)
            return self._states[job_id]
        state = None if self._load is None else self._load(job_id)
        self._states[job_id] = state
        return state

    def mark_absent(self, job_id: str) -> None:
        """Tell the fold a job has no state yet (its id was just minted), saving a lookup."""
        self._states.setdefault(job_id, None)

    def apply(self, stored: StoredEvent) -> None:
        """Fold one event (an event of a stream that is not a job's goes to its own fold).

        An activity event (most of a log) takes `advance`'s short way inline, without its call:
        version and updated_at move, nothing else. On a job created since the last flush (a
        replay's: most of a log) they move once for a run of them: the fold keeps the job's
        last activity event (`_touched`) and sets its version and time when the state is next
        read (`state`, `states`, `flush_to`). A lifecycle event on the job sets both itself (its
        rule), so the rule sees the state as of the job's last lifecycle event but for these
        two fields, which no rule reads."""
        event = stored.event
        kind = type(event)
        if kind not in _JOB_TYPES and isinstance(event, ev.StreamEvent):
            if isinstance(event, ev.QueueEvent):
                self.queues.apply(stored)
            elif isinstance(event, ev.ChatEvent):
                self.budgets.apply(stored)
            return
        job_id = stored.job_id
        states = self._states
        # A creation has no state before it (the log's rules refuse a second one), so replay
        # never looks its jobs up in the table it is rebuilding.
        if kind is ev.JobCreated:
            before = None
        else:
            before = states.get(job_id, _UNSEEN)
            if before is _UNSEEN:
                before = self.state(job_id)
        if kind in _ACTIVITY_TYPES and before is not None:
            if job_id in self._new:
                touched = self._touched
                if touched is None:
                    touched = self._touched = {}
                touched[job_id] = (stored.version, stored.recorded_at)
            else:  # a live command's (or a catch-up's) job: `_mark` inline
                states[job_id] = _replace(
                    before, version=stored.version, updated_at=stored.recorded_at
                )
                dirty = self._dirty.get(job_id)
                if dirty is None:
                    self._dirty[job_id] = dict.fromkeys(_ACTIVITY_MOVED)
                else:
                    dirty.update(_ACTIVITY_DIRTY)
            return
        if self._touched:
            self._touched.pop(job_id, None)  # its version and time are this event's now
        state, moved = advance(before, stored)  # no state and no created event: raises
        states[job_id] = state
        if moved is None:
            self._new[job_id] = None
        elif before is not None:  # (always: something moved on a job that was there)
            self._mark(job_id, moved)
            if "subtree_cost_cents" in moved and state.parent_id is not None:
                delta = (state.cost_cents or 0.0) - (before.cost_cents or 0.0)  # as the rule's
                self._roll_up(stored, state, delta)

    def touch_new(self) -> tuple[dict[str, None], dict[str, tuple[int, datetime]]]:
        """For a loop that folds the commonest event inline (replay: `rebuild.fold_events`):
        the jobs created since the last flush, and where `apply` keeps each one's last activity
        event. An activity event of a job of the first is folded by storing it in the second
        under its job id, as `apply` does."""
        if self._touched is None:
            self._touched = {}
        return self._new, self._touched

    def _settle(self, job_id: str) -> None:
        """Set the version and time of the job's last activity event on its state."""
        version, at = self._touched.pop(job_id)  # type: ignore[union-attr]
        state: Any = self._states[job_id]  # a job is touched only where it has a state
        self._states[job_id] = _replace(state, version=version, updated_at=at)

    def _settle_all(self) -> None:
        if self._touched:  # (else None, or empty)
            states = self._states
            for job_id, (version, at) in self._touched.items():
                state: Any = states[job_id]  # a job is touched only where it has a state
                states[job_id] = _replace(state, version=version, updated_at=at)
            self._touched.clear()

    def _mark(self, job_id: str, moved: Moved) -> None:
        if job_id not in self._new:
            dirty = self._dirty.get(job_id)
            if dirty is None:
                self._dirty[job_id] = dict.fromkeys(moved)
            else:
                dirty.update(dict.fromkeys(moved))

    def _roll_up(self, stored: StoredEvent, state: JobState, delta: float) -> None:
        """A job's cost moved by ``delta`` (its own subtree cost moved with it: the rule's): so
        does every ancestor's (loaded through ``load`` when not folded in this batch: the fold
        is what keeps `JobState.subtree_cost_cents`, so replay rebuilds it)."""
        parent_id = state.parent_id
        while parent_id is not None:
            parent = self.state(parent_id)
            if parent is None:
                raise CorruptEvent(
                    stored.position,
                    ev.tag_of(stored.event),
                    f"job {state.id}'s ancestor {parent_id} does not exist; the log was damaged",
                )
            self._states[parent_id] = _replace(
                parent, subtree_cost_cents=parent.subtree_cost_cents + delta
            )
            self._mark(parent_id, ("subtree_cost_cents",))
            parent_id = parent.parent_id

    def states(self) -> Iterator[JobState]:
        """Every state held (for verify, which folds the whole log in memory)."""
        self._settle_all()
        return (s for s in self._states.values() if s is not None)

    def flush_to(
        self,
        save: Callable[[list[JobState], list[tuple[JobState, tuple[str, ...]]]], None],
    ) -> None:
        """Hand the job changes since the last flush to ``save(new, changed)`` (new jobs in
        creation order, so every replay inserts them alike; each changed job with the names of
        its changed fields, so a backend writes only those), then forget every cached state.
        Nothing is called when nothing changed."""
        if self._new or self._dirty:
            if self._touched:
                self._settle_all()
            states = self._states
            new = [states[j] for j in self._new]
            changed = [(states[j], tuple(names)) for j, names in self._dirty.items()]
            self.reset()
            save(new, changed)  # type: ignore[arg-type]
        else:
            self.reset()

    def reset(self) -> None:
        """Forget everything (after a rolled-back command, or a `flush_to`)."""
        if self._states:
            self._states.clear()
            self._new.clear()
            self._dirty.clear()
            if self._touched:
                self._touched.clear()
        self.queues.reset()
        self.budgets.reset()


class JobsProjection:
    """The jobs projection as a backend sees it: its name, the version of its shape (a backend
    rebuilds it when the version it stored differs) and a new fold."""

    name: str = "jobs"
    schema_version: int = 4  # 2: result_json, timeout_seconds; 3: trees and budgets; 4: holders
    # (an index-only change needs no new version: the backend swaps the index on open)

    def fold(self, load: Callable[[str], JobState | None] | None = None) -> JobsFold:
        return JobsFold(load)
