"""The service: runs each command over the storage seam, the same way on every backend.

One command is one write transaction (`Backend.write`): load the job's state ─▶ decide (pure,
`domain.decide`) ─▶ append the events with the version the decision was made on ─▶ fold them
(`projections.jobs.JobsFold`, the same fold replay uses) ─▶ write the projection rows and the
checkpoint ─▶ commit. Any exception rolls all of it back, so a failed command writes nothing.
The faces (`Ledger`, the worker, the CLI) validate arguments into command Structs and call
these methods; nothing here knows which database it runs on.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from projections import jobs as jobs_projection

from .domain import commands as cmd
from .domain import decide
from .domain import events as ev
from .domain.backoff import RetryPolicy
from .domain.model import EventType, Job
from .domain.state import JobState, to_job
from .domain.timeutil import Clock, check_aware
from .errors import ConcurrencyError, JobNotFound
from .rebuild import JOBS

_T = TypeVar("_T")
DEFAULT_LEASE = 300.0
RESCUE_BATCH = 100  # expired leases rescued by one claim before it looks for a job


class Step:
    """One command's working state inside its write transaction: the transaction, the
    command's time, and the fold that sees every event appended."""

    __slots__ = ("_last", "fold", "now", "tx")

    def __init__(self, tx: Any, now: datetime) -> None:
        self.tx = tx
        self.now = now
        self.fold = jobs_projection.JobsFold(tx.load_job)
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
        apply = self.fold.apply
        for stored in self.tx.append(job_id, version, events, self.now):
            apply(stored)
            self._last = stored.position

    def flush(self) -> None:
        """Write what the fold computed so far (a query later in this command must see it)."""
        changes = self.fold.take()
        if changes:
            self.tx.save_jobs(changes.new, changes.changed)

    def finish(self) -> None:
        self.flush()
        if self._last:
            self.tx.advance_checkpoint(JOBS, self._last)


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

    def now(self) -> datetime:
        return check_aware("clock()", self._clock())

    def run(self, doing: str, work: Callable[[Step], _T]) -> _T:
        """Run ``work`` as one command: one write transaction, its events folded."""
        now = self.now()

        def transaction(tx: Any) -> _T:
            step = Step(tx, now)
            result = work(step)
            step.finish()
            return result

        return self.backend.write(doing, transaction)

    # -- commands ------------------------------------------------------------------------------

    def create(self, commands: Sequence[cmd.CreateJob], doing: str = "creating a job") -> list[str]:
        """Create jobs in one transaction; a known idempotency key gives the first job's id."""

        def work(step: Step) -> list[str]:
            batch: dict[str, str] = {}
            return [_create(step, command.event(), batch) for command in commands]

        return self.run(doing, work)

    def claim(self, command: cmd.Claim, queues: tuple[str, ...] | None) -> Job | None:
        lease = float(command.lease)  # type: ignore[arg-type]

        def work(step: Step) -> Job | None:
            if _rescue(step, RESCUE_BATCH):
                step.flush()  # the claim query below must see the rescued jobs as pending
            job_id = step.tx.claimable(step.now, queues)
            if job_id is None:
                return None
            state = step.job(job_id)
            until = decide.lease_until(step.now, lease)
            step.append(job_id, decide.claim(state, command.worker_id, until), state=state)
            return to_job(step.job(job_id))

        return self.run("claiming a job", work)

    def heartbeat(self, command: cmd.Heartbeat) -> None:
        def work(step: Step) -> None:
            state = step.job(command.job_id)
            length = command.lease or state.lease_seconds or DEFAULT_LEASE
            until = decide.lease_until(step.now, float(length))  # type: ignore[arg-type]
            events = decide.heartbeat(state, command.worker_id, until, command.attempt)
            step.append(command.job_id, events, state=state)

        self.run("recording a heartbeat", work)

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
            )
            step.append(command.job_id, events, state=state)

        self.run("completing a job", work)

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

        self.run("failing a job", work)

    def cancel(self, command: cmd.Cancel) -> bool:
        def work(step: Step) -> bool:
            state = step.job(command.job_id)
            events = decide.cancel(state, command.reason)
            if events:
                step.append(command.job_id, events, state=state)
            return bool(events)

        return self.run("cancelling a job", work)

    def release(self, command: cmd.Release) -> None:
        def work(step: Step) -> None:
            state = step.job(command.job_id)
            events = decide.release(state, command.worker_id, command.reason, command.attempt)
            step.append(command.job_id, events, state=state)

        self.run("releasing a job", work)

    def log(self, command: cmd.LogActivity, event_type: EventType, payload: msgspec.Raw) -> int:
        def work(step: Step) -> int:
            state = step.job(command.job_id)
            events = decide.log(state, event_type, payload, command.worker_id, command.attempt)
            step.append(command.job_id, events, command.expected_version, state=state)
            return state.version + len(events)

        return self.run("logging an event", work)

    def rescue_expired(self) -> int:
        return self.run("rescuing expired leases", lambda step: _rescue(step, None))


def _create(step: Step, created: ev.JobCreated, batch: dict[str, str]) -> str:
    key = created.idempotency_key
    if key is not None:
        existing = batch.get(key) or step.tx.job_with_key(key)  # this batch, then the ledger
        if existing is not None:
            return existing
    job_id = str(uuid.uuid4())
    step.append(job_id, [created], new=True)
    if key is not None:
        batch[key] = job_id
    return job_id


def _rescue(step: Step, limit: int | None) -> int:
    expired = step.tx.expired_leases(step.now, limit)
    for job_id in expired:
        step.append(job_id, decide.expire(step.job(job_id)))
    return len(expired)
