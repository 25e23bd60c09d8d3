"""The service: runs each command over the storage seam, the same way on every backend.

One command is one write transaction (`Backend.write`): load the job's state ─▶ decide (pure,
`domain.decide`) ─▶ append the events with the version the decision was made on ─▶ fold them
(`projections.jobs.JobsFold`, the same fold replay uses) ─▶ write the projection rows and the
checkpoint ─▶ commit. Any exception rolls all of it back, so a failed command writes nothing.
The faces (`Ledger`, the worker, the CLI) validate arguments into command Structs and call
these methods; nothing here knows which database it runs on.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from projections import jobs as jobs_projection

from .backends.protocol import JobFilter
from .domain import commands as cmd
from .domain import decide
from .domain import events as ev
from .domain.backoff import RetryPolicy
from .domain.model import EventType, Job, JobStatus
from .domain.state import JobState, to_job
from .domain.timeutil import EARLIEST, LATEST, Clock, check_aware
from .errors import ConcurrencyError, InvalidTransition, JobNotFound, LeaseLost, LedgerError
from .rebuild import JOBS, write_fold

_T = TypeVar("_T")
DEFAULT_LEASE = 300.0
GoneCheck = Callable[[str | None, int | None, int | None], bool]  # (boot id, pid, start)
RESCUE_BATCH = 100  # expired leases rescued by one claim before it looks for a job


class Step:
    """One command's working state inside its write transaction: the transaction, the
    command's time, and the fold that sees every event appended."""

    __slots__ = ("_last", "fold", "now", "tx")

    def __init__(self, tx: Any, now: datetime) -> None:
        self.tx = tx
        self.now = now
        self.fold = jobs_projection.JobsFold(tx.load_job, tx.load_queue, tx.load_budget)
        self._last = 0

    def job(self, job_id: str) -> JobState:
        state = self.fold.state(job_id)
        if state is None:
            raise JobNotFound(job_id)
        return state

    def append(
        self,
        job_id: str,
        events: Sequence[ev.Event],
        expected_version: int | None = None,
        *,
        state: JobState | None = None,
        new: bool = False,
    ) -> None:
        """Append to one job's stream and fold. ``state``: the job's state if the caller
        already holds it; ``new``: the job does not exist yet (a freshly minted id)."""
        if new:
            self.fold.mark_absent(job_id)
            version = 0
        else:
            version = (state or self.job(job_id)).version
        if expected_version is not None and expected_version != version:
            raise ConcurrencyError(job_id, expected_version, version)
        if not events:  # nothing to write (an empty `log_events`): the checks above were all
            return
        apply = self.fold.apply
        for stored in self.tx.append(job_id, version, events, self.now):
            apply(stored)
            self._last = stored.position

    def note(self, position: int) -> None:
        """An event appended to a non-job stream (the checkpoint must move past it too)."""
        self._last = position

    def flush(self) -> None:
        """Write what the fold computed so far (a query later in this command must see it)."""
        write_fold(self.tx, self.fold)

    def finish(self) -> None:
        write_fold(self.tx, self.fold)  # `flush`
        if self._last:
            self.tx.advance_checkpoint(JOBS, self._last)


class _BatchStep(threading.local):
    """The `Step` of the `batch` this thread is inside, if any. The class default answers a
    thread that never ran one (``getattr(local, "step", None)`` made and caught an
    AttributeError on every command of such a thread)."""

    step: Step | None = None


