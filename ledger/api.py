"""`Ledger`: the public API, a thin face over the service and one storage backend.

Each command checks its arguments into a command Struct (`domain.commands`) before anything is
written, then hands it to the `Service`, which runs it as one write transaction on the backend.
Queries (`LedgerReads`) read the projection and the log through the backend's snapshots.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from . import archive as archive_module
from . import holder, rebuild
from .archive import ArchiveReport
from .backends import open_backend
from .backends.protocol import JobFilter
from .domain import chain
from .domain import commands as cmd
from .domain import validate as check
from .domain.backoff import RetryPolicy
from .domain.model import EventType, Job
from .domain.timeutil import MAX_BUSY_TIMEOUT, Clock, seconds
from .errors import CorruptEvent, InvalidArgument, JobNotFound, WaitTimeout
from .reads import LedgerReads
from .service import DEFAULT_LEASE, Service
from .transfer import EXPORT_PAGE, Importer, export_page

Durability = Literal["full", "normal"]


def system_clock() -> datetime:
    """The default clock: the machine's time, in UTC."""
    return datetime.now(UTC)


class Ledger(LedgerReads):
    """A durable record of jobs and everything that happened to them.

    ``target``: an SQLite file path (a str or ``pathlib.Path``; ``":memory:"`` for a throwaway
    one) or a ``postgresql://`` URL. Safe to share between threads (writes are serialised, reads
    run in parallel) and between processes (each opens its own `Ledger`; the database orders the
    writers). ``durability="full"`` (default) survives power loss; ``"normal"`` survives a process
    crash but may lose the last commits on power loss, for more writes per second.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "ledger.db",
        *,
        clock: Clock | None = None,
        durability: Durability = "full",
        readonly: bool = False,
        busy_timeout: float = 30.0,
        retry_policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if durability not in ("full", "normal"):
            raise InvalidArgument("durability", durability, 'use "full" or "normal"')
        self.path = path = cmd.ledger_target(path)  # a str, even when given a Path
        cmd.ledger_options(clock, readonly, retry_policy, rng)
        self.readonly = readonly
        timeout_ms = int(seconds("busy_timeout", busy_timeout, maximum=MAX_BUSY_TIMEOUT) * 1000)
        self._busy_timeout_ms = timeout_ms
        self._reopen = functools.partial(
            open_backend, path, readonly=readonly, durability=durability, busy_timeout_ms=timeout_ms
        )
        self._backend = self._reopen()
        self._service = Service(
            self._backend,
            clock or system_clock,
            retry_policy or RetryPolicy(),
            rng or random.Random(),
        )
        self._stale_projection: str | None = None
        try:
            if readonly:
                self._stale_projection = self._backend.read(
                    f"opening {self._backend.target}", rebuild.stale_projection
                )
            else:
                self._backend.write(f"opening {self._backend.target}", rebuild.catch_up)
        except BaseException:
            self._backend.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands ----------------------------------------------------------------------------

    def create_job(
        self,
        chat_id: int,
        config: Any,
        *,
        thread_id: int | None = None,
        user_id: str | None = None,
        queue: str = "default",
        priority: int = 0,
        run_at: datetime | None = None,
        max_attempts: int = 1,
        idempotency_key: str | None = None,
        timeout: float | timedelta | None = None,
        parent_id: str | None = None,
        max_cost_cents: float | None = None,
        by: str | None = None,
    ) -> str:
        """Record a new pending job and return its id. With an ``idempotency_key`` already used,
        return the first job's id and write nothing. ``timeout`` (seconds or a timedelta): how
        long one attempt may run before the worker interrupts it and fails the attempt (retried
        like any failure); None: the worker's default for the queue, if it has one.
        ``parent_id``: the job that spawns this one (a subagent). The parent must exist
        (`JobNotFound`) and not be final (`InvalidTransition`), and ``chat_id`` must be the
        parent's chat (`InvalidArgument` otherwise: it is not inferred, so a caller always says
        which chat it writes to). ``max_cost_cents``: the most the job may spend; a claim
        reserves it against the chat's budget (see `set_budget`) and `charge` keeps to it.
        ``by``: the operator who enqueued it (recorded in the created event)."""
        command = cmd.CreateJob.checked(
            chat_id=chat_id,
            config=config,
            thread_id=thread_id,
            user_id=user_id,
            queue=queue,
            priority=priority,
            run_at=run_at,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            timeout=timeout,
            parent_id=parent_id,
            max_cost_cents=max_cost_cents,
            by=by,
        )
        return self._service.create([command])[0]

    def create_jobs(self, specs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Create many jobs in one transaction (all or none); each spec holds `create_job`'s
        arguments by name."""
        if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Iterable):
            raise InvalidArgument(
                "specs", specs, "expected a list of dicts of create_job arguments"
            )
        commands = [cmd.create_spec(i, spec) for i, spec in enumerate(specs)]
        return self._service.create(commands, "creating jobs")

    def claim(
        self,
        worker_id: str,
        *,
        queues: Sequence[str] | None = None,
        lease: float | timedelta = DEFAULT_LEASE,
    ) -> Job | None:
        """Take the best claimable job (highest priority, then oldest) for ``worker_id`` under a
        lease, rescuing expired leases first, and, on this host, running jobs whose holder
        process is gone (`ledger.holder`); None when nothing is claimable now. The claim
        records this process as the job's holder."""
        command = cmd.Claim.checked(worker_id=worker_id, lease=lease)
        me = holder.current()
        facts = None if me is None else (me.host, me.boot_id, me.pid, me.start)
        return self._service.claim(command, cmd.queues(queues), facts, holder.is_gone)

    def _gone_holders_possible(self) -> bool:
        """Whether a running job is held on this host by another process (one that may die
        without a trace in the database): the worker's idle wait then re-checks every second."""
        me = holder.current()
        if me is None:
            return False
        held = self._backend.read("looking for local holders", lambda snap: snap.held_on(me.host))
        return any(pid != me.pid or start != me.start for _, pid, start in held)

    def heartbeat(
        self,
        job_id: str,
        *,
        worker_id: str | None = None,
        lease: float | timedelta | None = None,
        attempt: int | None = None,
    ) -> None:
        """Record that the job's worker is alive and extend its lease (by ``lease`` seconds from
        now, or by the length the claim granted). With ``worker_id``, refuse with `LeaseLost` when
        that worker no longer holds the job; with ``attempt`` too (the claimed job's
        ``attempts``), when it no longer holds that attempt (the fencing token of every call a
        worker makes: `complete`, `fail`, `release` and `log_event` take the same two)."""
        command = cmd.Heartbeat.checked(
            job_id=job_id, worker_id=worker_id, lease=lease, attempt=attempt
        )
        self._service.heartbeat(command)

    def complete(
        self,
        job_id: str,
        summary: str,
        result_status: str = "success",
        cost_cents: float = 0.0,
        duration_seconds: int | None = None,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        result: Any = None,
    ) -> None:
        """Mark a running job completed with its result. ``duration_seconds`` defaults to the time
        since the job was claimed. ``result``: any JSON-native value (the rule configs and
        payloads follow), stored in the completed event and read back as `Job.result`."""
        command = cmd.Complete.checked(
            job_id=job_id,
            summary=summary,
            result_status=result_status,
            cost_cents=cost_cents,
            duration_seconds=duration_seconds,
            worker_id=worker_id,
            attempt=attempt,
            result=result,
        )
        self._service.complete(command)

    def record_step(
        self, job_id: str, name: str, result: Any = None, *, worker_id: str, attempt: int
    ) -> None:
        """Record that the durable step ``name`` of a running job finished with ``result``
        (JSON-native), fenced: `LeaseLost` unless ``worker_id`` holds ``attempt``. What
        `JobContext.step` writes; `steps` reads them back."""
        command = cmd.RecordStep.checked(
            job_id=job_id, name=name, result=result, worker_id=worker_id, attempt=attempt
        )
        self._service.record_step(command)

    def wait(self, job_id: str, timeout: float | timedelta | None = None) -> Job:
        """The job once it is final (completed, failed or cancelled), woken by the database
        (SQLite: a commit seen through ``data_version``; PostgreSQL: NOTIFY), not a sleep loop.
        ``timeout`` (seconds or a timedelta; None waits for ever): `WaitTimeout` (also a
        ``TimeoutError``) when the job is not final by then. `JobNotFound` for an unknown id."""
        check.text("job_id", job_id)
        limit = None if timeout is None else _wait_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            job = self.get_job(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.status.is_final:
                return job
            left = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(job_id, limit or 0.0, job.status.value)
            self._backend.wait_for_change(min(left, _WAIT_SLICE))

    def fail(
        self,
        job_id: str,
        error: str,
        *,
        worker_id: str | None = None,
        retry: bool = True,
        error_type: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Record a failed attempt. With attempts left (and ``retry``), the job goes back to
        pending after a backoff (see `RetryPolicy`); otherwise it is failed for good.
        ``error_type``: the exception's type name, recorded in the event beside the message."""
        command = cmd.Fail.checked(
            job_id=job_id,
            error=error,
            worker_id=worker_id,
            retry=retry,
            error_type=error_type,
            attempt=attempt,
        )
        self._service.fail(command)

    def cancel(
        self,
        job_id: str,
        *,
        reason: str | None = None,
        by: str | None = None,
        cascade: bool = True,
    ) -> bool:
        """Cancel a pending or running job; False (and nothing written) when it already ended.
        ``by``: who cancelled it (an operator's name, recorded in the event). With ``cascade``
        (the default) every pending or running descendant is cancelled too, in the same
        transaction, each event naming this job as its ``cause``; ``cascade=False`` ends only
        this job. A job that already ended cancels nothing below it either (cancel those one
        by one)."""
        command = cmd.Cancel.checked(job_id=job_id, reason=reason, by=by, cascade=cascade)
        return self._service.cancel(command)

    def charge(
        self,
        job_id: str,
        cents: float,
        *,
        worker_id: str | None = None,
        detail: Any = None,
        attempt: int | None = None,
    ) -> None:
        """Record spending of a running job (a ``charged`` event; ``detail``: any JSON-native
        value saying what for). Its cost is the sum of its charges plus the ``cost_cents`` given
        at `complete`. `BudgetExceeded`, writing nothing, when the job would pass its own
        ``max_cost_cents`` or its chat's budget (what it spends within its reservation always
        fits). With ``worker_id`` (and ``attempt``) fenced like `heartbeat`."""
        command = cmd.Charge.checked(
            job_id=job_id, cents=cents, detail=detail, worker_id=worker_id, attempt=attempt
        )
        self._service.charge(command)

    def set_budget(self, chat_id: int, cents: float | None) -> bool:
        """Set a chat's spending limit in cents (None removes it), as a ``budget_set`` event on
        the chat's stream ``chat:<id>``. A claim then hands out a job of the chat only while its
        spent + reserved + the job's ``max_cost_cents`` fits (a job without one: while anything
        is left); raising the limit makes blocked jobs claimable at once. False, writing
        nothing, when the limit already was that."""
        return self._service.set_budget(cmd.SetBudget.checked(chat_id=chat_id, cents=cents))

    def release(
        self,
        job_id: str,
        *,
        worker_id: str,
        reason: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Give a running job back unfinished (the attempt does not count): for a worker that is
        shutting down before its handler finished."""
        command = cmd.Release.checked(
            job_id=job_id, worker_id=worker_id, reason=reason, attempt=attempt
        )
        self._service.release(command)

    def log_event(
        self,
        job_id: str,
        type: EventType | str,
        payload: Any = None,
        *,
        expected_version: int | None = None,
        worker_id: str | None = None,
        attempt: int | None = None,
    ) -> int:
        """Append a worker activity event (started, progress, tool_call, error) to a pending or
        running job; returns the job's new version. ``expected_version`` makes the append
        conditional: `ConcurrencyError` when the job moved on. With ``worker_id`` the append is
        fenced like `heartbeat`: `LeaseLost` unless that worker holds the running job; the event
        records the worker and the attempt."""
        command = cmd.LogActivity.checked(
            job_id=job_id, expected_version=expected_version, worker_id=worker_id, attempt=attempt
        )
        event_type = cmd.activity_type(type)
        # Encoded once here; the event carries the bytes (msgspec.Raw) into the log as they are.
        encoded = msgspec.Raw(check.json_bytes("payload", payload))
        return self._service.log(command, ((event_type, encoded),))

    def log_events(
        self,
        job_id: str,
        events: Iterable[tuple[EventType | str, Any]],
        *,
        expected_version: int | None = None,
        worker_id: str | None = None,
        attempt: int | None = None,
    ) -> int:
        """Append many activity events to one job in one transaction, in order: ``events`` is
        a list of ``(type, payload)`` pairs, each what `log_event` takes. All are written or
        none (a bad pair raises `InvalidArgument` naming it, ``events[3].payload``, before
        anything is written); the fencing and ``expected_version`` are `log_event`'s, checked
        once for the batch. Returns the job's new version (an empty list writes nothing and
        returns the version as it is, after the same checks). For a worker that buffers its
        progress: one commit, one fsync, for the whole batch."""
        command = cmd.LogActivity.checked(
            job_id=job_id, expected_version=expected_version, worker_id=worker_id, attempt=attempt
        )
        return self._service.log(command, cmd.activities(events))

    def rescue_expired(self) -> int:
        """Requeue (or fail, with no attempts left) every running job whose lease ran out."""
        return self._service.rescue_expired()

    # -- operator commands -------------------------------------------------------------------

    def retry(self, job_id: str, *, by: str | None = None, reason: str | None = None) -> Job:
        """Send a failed or cancelled job back to pending, claimable now, as a new attempt (a
        ``retried`` event naming ``by``). Its used attempts stay counted; ``max_attempts`` rises
        to ``attempts + 1`` when no attempt was left. `InvalidTransition` for any other state,
        `JobNotFound` for an unknown id; both write nothing. Returns the job as it now is."""
        return self._service.retry(cmd.Retry.checked(job_id=job_id, by=by, reason=reason))

    def retry_failed(
        self,
        *,
        queue: str | None = None,
        since: datetime | None = None,
        by: str | None = None,
    ) -> int:
        """`retry` every failed job (of ``queue``; that failed at or after ``since``) in one
        transaction; how many were retried."""
        return len(self.retry_failed_ids(queue=queue, since=since, by=by))

    def retry_failed_ids(
        self,
        *,
        queue: str | None = None,
        since: datetime | None = None,
        by: str | None = None,
    ) -> list[str]:
        """`retry_failed`, returning the ids of the jobs retried (oldest first)."""
        command = cmd.RetryFailed.checked(queue=queue, since=since, by=by)
        return self._service.retry_failed(command)

    def pause(self, queue: str, *, by: str | None = None, reason: str | None = None) -> bool:
        """Stop every worker (of every process) from claiming the jobs of ``queue`` until
        `resume`; running jobs carry on. Recorded as a ``queue_paused`` event in the stream
        ``queue:<name>``. False, writing nothing, when the queue already was paused."""
        command = cmd.QueueAction.checked(queue=queue, by=by, reason=reason)
        return self._service.set_paused(command, True)

    def resume(self, queue: str, *, by: str | None = None, reason: str | None = None) -> bool:
        """Let workers claim the jobs of a paused ``queue`` again (a ``queue_resumed`` event).
        False, writing nothing, when it was not paused."""
        command = cmd.QueueAction.checked(queue=queue, by=by, reason=reason)
        return self._service.set_paused(command, False)

    # -- export and import ------------------------------------------------------------------

    def export_events(self, after: int = 0) -> Iterator[bytes]:
        """The log after ``after`` as JSON lines (bytes, no newline), in position order.

        Read a page at a time, so no lock or read transaction is held while the caller consumes
        the lines; positions only grow, so paging by position neither skips nor repeats."""
        position = check.integer("after", after, minimum=0)
        return self._export(position)

    def _export(self, position: int) -> Iterator[bytes]:
        while True:
            page = self._backend.read(
                "exporting events", functools.partial(_page, position=position)
            )
            yield from (line for _, line in page)
            if len(page) < EXPORT_PAGE:
                return
            position = page[-1][0]

    def import_events(
        self, lines: Iterable[bytes | str], *, progress: rebuild.Progress | None = None
    ) -> rebuild.ReplayReport:
        """Load exported lines into this new or empty ledger and replay (all or nothing).

        Every line is checked first (see `transfer.Importer`); a refusal is an `InvalidArgument`
        naming the line, and writes nothing. The file itself was created when this `Ledger`
        opened it, before any line was read, so a refused import into a new path leaves an empty
        ledger there: remove it if you do not want it (``ledger import`` does that for you).
        ``progress``: called with (events replayed, events in all) by the replay after the load."""
        importer = Importer()
        try:
            return self._rebuild("importing events", progress, lambda tx: importer.load(tx, lines))
        except CorruptEvent as e:  # the replay after the load refused one of its events
            raise importer.refusal(e) from e

    # -- replay and verify -------------------------------------------------------------------

    def replay(self, progress: rebuild.Progress | None = None) -> rebuild.ReplayReport:
        """Rebuild every projection from the whole log in one transaction (all or nothing)."""
        return self._rebuild("replaying the log", progress)

    def _rebuild(
        self,
        doing: str,
        progress: rebuild.Progress | None,
        before: Callable[[Any], object] | None = None,
    ) -> rebuild.ReplayReport:
        """``before`` (in the same transaction), then a rebuild of every projection."""
        started = time.perf_counter()

        def work(tx: Any) -> rebuild.ReplayReport:
            if before is not None:
                before(tx)
            count, last = rebuild.rebuild(tx, progress)
            jobs = tx.count_jobs(JobFilter())
            return rebuild.ReplayReport(count, jobs, time.perf_counter() - started, last)

        return self._backend.write(doing, work)

    def archive(
        self,
        older_than: timedelta,
        to: str | os.PathLike[str],
        *,
        progress: rebuild.Progress | None = None,
    ) -> ArchiveReport:
        """Move every job that finished more than ``older_than`` ago (with its whole tree) into
        the new, sealed ledger file ``to``, and continue this ledger in a new segment holding
        every other job and every queue and chat stream (SQLite files only; see
        `ledger.archive` for exactly what is kept where). No event is changed or deleted:
        each is copied into exactly one of the two files. Refuses, writing nothing, while
        another process has the ledger open. This `Ledger` is open on the new segment after."""
        age = archive_module.check_age(older_than)
        path = archive_module.check_request(self.path, self._backend.name, self.readonly, to)
        now = self._service.now()
        self._backend.close()
        try:
            return archive_module.run(
                self.path, age, path, now, self._busy_timeout_ms, progress=progress
            )
        finally:
            self._backend = self._reopen()
            self._service.backend = self._backend
            self._backend.write(f"opening {self._backend.target}", rebuild.catch_up)

    def verify(
        self,
        *,
        expect_head: tuple[int, str] | str | None = None,
        progress: rebuild.Progress | None = None,
    ) -> rebuild.VerifyReport:
        """Fold the log in memory and compare it with the live projection, and recompute the
        log's hash chain, in one snapshot. ``expect_head``: a head recorded earlier (`head`, or
        its ``POS:HASH`` text); the report is not ok when the log no longer extends it.
        ``progress``: called with (events folded, events in all)."""
        expected = None if expect_head is None else chain.check_head(expect_head)
        started = time.perf_counter()

        def check(snap: Any) -> rebuild.VerifyReport:
            return rebuild.verify(snap, started, time.perf_counter, expected, progress)

        return self._backend.read("verifying", check)

    def head(self) -> tuple[int, str]:
        """(last position, its chain hash as 64 hex digits): record it, and a later
        ``verify(expect_head=...)`` proves the log still extends it. An empty ledger's head is
        (0, the genesis hash)."""
        return self._backend.read("reading the head", lambda snap: snap.head())


_WAIT_SLICE = 1.0  # the longest one backend wait lasts inside `Ledger.wait` (a safety net)


def _wait_timeout(value: float | timedelta) -> float:
    """`Ledger.wait`'s timeout in seconds: 0 is allowed (look once)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, bool) and isinstance(value, int | float) and value == 0:
        return 0.0
    return seconds("timeout", value)


def _page(snapshot: Any, *, position: int) -> list[tuple[int, bytes]]:
    return export_page(snapshot, position, EXPORT_PAGE)


__all__ = ["DEFAULT_LEASE", "Ledger"]
