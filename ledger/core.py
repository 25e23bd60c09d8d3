"""`Ledger`: the public API. Commands append events and update projections in one transaction;
queries read the projection and the log.

The transaction seam: every command goes through `_write`, which opens ``BEGIN IMMEDIATE``,
hands a `_Command` (the connection, the command's time, the projection writers) to the private
step, then flushes the projections and commits. Any exception rolls all of it back.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import apsw
import msgspec

from projections import JobsProjection, Projection
from projections import jobs_queries as q
from projections.base import checkpoint_advance_statement, checkpoint_schema_statement
from projections.jobs import JobsWriter

from . import arguments, decide, rebuild, store
from . import events as ev
from . import validate as check
from .backoff import RetryPolicy
from .connection import Durability, configure_writer, connect, run_write
from .errors import ConcurrencyError, CorruptEvent, InvalidArgument, JobNotFound
from .model import EventType, Job
from .reads import LedgerReads
from .timeutil import MAX_BUSY_TIMEOUT, Clock, check_aware, seconds, system_clock, to_db
from .transfer import EXPORT_PAGE, Importer, export_page

_T = TypeVar("_T")
DEFAULT_LEASE = 300.0


class _Command:
    """One write transaction's working state; projections see every appended event at once.

    This is every command's hot path, so it stays lean: slots, no per-call lists when there
    are no extra projections, the row handed along instead of looked up twice."""

    __slots__ = ("_last", "_names", "_others", "at", "conn", "jobs", "now")

    def __init__(
        self,
        conn: apsw.Connection,
        now: datetime,
        jobs: JobsWriter,
        others: Sequence[Projection],
        names: Sequence[str],
    ) -> None:
        self.conn = conn
        self.now = now
        self.at = to_db(now)
        self.jobs = jobs
        jobs.reset()  # drops what a failed (rolled back) command may have left in the cache
        self._others = [p.writer(conn) for p in others] if others else ()
        self._names = names
        self._last = 0

    def job(self, job_id: str) -> dict[str, Any]:
        row = self.jobs.load(job_id)
        if row is None:
            raise JobNotFound(job_id)
        return row

    def append(
        self,
        job_id: str,
        events: Sequence[ev.Event],
        expected_version: int | None = None,
        *,
        new: bool = False,
        row: dict[str, Any] | None = None,
    ) -> None:
        """Append to one job's stream and apply to every projection. ``row``: the job's row if
        the caller already holds it; ``new``: the job does not exist yet."""
        if new:
            self.jobs.mark_absent(job_id)  # a fresh uuid: no need to look the row up
            version = 0
        else:
            version = (row or self.job(job_id))["version"]
        if expected_version is not None and expected_version != version:
            raise ConcurrencyError(job_id, expected_version, version)
        apply = self.jobs.apply
        for stored in store.append(self.conn, job_id, version, events, self.at):
            apply(stored)
            for writer in self._others:
                writer.apply(stored)
            self._last = stored.position

    def finish(self) -> None:
        self.jobs.flush()
        for writer in self._others:
            writer.flush()
        if self._last:
            for name in self._names:
                self.conn.execute(checkpoint_advance_statement, (self._last, name))


class Ledger(LedgerReads):
    """A durable record of jobs and everything that happened to them, in one SQLite file.

    Safe to share between threads (calls are serialised on the connection) and between processes
    (each opens its own `Ledger` on the same file; SQLite's locks order the writers).
    ``durability="full"`` (default) survives power loss; ``"normal"`` survives a process crash but
    may lose the last commits on power loss, for more writes per second.
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
        self.path = path = arguments.ledger_path(path)  # a str, even when given a Path
        arguments.ledger_options(clock, readonly, retry_policy, rng)
        self.readonly = readonly
        self._clock = clock or system_clock
        self._retry_policy = retry_policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        self._jobs = JobsProjection()
        self._projections: tuple[Projection, ...] = (self._jobs,)
        self._others = self._projections[1:]  # written beside jobs by every command
        self._names = tuple(p.name for p in self._projections)
        timeout_ms = int(seconds("busy_timeout", busy_timeout, maximum=MAX_BUSY_TIMEOUT) * 1000)
        self._conn = connect(path, readonly=readonly, busy_timeout_ms=timeout_ms)
        self._jobs_writer = JobsWriter(self._conn)  # reused by every command (reset first)
        try:
            if readonly:
                self._read("opening the ledger", lambda: store.check_schema(self._conn))
            else:
                # Check (one snapshot), switch to WAL, then check again and initialise inside
                # the write transaction: another process may be initialising the same new file.
                self._read("opening the ledger", lambda: store.check_openable(self._conn))
                self._read(
                    "opening the ledger",
                    lambda: configure_writer(self._conn, durability, timeout_ms),
                )
                run_write(self._conn, f"opening {path}", self._initialize)
        except BaseException:
            self._conn.close()
            raise

    def _initialize(self) -> None:
        store.initialize_schema(self._conn)
        self._conn.execute(checkpoint_schema_statement)
        rebuild.catch_up(self._conn, self._projections)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the seam ----------------------------------------------------------------------------

    def _write(self, doing: str, step: Callable[[_Command], _T]) -> _T:
        now = check_aware("clock()", self._clock())
        with self._lock:
            return run_write(self._conn, doing, self._run_command, step, now)

    def _run_command(self, step: Callable[[_Command], _T], now: datetime) -> _T:
        command = _Command(self._conn, now, self._jobs_writer, self._others, self._names)
        result = step(command)
        command.finish()
        return result

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
    ) -> str:
        """Record a new pending job and return its id. With an ``idempotency_key`` already used,
        return the first job's id and write nothing."""
        created = arguments.created_event(
            dict(
                chat_id=chat_id,
                config=config,
                thread_id=thread_id,
                user_id=user_id,
                queue=queue,
                priority=priority,
                run_at=run_at,
                max_attempts=max_attempts,
                idempotency_key=idempotency_key,
            )
        )
        return self._write("creating a job", lambda c: _create(c, created, {}))

    def create_jobs(self, specs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Create many jobs in one transaction (all or none); each spec holds `create_job`'s
        arguments by name."""
        events = [arguments.created_event(arguments.spec(i, spec)) for i, spec in enumerate(specs)]

        def step(c: _Command) -> list[str]:
            batch: dict[str, str] = {}
            return [_create(c, created, batch) for created in events]

        return self._write("creating jobs", step)

    def claim(
        self,
        worker_id: str,
        *,
        queues: Sequence[str] | None = None,
        lease: float | timedelta = DEFAULT_LEASE,
    ) -> Job | None:
        """Take the best claimable job (highest priority, then oldest) for ``worker_id`` under a
        lease, rescuing expired leases first; None when nothing is claimable now."""
        check.text("worker_id", worker_id, nonempty=True)
        lease_seconds = seconds("lease", lease)
        queue_list = arguments.queues(queues)

        def step(c: _Command) -> Job | None:
            if _rescue(c, batch=True):
                c.jobs.flush()  # the claim query below must see the rescued jobs as pending
            params = (c.at,) if queue_list is None else (c.at, *queue_list)
            statement = q.claim_statement(None if queue_list is None else len(queue_list))
            found = c.conn.execute(statement, params).fetchone()
            if found is None:
                return None
            row = c.job(found[0])
            until = decide.lease_until(c.now, lease_seconds)
            c.append(found[0], decide.claim(row, worker_id, until), row=row)
            return q.row_dict_to_job(row)

        return self._write("claiming a job", step)

    def heartbeat(
        self, job_id: str, *, worker_id: str | None = None, lease: float | timedelta | None = None
    ) -> None:
        """Record that the job's worker is alive and extend its lease (by ``lease`` seconds from
        now, or by the length the claim granted). With ``worker_id``, refuse with `LeaseLost` when
        that worker no longer holds the job."""
        check.text("job_id", job_id)
        check.text("worker_id", worker_id, optional=True, nonempty=True)
        lease_seconds = None if lease is None else seconds("lease", lease)

        def step(c: _Command) -> None:
            row = c.job(job_id)
            length = lease_seconds or row["lease_seconds"] or DEFAULT_LEASE
            until = decide.lease_until(c.now, length)
            c.append(job_id, decide.heartbeat(row, worker_id, until), row=row)

        self._write("recording a heartbeat", step)

    def complete(
        self,
        job_id: str,
        summary: str,
        result_status: str = "success",
        cost_cents: float = 0.0,
        duration_seconds: int | None = None,
        *,
        worker_id: str | None = None,
    ) -> None:
        """Mark a running job completed with its result. ``duration_seconds`` defaults to the time
        since the job was claimed."""
        check.text("job_id", job_id)
        check.text("summary", summary)
        check.text("result_status", result_status)
        cost = check.finite("cost_cents", cost_cents)
        check.integer("duration_seconds", duration_seconds, minimum=0, optional=True)
        check.text("worker_id", worker_id, optional=True, nonempty=True)

        def step(c: _Command) -> None:
            row = c.job(job_id)
            duration = duration_seconds
            if duration is None:
                started = datetime.fromisoformat(row["started_at"] or c.at)
                duration = max(0, round((c.now - started).total_seconds()))
            events = decide.complete(row, worker_id, summary, result_status, cost, duration)
            c.append(job_id, events, row=row)

        self._write("completing a job", step)

    def fail(
        self,
        job_id: str,
        error: str,
        *,
        worker_id: str | None = None,
        retry: bool = True,
        error_type: str | None = None,
    ) -> None:
        """Record a failed attempt. With attempts left (and ``retry``), the job goes back to
        pending after a backoff (see `RetryPolicy`); otherwise it is failed for good.
        ``error_type``: the exception's type name, recorded in the event beside the message."""
        check.text("job_id", job_id)
        check.text("error", error)
        check.text("worker_id", worker_id, optional=True, nonempty=True)
        check.text("error_type", error_type, optional=True, nonempty=True)
        if not isinstance(retry, bool):
            raise InvalidArgument("retry", retry, "expected True or False")
        policy, rng = self._retry_policy, self._rng

        def step(c: _Command) -> None:
            row = c.job(job_id)
            events = decide.fail(row, worker_id, error, retry, c.now, policy, rng, error_type)
            c.append(job_id, events, row=row)

        self._write("failing a job", step)

    def cancel(self, job_id: str, *, reason: str | None = None) -> bool:
        """Cancel a pending or running job; False (and nothing written) when it already ended."""
        check.text("job_id", job_id)
        check.text("reason", reason, optional=True)

        def step(c: _Command) -> bool:
            events = decide.cancel(c.job(job_id), reason)
            if events:
                c.append(job_id, events)
            return bool(events)

        return self._write("cancelling a job", step)

    def release(self, job_id: str, *, worker_id: str, reason: str | None = None) -> None:
        """Give a running job back unfinished (the attempt does not count): for a worker that is
        shutting down before its handler finished."""
        check.text("job_id", job_id)
        check.text("worker_id", worker_id, nonempty=True)
        check.text("reason", reason, optional=True)
        self._write(
            "releasing a job",
            lambda c: c.append(job_id, decide.release(c.job(job_id), worker_id, reason)),
        )

    def log_event(
        self,
        job_id: str,
        type: EventType | str,
        payload: Any = None,
        *,
        expected_version: int | None = None,
        worker_id: str | None = None,
    ) -> int:
        """Append a worker activity event (started, progress, tool_call, error) to a pending or
        running job; returns the job's new version. ``expected_version`` makes the append
        conditional: `ConcurrencyError` when the job moved on. With ``worker_id`` the append is
        fenced like `heartbeat`: `LeaseLost` unless that worker holds the running job; the event
        records the worker and the attempt."""
        check.text("job_id", job_id)
        check.text("worker_id", worker_id, optional=True, nonempty=True)
        event_type = arguments.activity_type(type)
        # Encoded once here; the event carries the bytes (msgspec.Raw) into the log as they are.
        encoded = msgspec.Raw(check.json_bytes("payload", payload))
        if expected_version is not None:
            check.integer("expected_version", expected_version, minimum=0)

        def step(c: _Command) -> int:
            row = c.job(job_id)
            events = decide.log(row, event_type, encoded, worker_id)
            c.append(job_id, events, expected_version, row=row)
            return int(row["version"])

        return self._write("logging an event", step)

    def rescue_expired(self) -> int:
        """Requeue (or fail, with no attempts left) every running job whose lease ran out."""
        return self._write("rescuing expired leases", lambda c: _rescue(c, batch=False))

    # -- export and import ------------------------------------------------------------------

    def export_events(self, after: int = 0) -> Iterator[bytes]:
        """The log after ``after`` as JSON lines (bytes, no newline), in position order.

        Read a page at a time, so no lock or read transaction is held while the caller consumes
        the lines; positions only grow, so paging by position neither skips nor repeats."""
        position = check.integer("after", after, minimum=0)
        while True:
            page = self._read(
                "exporting events",
                functools.partial(export_page, self._conn, position, EXPORT_PAGE),
            )
            yield from (line for _, line in page)
            if len(page) < EXPORT_PAGE:
                return
            position = page[-1][0]

    def import_events(self, lines: Iterable[bytes | str]) -> rebuild.ReplayReport:
        """Load exported lines into this new or empty ledger and replay (all or nothing).

        Every line is checked first (see `transfer.Importer`); a refusal is an `InvalidArgument`
        naming the line, and writes nothing. The file itself was created when this `Ledger`
        opened it, before any line was read, so a refused import into a new path leaves an empty
        ledger there: remove it if you do not want it (``ledger import`` does that for you)."""
        importer = Importer()
        try:
            return self._rebuild("importing events", None, lambda: importer.load(self._conn, lines))
        except CorruptEvent as e:  # the replay after the load refused one of its events
            raise importer.refusal(e) from e

    # -- replay and verify -------------------------------------------------------------------

    def replay(self, progress: rebuild.Progress | None = None) -> rebuild.ReplayReport:
        """Rebuild every projection from the whole log in one transaction (all or nothing)."""
        return self._rebuild("replaying the log", progress)

    def _rebuild(
        self, doing: str, progress: rebuild.Progress | None, before: Callable[[], object] = object
    ) -> rebuild.ReplayReport:
        """``before`` (in the same transaction), then a rebuild of every projection."""
        started = time.perf_counter()

        def work() -> rebuild.ReplayReport:
            before()
            count, last = rebuild.rebuild(self._conn, self._projections, progress)
            jobs = int(self._conn.execute(q.count_statement(False, False)).get)
            return rebuild.ReplayReport(count, jobs, time.perf_counter() - started, last)

        with self._lock:
            return run_write(self._conn, doing, work)

    def verify(self) -> rebuild.VerifyReport:
        """Fold the log into a scratch database and compare it with the live projection."""
        return self._read("verifying", lambda: rebuild.verify(self._conn, self._projections))


def _create(c: _Command, created: ev.JobCreated, batch: dict[str, str]) -> str:
    key = created.idempotency_key
    if key is not None:
        existing = batch.get(key)  # used earlier in this same batch
        if existing is None:
            found = c.conn.execute(q.idempotency_statement, (key,)).fetchone()
            existing = None if found is None else str(found[0])
        if existing is not None:
            return existing
    job_id = str(uuid.uuid4())
    c.append(job_id, [created], new=True)
    if key is not None:
        batch[key] = job_id
    return job_id


def _rescue(c: _Command, batch: bool) -> int:
    statement = q.expired_batch_statement if batch else q.expired_statement
    expired = c.conn.execute(statement, (c.at,)).fetchall()
    for (job_id,) in expired:
        c.append(str(job_id), decide.rescue(c.job(str(job_id))))
    return len(expired)


__all__ = ["DEFAULT_LEASE", "Ledger"]