class Service:
    """The commands of the ledger over one backend. Thread-safe as far as the backend is
    (transactions are serialised by it)."""

    def __init__(
        self,
        backend: Any,
        clock: Clock,
        retry_policy: RetryPolicy,
        rng: random.Random,
    ) -> None:
        self.backend = backend
        self._clock = clock
        self._retry_policy = retry_policy
        self._rng = rng
        self._batch = _BatchStep()

    def batch(
        self, doing: str, calls: Sequence[Callable[[], _T]], jobs: Sequence[str] = ()
    ) -> list[_T | LedgerError]:
        """Run several commands (``calls`` of the faces' methods, arguments checked as always)
        in ONE write transaction: a worker recording the outcomes of many jobs pays for one
        commit. A call the rules refuse (`LeaseLost`, `InvalidTransition`, `JobNotFound`: raised
        by `decide`, before it appended anything) gives its error in its place and the others
        go on; any other error rolls the whole batch back and is raised. ``jobs``: the jobs the
        calls write, locked first with their ancestors (a cost's roll-up), all in the lock
        order (`WriteTransaction.lock_jobs`): one call after another, a job and then its parent,
        and then the next job (newer than that parent), was out of order."""
        now = self.now()

        def transaction(tx: Any) -> list[_T | LedgerError]:
            step = Step(tx, now)
            if jobs:
                tx.lock_jobs(jobs, ancestors=True)
            self._batch.step = step
            try:
                results: list[_T | LedgerError] = []
                for call in calls:
                    try:
                        results.append(call())
                    except (LeaseLost, InvalidTransition, JobNotFound) as e:
                        results.append(e)
            finally:
                self._batch.step = None
            step.finish()
            return results

        return self.backend.write(doing, transaction)

    def now(self) -> datetime:
        moment = self._clock()
        if type(moment) is datetime and moment.tzinfo is UTC and EARLIEST <= moment <= LATEST:
            return moment  # `check_aware`'s common case, without the call
        return check_aware("clock()", moment)

    def run(self, doing: str, work: Callable[[Step], _T], job: str | None = None) -> _T:
        """Run ``work`` as one command: one write transaction, its events folded (inside
        `batch`, a part of the batch's transaction). ``job``: the job it loads first (a
        backend may read it ahead, `Backend.write`)."""
        batch_step = self._batch.step
        if batch_step is not None:
            result = work(batch_step)
            batch_step.flush()  # the next command of the batch queries what this one wrote
            return result
        now = self.now()

        def transaction(tx: Any) -> _T:
            step = Step(tx, now)
            result = work(step)
            step.finish()
            return result

        return self.backend.write(doing, transaction, job=job)

    # -- commands ------------------------------------------------------------------------------

    def create(self, commands: Sequence[cmd.CreateJob], doing: str = "creating a job") -> list[str]:
        """Create jobs in one transaction; a known idempotency key gives the first job's id."""

        parents = list(dict.fromkeys(c.parent_id for c in commands if c.parent_id is not None))

        def work(step: Step) -> list[str]:
            batch: dict[str, str] = {}
            ids = iter(new_job_ids(len(commands)))  # one draw of random bytes for them all
            if len(parents) > 1:  # in the lock order, not the specs' (`WriteTransaction.lock_jobs`)
                step.tx.lock_jobs(parents)
            return [_create(step, command.event(), batch, ids) for command in commands]

        return self.run(doing, work)

    def claim(
        self,
        command: cmd.Claim,
        queues: tuple[str, ...] | None,
        holder: tuple[str, str, int, int] | None = None,
        is_gone: GoneCheck | None = None,
    ) -> Job | None:
        """``holder``: (host, boot id, pid, process start) of the claiming process, recorded on
        the claim; with ``is_gone`` (the face's liveness check, I/O), running jobs held on the
        same host by a process that is gone are rescued first, as expired leases are."""
        lease = float(command.lease)  # type: ignore[arg-type]

        looker = holder if is_gone is not None else None  # whose host's holders to look at

        def work(step: Step) -> Job | None:
            looks = step.tx.before_claim(step.now, RESCUE_BATCH, looker, queues)
            rescued = _rescue(step, looks.expired)
            if looker is not None and is_gone is not None:
                rescued += _rescue_gone(step, looker[0], looks.holders, is_gone)
            job_id = looks.job_id
            if rescued:
                step.flush()  # the claim query must see the rescued jobs as pending: again
            if rescued or not looks.settled:
                job_id = step.tx.claimable(step.now, queues)
            if job_id is None:
                return None
            state = step.job(job_id)
            until = decide.lease_until(step.now, lease)
            events = decide.claim(state, command.worker_id, until, holder)
            step.append(job_id, events, state=state)
            return to_job(step.job(job_id))

        return self.run("claiming a job", work)

    def heartbeat(self, command: cmd.Heartbeat) -> None:
        def work(step: Step) -> None:
            state = step.job(command.job_id)
            length = command.lease or state.lease_seconds or DEFAULT_LEASE
            until = decide.lease_until(step.now, float(length))  # type: ignore[arg-type]
            events = decide.heartbeat(state, command.worker_id, until, command.attempt)
            step.append(command.job_id, events, state=state)

        self.run("recording a heartbeat", work, command.job_id)

    def complete(self, command: cmd.Complete) -> None:
        def work(step: Step) -> None:
            state = step.job(command.job_id)
            events = decide.complete(
                state,
                command.worker_id,
                command.summary,
                command.result_status,
                command.cost_cents,
                command.duration_seconds,
                step.now,
                command.attempt,
                command.result,
            )
            step.append(command.job_id, events, state=state)

        self.run("completing a job", work, command.job_id)

    def record_step(self, command: cmd.RecordStep) -> None:
        def work(step: Step) -> None:
            state = step.job(command.job_id)
            events = decide.step(
                state, command.name, command.result, command.worker_id, command.attempt
            )
            step.append(command.job_id, events, state=state)

        self.run("recording a step", work, command.job_id)

    def fail(self, command: cmd.Fail) -> None:
        policy, rng = self._retry_policy, self._rng

        def work(step: Step) -> None:
            state = step.job(command.job_id)
            events = decide.fail(
                state,
                command.worker_id,
                command.error,
                command.retry,
                step.now,
                policy,
                rng,
                command.error_type,
                command.attempt,
            )
            step.append(command.job_id, events, state=state)

        self.run("failing a job", work, command.job_id)

    def cancel(self, command: cmd.Cancel) -> bool:
        def work(step: Step) -> bool:
            if command.cascade:  # the subtree's rows in the lock order (`lock_subtree`)
                step.tx.lock_subtree(command.job_id)
            state = step.job(command.job_id)
            if command.cascade and not state.status.is_final:
                _cancel_subtree(step, state)
            events = decide.cancel(state, command.reason, command.by)
            if events:
                step.append(command.job_id, events, state=state)
            return bool(events)

        return self.run("cancelling a job", work, command.job_id)

    def release(self, command: cmd.Release) -> None:
        def work(step: Step) -> None:
            state = step.job(command.job_id)
            events = decide.release(state, command.worker_id, command.reason, command.attempt)
            step.append(command.job_id, events, state=state)

        self.run("releasing a job", work, command.job_id)

    def log(
        self, command: cmd.LogActivity, activities: Sequence[tuple[EventType, msgspec.Raw]]
    ) -> int:
        """`log_event` (one pair) and `log_events` (any number, one transaction): the job's
        version after them."""

        def work(step: Step) -> int:
            state = step.job(command.job_id)
            events = decide.log(state, activities, command.worker_id, command.attempt)
            step.append(command.job_id, events, command.expected_version, state=state)
            return state.version + len(events)

        doing = "logging events" if len(activities) > 1 else "logging an event"
        return self.run(doing, work, command.job_id)

    def rescue_expired(self) -> int:
        return self.run(
            "rescuing expired leases",
            lambda step: _rescue(step, step.tx.expired_leases(step.now, None)),
        )

    # -- operator commands ---------------------------------------------------------------------

    def retry(self, command: cmd.Retry) -> Job:
        def work(step: Step) -> Job:
            state = step.job(command.job_id)
            events = decide.retry(state, command.by, command.reason)
            step.append(command.job_id, events, state=state)
            return to_job(step.job(command.job_id))

        return self.run("retrying a job", work, command.job_id)

    def retry_failed(self, command: cmd.RetryFailed) -> list[str]:
        """Retry every failed job that matches, in one transaction; their ids, oldest first."""

        def work(step: Step) -> list[str]:
            where = JobFilter(statuses=(JobStatus.FAILED,), queue=command.queue, order="oldest")
            found = [s.id for s in step.tx.jobs(where) if cmd.failed_since(s, command.since)]
            step.tx.lock_jobs(found)  # in the lock order, before any append holds the log
            chosen = []
            for job_id in found:
                state = step.fold.state(job_id)  # as locked: another command may have moved it
                if state is None or state.status is not JobStatus.FAILED:
                    continue
                step.append(job_id, decide.retry(state, command.by), state=state)
                chosen.append(job_id)
            return chosen

        return self.run("retrying failed jobs", work)

    def charge(self, command: cmd.Charge) -> None:
        """Record spending on a running job, within its max_cost_cents and its chat's budget
        (the chat's budget row is locked first on PostgreSQL, as a claim locks it)."""

        def work(step: Step) -> None:
            state = step.job(command.job_id)
            _lock_ancestors(step, state)  # before the budget: jobs, then budgets
            budget = step.fold.budgets.state(state.chat_id)
            limit = None if budget is None else budget.limit_cents
            used = step.tx.budget_usage(state.chat_id) if limit is not None else (0.0, 0.0)
            events = decide.charge(
                state,
                command.cents,
                command.detail,
                command.worker_id,
                command.attempt,
                limit,
                sum(used),
            )
            step.append(command.job_id, events, state=state)

        self.run("charging a job", work, command.job_id)

    def set_budget(self, command: cmd.SetBudget) -> bool:
        """Set (or remove, with None) a chat's limit; False, writing nothing, when unchanged."""

        def work(step: Step) -> bool:
            state = step.fold.budgets.state(command.chat_id)
            current = None if state is None else state.limit_cents
            if state is not None and current == command.cents:
                return False
            if state is None and command.cents is None:
                return False
            event = ev.BudgetSet(chat_id=command.chat_id, limit_cents=command.cents)
            version = 0 if state is None else state.version
            stream = ev.chat_stream(command.chat_id)
            for stored in step.tx.append(stream, version, [event], step.now):
                step.fold.apply(stored)
                step.note(stored.position)
            return True

        return self.run("setting a budget", work)

    def set_paused(self, command: cmd.QueueAction, paused: bool) -> bool:
        """Pause (or resume) a queue; False, writing nothing, when it already was."""

        def work(step: Step) -> bool:
            stream = ev.queue_stream(command.queue)
            state = step.fold.queues.state(command.queue)
            if (state is not None and state.paused) == paused:
                return False
            kind = ev.QueuePaused if paused else ev.QueueResumed
            event = kind(by=command.by, reason=command.reason)
            version = 0 if state is None else state.version
            for stored in step.tx.append(stream, version, [event], step.now):
                step.fold.apply(stored)
                step.note(stored.position)
            return True

        return self.run("pausing a queue" if paused else "resuming a queue", work)


def _create(step: Step, created: ev.JobCreated, batch: dict[str, str], ids: Iterator[str]) -> str:
    """``ids``: fresh job ids (one is taken unless the idempotency key is known)."""
    key = created.idempotency_key
    if key is not None:
        existing = batch.get(key) or step.tx.job_with_key(key)  # this batch, then the ledger
        if existing is not None:
            return existing
    if created.parent_id is not None:  # a subagent: its parent must be alive, in its chat
        decide.spawn(step.job(created.parent_id), created.chat_id)
    job_id = next(ids)
    step.append(job_id, [created], new=True)
    if key is not None:
        batch[key] = job_id
    return job_id


def new_job_id() -> str:
    """A random (version 4) UUID in its usual text form: ``str(uuid.uuid4())`` at half the cost
    (no UUID object on the way), as one create spends it."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_job_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs in their usual text form, as `str(uuid.uuid4())`
    gives them, at a fraction of the cost: no UUID objects, and the random bytes of them all
    read from the OS at once (a batch of creates paid one read per job)."""
    if count == 1:
        return [new_job_id()]
    raw = bytearray(os.urandom(16 * count))
    ids = []
    for start in range(0, 16 * count, 16):
        raw[start + 6] = raw[start + 6] & 0x0F | 0x40  # version 4
        raw[start + 8] = raw[start + 8] & 0x3F | 0x80  # the RFC 4122 variant
        h = raw[start : start + 16].hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def _lock_ancestors(step: Step, state: JobState) -> None:
    """Load (PostgreSQL: lock) the ancestors whose subtree cost a charge moves, each after the
    job below it, before the charge locks its chat's budget: the lock order of every write is
    jobs newest first, then budgets (`WriteTransaction.lock_jobs`). A claim of a pending
    parent holds the parent and waits for the budget; a charge that held the budget and then
    waited for the parent (its cost's roll-up) was a deadlock."""
    parent_id = state.parent_id
    while parent_id is not None:
        parent = step.fold.state(parent_id)
        parent_id = None if parent is None else parent.parent_id  # (a lost one: the roll-up's)


def _cancel_subtree(step: Step, root: JobState) -> None:
    """Cancel every pending or running job below ``root`` (its own cancel follows), each event
    naming ``root`` as its cause. Read again until nothing new turns up: on PostgreSQL a child
    created just before its parent was locked is seen by the next read."""
    seen: set[str] = set()
    while True:
        below = [s for s in step.tx.descendants(root.id) if s.id not in seen]
        if not below:
            return
        step.tx.lock_found_below([s.id for s in below])  # those `lock_subtree` did not take
        for found in below:
            seen.add(found.id)
            state = step.job(found.id)  # the fold's view (PostgreSQL: locks the row)
            if not state.status.is_final:
                step.append(state.id, decide.cancel_below(state, root.id), state=state)
        step.flush()  # the next read of the subtree sees these as cancelled


def _rescue_gone(
    step: Step, host: str, holders: list[tuple[str, int, int]], is_gone: GoneCheck
) -> int:
    """Rescue the running jobs held on ``host`` whose holder process is gone (``holders``: the
    processes holding running jobs there, `held_on`; `is_gone`: boot id, pid, start time ->
    certainly not running), under the rules of an expired lease."""
    rescued = 0
    for boot_id, pid, start in holders:  # one look per holder process
        if is_gone(boot_id, pid, start):
            rescued += _rescue_jobs_of(step, host, (boot_id, pid, start))
    return rescued


def _rescue_jobs_of(step: Step, host: str, holder: tuple[Any, Any, Any]) -> int:
    """Rescue the running jobs a gone process (boot id, pid, start) held on ``host``."""
    boot_id, pid, start = holder
    rescued = 0
    for job_id in step.tx.held_by(host, holder):
        state = step.job(job_id)  # locked on PostgreSQL: re-check it is still that holder's
        if state.status is not JobStatus.RUNNING or (
            state.holder_pid,
            state.holder_start,
            state.holder_boot_id,
        ) != (pid, start, boot_id):
            continue
        step.append(job_id, decide.expire(state, holder_gone=True), state=state)
        rescued += 1
    return rescued


def _rescue(step: Step, expired: list[str]) -> int:
    """Return the jobs whose leases expired (``expired``: `expired_leases`) to pending, or fail
    them, under their retry rules."""
    for job_id in expired:
        step.append(job_id, decide.expire(step.job(job_id)))
    return len(expired)
