"""`Worker`: the claim loop every caller would otherwise write, with heartbeats and true outcomes.

A worker claims up to ``concurrency`` jobs and runs ``handler(job, ctx)`` on each: an ``async
def`` handler as a task on one event loop (a thread of the worker's own), a plain one in a thread
of its own. One heartbeat thread keeps every lease alive; the worker's own thread claims, watches
deadlines and signals, and records what really happened (the outcomes of jobs that end together
are recorded in one write transaction). Why a thread (or a task) per handler: so that a stop can
stop *waiting* for a handler that will not return (grace period, second signal) and still release
the job it holds.

The rules, all in one place:

- A handler returns a `Result`, a ``str`` (the summary), ``None`` (empty summary) or any other
  JSON-native value or msgspec Struct (the job's ``result``, summary empty): the job completes
  and `Job.result` reads the value back. A value the ledger refuses (a set, a NaN, a cost that
  is not finite, text that is not valid Unicode) fails the job with an error saying what was
  wrong. An exception fails it too (a retry when attempts are left), with its type, message and
  traceback recorded; `ledger.Permanent`, or an exception type in ``no_retry`` for the job's
  queue, fails it for good at once.
- Timeouts: a job's ``timeout`` (or the worker's ``timeouts[queue]`` default) bounds one attempt.
  Past it the attempt fails with error type ``Timeout`` (retried like any failure): an async
  handler's task is cancelled; a plain handler sees ``ctx.timed_out`` (``ctx.check()`` raises) and
  the worker stops waiting for it.
- Stopping is not cancelling. ``ctx.cancelled``: the job was cancelled or is no longer this
  worker's; nothing the handler does is recorded any more. ``ctx.stopping``: the worker was asked
  to stop (SIGTERM, Ctrl-C, `Worker.stop`); it claims nothing more and every handler in flight has
  ``grace_period`` seconds to finish. While stopping, a handler that returns a value finished its
  work and the job completes; one that returns ``None`` or raises gave up, and the job is
  *released*: back to pending, the attempt not counted. A handler still running when the grace
  period ends, or at a second signal, is abandoned (an async one is cancelled) and its job
  released. An interrupted job is never a success.
- A handler that raises ``KeyboardInterrupt`` or ``SystemExit`` interrupts the worker: its job is
  released and the worker stops (the others in flight get the grace period). No exception, of
  any kind, leaves a job running.
- Limits: ``queue_concurrency`` (at most N jobs of a queue at once) and ``rate_limits`` (at most
  R claims of a queue per second) hold *per worker process*, not across workers.
- The storage going away (`StorageUnavailable`: a PostgreSQL server restarting, failing over,
  unreachable) or staying busy (`LedgerBusy`: another process held the write lock for the whole
  busy timeout) stops nothing: the worker claims nothing meanwhile, keeps every outcome it could
  not record, and tries again after a back-off (0.1 s, doubling, at most `OUTAGE_MAX_WAIT`),
  one WARNING when it begins and one when it ends. Handlers in flight run on (their heartbeats
  fail meanwhile, logged); an outcome is recorded when the storage is back (with the time the
  handler ran), or, when the worker stops first, left to the lease (the job is rescued after it
  expires; the exit status is 1). With nothing in flight, a worker told to stop when idle ends
  with the error instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import os
import queue as queue_module
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from types import FrameType
from typing import Any

import msgspec

from .api import Ledger
from .domain import commands
from .domain import validate as check
from .domain.model import EventType, Job, Result
from .domain.timeutil import seconds
from .errors import (
    InvalidArgument,
    InvalidTransition,
    JobInterrupted,
    LeaseLost,
    LedgerBusy,
    LedgerError,
    Permanent,
    StorageError,
    StorageUnavailable,
)
from .service import DEFAULT_LEASE

log = logging.getLogger("ledger.worker")

Handler = Callable[[Job, "JobContext"], Any]

DEFAULT_GRACE = 30.0
MAX_CONCURRENCY = 10_000
LOCAL_RECHECK = 1.0  # seconds: the longest idle wait while a local process holds a job
_CLAIM_BATCH = 16  # the most jobs claimed in one write transaction
_TICK = 0.05  # how often the worker's thread looks at signals and deadlines when nothing happens
_MAX_TEXT = 64 * 1024  # an error message or traceback longer than this is clipped in the middle
TIMEOUT_ERROR = "Timeout"  # the error_type of an attempt that ran past its timeout
OUTAGE_MAX_WAIT = 5.0  # seconds: the longest back-off while the storage is unavailable
_OUTAGE_FIRST_WAIT = 0.1
# What the worker waits out instead of stopping: the same call may well succeed later.
_TRANSIENT = (StorageUnavailable, LedgerBusy)


class _Outage:
    """Whether the storage is unavailable (or busy), and when the worker tries it again: a
    back-off that doubles from `_OUTAGE_FIRST_WAIT` to `OUTAGE_MAX_WAIT`. Logged once as it
    begins (WARNING) and once as it ends (WARNING, with how long it lasted), each further
    failure at DEBUG."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time of the first failure
        self.until = 0.0  # no storage call before this (monotonic)
        self._wait = _OUTAGE_FIRST_WAIT

    def waiting(self, now: float) -> bool:
        return now < self.until

    def failed(self, doing: str, error: StorageUnavailable | LedgerBusy) -> None:
        now = time.monotonic()
        level = logging.DEBUG
        if self.since is None:
            self.since, self._wait, level = now, _OUTAGE_FIRST_WAIT, logging.WARNING
        log.log(
            level,
            "the storage is %s (%s: %s); trying again in %.1fs, claiming nothing meanwhile",
            "busy" if isinstance(error, LedgerBusy) else "unavailable",
            doing,
            error,
            self._wait,
        )
        self.until = now + self._wait
        self._wait = min(self._wait * 2, OUTAGE_MAX_WAIT)

    def ended(self) -> None:
        if self.since is not None:
            log.warning("the storage is available again after %.1fs", time.monotonic() - self.since)
        self.since, self.until = None, 0.0


class JobContext:
    """What a handler gets besides its job: a way to log activity and run durable steps, and the
    flags ``cancelled`` (the job is not ours any more), ``stopping`` (the worker wants to stop)
    and ``timed_out`` (the attempt ran past its timeout)."""

    def __init__(self, ledger: Ledger, job: Job, worker_id: str) -> None:
        self.job = job
        self.worker_id = worker_id
        self._ledger = ledger
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._timed_out = threading.Event()
        self._steps: dict[str, Any] | None = None  # name -> recorded result, read once

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or is no longer this worker's (lease lost, timed
        out, or released at a forced stop). Nothing the handler returns is recorded after that."""
        return self._lost.is_set()

    @property
    def lost(self) -> bool:
        """Same as ``cancelled`` (kept for handlers written against 0.1)."""
        return self._lost.is_set()

    @property
    def stopping(self) -> bool:
        """True once the worker was asked to stop: finish quickly and return a value to have the
        job completed, or return None / raise to have it released."""
        return self._stopping.is_set()

    @property
    def timed_out(self) -> bool:
        """True once the attempt ran past its timeout: the worker has failed it already (a retry
        when attempts are left); stop working on it."""
        return self._timed_out.is_set()

    def check(self) -> None:
        """Raise `JobInterrupted` when the job timed out, was cancelled or the worker is stopping,
        so a handler can bail out with one call; the worker releases the job (or, if it is not
        ours any more, leaves it alone). Never makes the job a failure by itself."""
        if self._timed_out.is_set():
            raise JobInterrupted(self.job.id, "the attempt ran past its timeout")
        if self._lost.is_set():
            raise JobInterrupted(self.job.id, "the job was cancelled or is no longer this worker's")
        if self._stopping.is_set():
            raise JobInterrupted(self.job.id, "the worker is stopping")

    def log(self, type: EventType | str, payload: Any = None) -> bool:
        """Append an activity event, fenced: False (and ``cancelled`` set) when the job is no
        longer this worker's, so a worker that lost its lease cannot write into another
        worker's attempt."""
        try:
            self._ledger.log_event(
                self.job.id, type, payload, worker_id=self.worker_id, attempt=self.job.attempts
            )
        except (LeaseLost, InvalidTransition):
            self._lost.set()
            return False
        return True

    def log_events(self, events: Iterable[tuple[EventType | str, Any]]) -> bool:
        """Append many activity events in one commit (`Ledger.log_events`), fenced as `log`:
        False (and ``cancelled`` set, nothing written) when the job is no longer this
        worker's."""
        try:
            self._ledger.log_events(
                self.job.id, events, worker_id=self.worker_id, attempt=self.job.attempts
            )
        except (LeaseLost, InvalidTransition):
            self._lost.set()
            return False
        return True

    def charge(self, cents: float, detail: Any = None) -> None:
        """Record spending of this attempt (a ``charged`` event, fenced by worker and attempt).
        `BudgetExceeded` (nothing written) when the job would pass its ``max_cost_cents`` or its
        chat's budget: stop spending. `JobInterrupted` (``cancelled`` set) when the job is no
        longer this worker's: the spending is not recorded on another worker's attempt."""
        try:
            self._ledger.charge(
                self.job.id,
                cents,
                worker_id=self.worker_id,
                detail=detail,
                attempt=self.job.attempts,
            )
        except (LeaseLost, InvalidTransition) as e:
            self._lost.set()
            raise JobInterrupted(self.job.id, f"charge not recorded: {e}") from e

    # -- durable steps -----------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` once for this job and record its result (JSON-native; a Struct is stored
        as its fields) as a ``step`` event; when the job already has a step ``name`` (recorded
        by this attempt or an earlier one, say before a crash), return that result instead of
        calling ``fn`` again. Returns the value as recorded (what a retry gets too).

        An ``async def`` ``fn`` makes this a coroutine: ``await ctx.step("llm", call_llm)``.
        The record is fenced like every write of the attempt: when the job is no longer this
        worker's, `JobInterrupted` is raised and ``fn``'s result is not recorded."""
        check.text("name", name, nonempty=True)
        if not callable(fn):
            raise InvalidArgument("fn", fn, "expected a function taking no arguments")
        if _is_async(fn):
            return self._async_step(name, fn)
        found, value = self._recorded(name)
        if found:
            return value
        return self._record(name, fn())

    async def _async_step(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        found, value = await asyncio.to_thread(self._recorded, name)
        if found:
            return value
        result = await fn()
        return await asyncio.to_thread(self._record, name, result)

    def _recorded(self, name: str) -> tuple[bool, Any]:
        if self._steps is None:
            events = self._ledger.job_events(self.job.id, types=[EventType.STEP])
            steps: dict[str, Any] = {}
            for event in events:
                steps.setdefault(event.payload["name"], event.payload.get("result"))
            self._steps = steps
        if name in self._steps:
            log.debug("job %s: step %r already recorded; not run again", self.job.id, name)
            return True, self._steps[name]
        return False, None

    def _record(self, name: str, value: Any) -> Any:
        value = _plain_value(value)
        encoded = check.json_bytes(f"step {name!r} result", value)
        try:
            self._ledger.record_step(
                self.job.id, name, value, worker_id=self.worker_id, attempt=self.job.attempts
            )
        except (LeaseLost, InvalidTransition) as e:
            self._lost.set()
            raise JobInterrupted(self.job.id, f"step {name!r} not recorded: {e}") from e
        recorded = msgspec.json.decode(encoded)
        assert self._steps is not None
        self._steps[name] = recorded
        return recorded


class _Run:
    """One job in flight: its context, how its handler runs, and what it handed back."""

    __slots__ = (
        "async_future",
        "context",
        "deadline",
        "ended",
        "error",
        "error_logged",
        "error_uncertain",
        "finished",
        "job",
        "next_beat",
        "started",
        "timeout",
        "value",
    )

    def __init__(self, job: Job, context: JobContext, timeout: float | None, beat: float) -> None:
        self.job = job
        self.context = context
        self.started = time.monotonic()
        self.timeout = timeout
        self.deadline = None if timeout is None else self.started + timeout
        self.next_beat = self.started + beat
        self.finished = False
        self.ended = 0.0  # monotonic time the handler returned or raised (set before it is
        # handed to the worker's thread, which alone settles it)
        self.value: Any = None
        self.error: BaseException | None = None
        self.error_logged = False  # its error event committed (a fail kept for later skips it)
        self.error_uncertain = False  # its error event's write was cut off while committing
        self.async_future: concurrent.futures.Future[None] | None = None

    def interrupt(self) -> None:
        """Cancel an async handler's task (a thread cannot be interrupted: it sees the flags)."""
        if self.async_future is not None:
            self.async_future.cancel()


class Worker:
    """Claims jobs and runs ``handler(job, ctx)`` on each; see the module docstring for the rules.

    ``concurrency`` (default 1): how many jobs run at once. ``grace_period`` (seconds or a
    timedelta, default 30; 0 releases at once): how long a stop waits for the handlers in flight
    before releasing their jobs. ``timeouts``: queue -> default timeout of its jobs (a job's own
    ``timeout`` wins). ``no_retry``: queue -> exception types that fail a job of that queue for
    good (``"*"``: every queue). ``queue_concurrency``: queue -> most jobs of it at once in this
    worker; ``rate_limits``: queue -> most claims per second in this worker.

    After `run` returns, ``stop_reason`` says why it stopped and ``exit_status`` is what a process
    should exit with (0 after a clean stop; 128 + the signal's number when a handler had to be
    abandoned, 1 when that happened without a signal; 130 or the code of a
    ``KeyboardInterrupt``/``SystemExit`` raised by a handler). ``abandoned`` is true when a
    handler thread may still be running.
    """

    def __init__(
        self,
        ledger: Ledger,
        handler: Handler,
        *,
        worker_id: str | None = None,
        queues: Sequence[str] | None = None,
        lease: float | timedelta = DEFAULT_LEASE,
        heartbeat_every: float | None = None,
        poll_interval: float = 1.0,
        grace_period: float | timedelta = DEFAULT_GRACE,
        concurrency: int = 1,
        timeouts: Mapping[str, float | timedelta] | None = None,
        no_retry: Mapping[str, Sequence[type[BaseException]]] | None = None,
        queue_concurrency: Mapping[str, int] | None = None,
        rate_limits: Mapping[str, float] | None = None,
    ) -> None:
        if not callable(handler):
            raise InvalidArgument("handler", handler, "expected a callable handler(job, ctx)")
        self.ledger = ledger
        self.handler = handler
        self.is_async = _is_async(handler)
        if worker_id is not None:
            check.key("worker_id", worker_id)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        checked = commands.queues(queues)
        self.queues = None if checked is None else list(checked)
        self.lease = seconds("lease", lease)
        self.heartbeat_every = seconds("heartbeat_every", heartbeat_every or self.lease / 3)
        self.poll_interval = seconds("poll_interval", poll_interval)
        self.grace_period = _grace(grace_period)
        self.concurrency = check.integer("concurrency", concurrency, minimum=1)
        if self.concurrency > MAX_CONCURRENCY:
            raise InvalidArgument("concurrency", concurrency, f"at most {MAX_CONCURRENCY}")
        self.timeouts = {
            q: seconds(f"timeouts[{q!r}]", t) for q, t in _mapping("timeouts", timeouts).items()
        }
        self.no_retry = {
            q: _exception_types(q, types) for q, types in _mapping("no_retry", no_retry).items()
        }
        self.queue_concurrency = {
            q: check.integer(f"queue_concurrency[{q!r}]", n, minimum=1)
            for q, n in _mapping("queue_concurrency", queue_concurrency).items()
        }
        self.rate_limits = {q: _rate(q, r) for q, r in _mapping("rate_limits", rate_limits).items()}
        self.stop_reason: str | None = None
        self.exit_status = 0
        self.abandoned = False
        self._stop = threading.Event()
        self._force = threading.Event()
        self._wake = threading.Event()  # a handler finished, the ledger changed, a stop came
        self._finished: queue_module.SimpleQueue[_Run] = queue_module.SimpleQueue()
        self._runs: dict[str, _Run] = {}
        self._runs_lock = threading.Lock()
        self._claim_due = 0.0
        self._outage = _Outage()
        # Outcomes (and releases) not recorded yet because the storage was unavailable, with
        # their jobs: recorded first when it is back (`_record`).
        self._unrecorded: list[tuple[Callable[[], None], str]] = []
        self._next_claim: dict[str, float] = {}  # queue -> earliest next claim (rate limits)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._signals = 0  # counted by the signal handler, which touches nothing else
        self._signals_seen = 0
        self._last_signal = 0
        self._stop_signal = 0  # the signal that stopped the worker, if one did

    # -- control -----------------------------------------------------------------------------

    def stop(self, reason: str = "stop() called") -> None:
        """Ask the worker to stop: it claims nothing more, and the handlers in flight get the
        grace period to finish."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        for run in self._in_flight():
            run.context._stopping.set()
        self._wake.set()

    def force_stop(self, reason: str = "force_stop() called") -> None:
        """Stop now: the jobs in flight are released without waiting for their handlers."""
        self.stop(reason)
        self._force.set()
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------

    def run(self, *, max_jobs: int | None = None, stop_when_idle: bool = False) -> int:
        """Work jobs until stopped, ``max_jobs`` were handled, or (with ``stop_when_idle``) no job
        is claimable right now and none is in flight. Returns how many jobs were handled
        (claimed)."""
        restore = self._install_signal_handlers()
        queues = ", ".join(self.queues) if self.queues else "all"
        log.info(
            "worker %s started: ledger %s, queues %s, pid %d, lease %gs, grace %gs%s",
            self.worker_id,
            self.ledger.path,
            queues,
            os.getpid(),
            self.lease,
            self.grace_period,
            f", concurrency {self.concurrency}" if self.concurrency > 1 else "",
        )
        beating = threading.Event()
        beater = threading.Thread(
            target=self._heartbeats, args=(beating,), name="ledger-heartbeat", daemon=True
        )
        beater.start()
        handled = 0
        try:
            handled = self._loop_until_done(max_jobs, stop_when_idle)
        finally:
            beating.set()
            beater.join()
            self._close_loop()
            restore()
            if self.stop_reason is None and max_jobs is not None and handled >= max_jobs:
                self.stop_reason = f"handled {max_jobs} job(s) (max_jobs)"
            log.info(
                "worker %s stopped (%s): %d job(s) handled",
                self.worker_id,
                self.stop_reason or "loop ended",
                handled,
            )
        return handled

    def run_once(self) -> bool:
        """Claim and handle one job (waiting for its handler); False when none was claimable."""
        return self.run(max_jobs=1, stop_when_idle=True) == 1

    def _loop_until_done(self, max_jobs: int | None, stop_when_idle: bool) -> int:
        handled = 0
        self._claim_due = 0.0  # monotonic time of the next claim attempt (after an empty one)
        grace_ends: float | None = None
        try:
            while True:
                self._take_signals()
                if self._settle_finished():
                    self._claim_due = 0.0  # a slot is free again
                self._check_deadlines()
                if self._stop.is_set():
                    if not self._runs and not self._unrecorded:
                        break
                    now = time.monotonic()
                    if grace_ends is None:
                        grace_ends = now + self.grace_period
                        log.info(
                            "waiting up to %gs for %d handler(s) to finish",
                            self.grace_period,
                            len(self._runs),
                        )
                    if self._force.is_set():
                        self._abandon_all(self.stop_reason or "forced stop")
                        break
                    if now >= grace_ends:
                        why = f"the handler did not finish within the {self.grace_period:g}s grace"
                        self._abandon_all(why)
                        break
                    self._wait(min(_TICK, grace_ends - now))
                    continue
                room = self.concurrency - len(self._runs)
                if max_jobs is not None:
                    room = min(room, max_jobs - handled)
                if room <= 0:
                    if not self._runs and not self._unrecorded:  # max_jobs handled, all done
                        break
                    self._wait(_TICK)
                    continue
                now = time.monotonic()
                if self._outage.waiting(now):
                    self._wait(min(_TICK, self._outage.until - now))
                    continue
                if now >= self._claim_due:
                    claimed, failed = self._claim_up_to(room)
                    handled += claimed
                    if failed is not None:
                        if stop_when_idle and not self._runs and not self._unrecorded:
                            raise failed  # run_once, --stop-when-idle: said, not waited out
                        continue
                    if claimed == room:
                        continue
                    if (
                        stop_when_idle
                        and not self._runs
                        and not self._unrecorded
                        and not self._rate_waiting(now)
                    ):
                        self.stop_reason = self.stop_reason or "no claimable job (--stop-when-idle)"
                        break
                    self._claim_due = self._next_claim_time(now)
                self._idle()
        except BaseException:
            # The worker's own thread is interrupted (an error of the ledger, an interrupt
            # outside signal handling): no job may be left running.
            self._abandon_all("the worker's loop was interrupted")
            raise
        finally:
            self._left_unrecorded()
        return handled

    def _left_unrecorded(self) -> None:
        """The worker stops with outcomes the storage never took: said, and the exit status
        is not 0 (each job stays running until its lease expires, then is rescued)."""
        if self._unrecorded:
            jobs = ", ".join(job_id for _, job_id in self._unrecorded)
            log.error(
                "stopping with %d outcome(s) not recorded (the storage is unavailable or busy): "
                "jobs %s stay running until their leases expire, then are rescued",
                len(self._unrecorded),
                jobs,
            )
            self._unrecorded = []
            self.exit_status = self.exit_status or 1

    def _idle(self) -> None:
        """Wait a little (at most `_TICK`, at most until the next claim is due) for something to
        do; when the ledger changed, the next claim is due at once.

        With no job in flight: the backend's wake-up (a new job, a retry coming due: within
        milliseconds), as a single worker always did. With jobs in flight: a handler ending
        (which frees a slot and is recorded at once); a job someone else creates meanwhile is
        seen at the next end, or within ``poll_interval``."""
        timeout = min(_TICK, self._claim_due - time.monotonic())
        if timeout <= 0:
            return
        if self._runs:
            self._wait(timeout)
            return
        try:
            changed = self.ledger._wait_for_change(timeout, self._wake)
        except _TRANSIENT as e:
            self._outage.failed("waiting for changes", e)
            return
        woken = self._wake.is_set()
        self._wake.clear()
        if changed and not woken:
            self._claim_due = 0.0  # the ledger changed: it may hold a claimable job

    def _wait(self, timeout: float) -> None:
        """Sleep until a handler finishes, the ledger changes, a stop comes, or ``timeout``."""
        if (timeout > 0 and self._wake.wait(timeout)) or timeout <= 0:
            self._wake.clear()

    def _rate_waiting(self, now: float) -> bool:
        """Whether a rate-limited queue gets room later (so the worker is not idle yet)."""
        return any(at > now for at in self._next_claim.values())

    def _next_claim_time(self, now: float) -> float:
        """After an empty claim: the next try is at most ``poll_interval`` away, sooner when a
        rate-limited queue gets room again (and at once when the ledger changes). While another
        process on this host holds a running job, at most `LOCAL_RECHECK` away: its death
        changes nothing in the database, and the next claim rescues its job (`ledger.holder`)."""
        due = now + self.poll_interval
        if self.poll_interval > LOCAL_RECHECK and self._gone_holders_possible():
            due = now + LOCAL_RECHECK
        for at in self._next_claim.values():
            if at > now:
                due = min(due, at)
        return due

    def _gone_holders_possible(self) -> bool:
        try:
            return self.ledger._gone_holders_possible()
        except _TRANSIENT as e:  # a read: the outage is waited out as a claim's is
            self._outage.failed("looking for local holders", e)
            return True

    # -- claiming ----------------------------------------------------------------------------

    def _claim_up_to(self, room: int) -> tuple[int, LedgerError | None]:
        """Claim up to ``room`` jobs: several in one write transaction when the worker has room
        for them (each claim is the ledger's own claim command, so every rule of a claim holds).
        Returns how many, and the error when the storage was unavailable or busy (then the
        worker waits it out)."""
        claimed = 0
        while claimed < room and not self._stopping_now():
            try:
                queues = self._claimable_queues()
                if isinstance(queues, tuple):  # every queue is at its limit
                    break
                n = min(room - claimed, _CLAIM_BATCH) if self._unlimited() else 1
                jobs = self._claim(queues, n)
            except _TRANSIENT as e:
                self._outage.failed("claiming", e)
                return claimed, e
            self._outage.ended()
            for job in jobs:
                self._start(job)
            claimed += len(jobs)
            if len(jobs) < n:
                break
        return claimed, None

    def _unlimited(self) -> bool:
        return not self.queue_concurrency and not self.rate_limits

    def _claim(self, queues: list[str] | None, n: int) -> list[Job]:
        claim = functools.partial(
            self.ledger.claim, self.worker_id, queues=queues, lease=self.lease
        )
        if n == 1:
            job = claim()
            return [] if job is None else [job]
        found = self.ledger._service.batch("claiming jobs", [claim] * n)
        jobs = [job for job in found if isinstance(job, Job)]
        refused = [e for e in found if isinstance(e, LedgerError)]
        if refused:  # cannot happen (a claim only takes a claimable job): say so, loudly
            log.error("a claim of a batch was refused: %s", refused[0])
        return jobs

    def _claimable_queues(self) -> list[str] | tuple[()] | None:
        """The queues a claim may take from now: the worker's, less those at their concurrency
        or rate limit (``()``: none). Without limits, simply the worker's queues."""
        if not self.queue_concurrency and not self.rate_limits:
            return self.queues
        now = time.monotonic()
        running: dict[str, int] = {}
        for run in self._runs.values():
            running[run.job.queue] = running.get(run.job.queue, 0) + 1
        full = {q for q, n in self.queue_concurrency.items() if running.get(q, 0) >= n}
        full |= {q for q, at in self._next_claim.items() if at > now}
        if not full:
            return self.queues
        names = self.queues if self.queues is not None else self._pending_queues()
        allowed = [q for q in names if q not in full]
        return allowed or ()

    def _pending_queues(self) -> list[str]:
        """Every queue with a pending job (for a worker on all queues that must leave some out)."""
        counts = self.ledger.stats().counts.get("pending", {})
        return sorted(q for q, n in counts.items() if n)

    def _start(self, job: Job) -> None:
        log.info(
            "claimed job %s (queue %s, attempt %d of %d)",
            job.id,
            job.queue,
            job.attempts,
            job.max_attempts,
        )
        rate = self.rate_limits.get(job.queue)
        if rate is not None:
            now = time.monotonic()
            self._next_claim[job.queue] = max(now, self._next_claim.get(job.queue, now)) + 1 / rate
        timeout = job.timeout if job.timeout is not None else self.timeouts.get(job.queue)
        context = JobContext(self.ledger, job, self.worker_id)
        run = _Run(job, context, timeout, self.heartbeat_every)
        with self._runs_lock:
            self._runs[job.id] = run
        if self._stop.is_set():  # the stop came with the claim: do not start the handler
            context._stopping.set()
            self._forget(run)
            release = functools.partial(
                self._release, job, "worker stopping before the handler started"
            )
            self._record([(release, job.id)])
            return
        if self.is_async:
            loop = self._event_loop()
            run.async_future = asyncio.run_coroutine_threadsafe(self._call_async(run), loop)
        else:
            thread = threading.Thread(
                target=self._call_sync,
                args=(run,),
                name=f"ledger-handler-{job.id[:8]}",
                daemon=True,  # an abandoned handler must not keep the process alive
            )
            thread.start()
            log.debug("job %s: handler running in thread %s", job.id, thread.name)

    def _in_flight(self) -> list[_Run]:
        with self._runs_lock:
            return list(self._runs.values())

    # -- running handlers --------------------------------------------------------------------

    def _call_sync(self, run: _Run) -> None:
        """A handler thread: every exception, of any kind, is handed to the worker's thread."""
        try:
            run.value = self.handler(run.job, run.context)
        except BaseException as e:  # the worker decides what each means
            run.error = e
        finally:
            run.ended = time.monotonic()
            self._finished.put(run)
            self._wake.set()

    async def _call_async(self, run: _Run) -> None:
        try:
            run.value = await self.handler(run.job, run.context)
        except BaseException as e:  # CancelledError too: the worker knows why it cancelled
            run.error = e
        finally:
            run.ended = time.monotonic()
            self._finished.put(run)
            self._wake.set()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop, in a thread of its own (started at the first async job)."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._loop_thread = threading.Thread(target=serve, name="ledger-loop", daemon=True)
            self._loop_thread.start()
            ready.wait()
            self._loop = loop
        return self._loop

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None:
            return
        if not self.abandoned:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5.0)
            if not thread.is_alive():
                loop.close()
        self._loop = self._loop_thread = None

    # -- deadlines, stops ---------------------------------------------------------------------

    def _check_deadlines(self) -> None:
        """Fail every attempt past its timeout (retried when attempts are left)."""
        now = time.monotonic()
        late = [r for r in self._runs.values() if r.deadline is not None and now >= r.deadline]
        for run in late:
            self._forget(run)
            run.context._timed_out.set()
            run.context._lost.set()  # nothing it does is recorded any more
            run.interrupt()
            message = f"the attempt ran past its timeout of {run.timeout:g}s"
            log.warning("job %s: %s; failing the attempt", run.job.id, message)
            fail = functools.partial(
                self._fail_with, run, message, TIMEOUT_ERROR, None, now - run.started, retry=True
            )
            self._record([(fail, run.job.id)])

    def _abandon_all(self, why: str) -> None:
        """Give every job in flight back while its handler still runs; the handler is left to
        itself (an async one is cancelled; a thread sees ``ctx.cancelled`` and its writes are
        refused) and its outcome is ignored."""
        self._settle_finished()
        runs = self._in_flight()
        if not runs:
            return
        self.abandoned = True
        self.exit_status = 128 + self._stop_signal if self._stop_signal else 1
        for run in runs:
            self._forget(run)
            run.context._lost.set()
            run.interrupt()
            log.warning("abandoning the handler of job %s: %s", run.job.id, why)
        self._record(
            [
                (functools.partial(self._release, r.job, f"worker stopping: {why}"), r.job.id)
                for r in runs
            ]
        )

    def _forget(self, run: _Run) -> None:
        with self._runs_lock:
            self._runs.pop(run.job.id, None)
        run.finished = True

    # -- outcomes ----------------------------------------------------------------------------

    def _settle_finished(self) -> int:
        """Record the outcomes of every handler that ended since the last look (after those
        the storage did not take before), in one write transaction when there are several."""
        done: list[_Run] = []
        while True:
            try:
                run = self._finished.get_nowait()
            except queue_module.Empty:
                break
            if run.finished:  # timed out or abandoned already: its outcome is ignored
                continue
            self._forget(run)
            done.append(run)
        self._record([(functools.partial(self._settle, run), run.job.id) for run in done])
        return len(done)

    def _record(self, calls: list[tuple[Callable[[], None], str]]) -> None:
        """Make each call (each records the outcome of its job through the ledger's commands),
        after those left unrecorded before; several go in one transaction, which locks those
        jobs and their ancestors first, in the lock order, and should that fail they are made
        one by one. While the storage is unavailable, the calls not made are kept for later."""
        calls = self._unrecorded + calls
        self._unrecorded = []
        if not calls:
            return
        if self._outage.waiting(time.monotonic()):
            self._unrecorded = calls
            return
        if len(calls) > 1:
            try:
                self.ledger._service.batch(
                    "recording job outcomes", [c for c, _ in calls], [j for _, j in calls]
                )
                self._outage.ended()
                return
            except _TRANSIENT as e:
                self._unrecorded = calls  # nothing of the batch was written
                self._outage.failed("recording job outcomes", e)
                return
            except LedgerError as e:
                log.warning("recording %d outcomes together failed (%s); one by one", len(calls), e)
        for index, (call, job_id) in enumerate(calls):
            try:
                call()
            except _TRANSIENT as e:
                self._unrecorded = calls[index:]
                self._outage.failed("recording a job's outcome", e)
                return
            except LedgerError as e:  # this one's own error, every time: not the others'
                log.error(
                    "could not record the outcome of job %s (its lease will expire): %s", job_id, e
                )
        self._outage.ended()

    def _settle(self, run: _Run) -> None:
        # how long the handler ran, not until its outcome could be recorded (an outage between)
        duration = run.ended - run.started
        if run.error is not None:
            self._after_error(run, run.error, duration)
        else:
            self._after_return(run, run.value, duration)

    def _after_return(self, run: _Run, value: Any, duration: float) -> None:
        job, context = run.job, run.context
        if context.cancelled:
            log.info(
                "job %s was cancelled or taken over while its handler ran; left as it is", job.id
            )
            return
        if value is None and context.stopping:
            self._release(job, "worker stopping: the handler returned None (gave up)")
            return
        try:
            result = _to_result(value)
        except InvalidArgument as e:
            self._fail(run, e, duration)
            return
        try:
            self.ledger.complete(
                job.id,
                result.summary,
                result.result_status,
                result.cost_cents,
                round(duration),
                worker_id=self.worker_id,
                attempt=job.attempts,
                result=result.result,
            )
        except InvalidArgument as e:
            self._fail(run, e, duration, "the handler's result could not be recorded: ")
        except (LeaseLost, InvalidTransition) as e:
            log.info("job %s not completed: %s", job.id, e)
        else:
            log.info(
                "job %s completed (%s) in %.2fs",
                job.id,
                _clean(str(result.result_status)),
                duration,
            )

    def _after_error(self, run: _Run, error: BaseException, duration: float) -> None:
        job, context = run.job, run.context
        name = _type_name(error)
        if isinstance(error, KeyboardInterrupt | SystemExit):
            self._interrupted_by(error)
        if context.cancelled:
            log.info("job %s was cancelled or taken over; its handler raised %s", job.id, name)
        elif isinstance(error, KeyboardInterrupt | SystemExit) or context.stopping:
            self._release(job, f"worker stopping: the handler raised {name}: {_message(error)}")
        elif isinstance(error, asyncio.CancelledError):
            # Cancelled by nobody the worker knows of (the handler's own code): a failure.
            self._fail(run, error, duration)
        else:
            self._fail(run, error, duration, retry=not self._permanent(job, error))

    def _permanent(self, job: Job, error: BaseException) -> bool:
        if isinstance(error, Permanent):
            return True
        types = self.no_retry.get(job.queue, ()) + self.no_retry.get("*", ())
        return bool(types) and isinstance(error, types)

    def _interrupted_by(self, error: KeyboardInterrupt | SystemExit) -> None:
        """A handler raised an interrupt: the worker stops, with the status it asks for."""
        if isinstance(error, SystemExit):
            code = error.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
        else:
            status = 130
        self.stop(f"the handler raised {_type_name(error)}")
        self.exit_status = status

    def _fail(
        self,
        run: _Run,
        error: BaseException,
        duration: float,
        prefix: str = "",
        *,
        retry: bool = True,
    ) -> None:
        name = _type_name(error)
        message = prefix + (_message(error) or name)
        tb = _clean("".join(traceback.format_exception(error)))
        self._fail_with(run, message, name, tb, duration, retry=retry)

    def _fail_with(
        self,
        run: _Run,
        message: str,
        name: str,
        tb: str | None,
        duration: float,
        *,
        retry: bool,
    ) -> None:
        """Record the failure: an error event with type, message and traceback, then the fail
        itself (with the type), each written so that the failure can always be recorded."""
        job = run.job
        payload = {"error": message, "type": name}
        if not run.error_logged:
            if not (run.error_uncertain and self._error_recorded(job, message)):
                try:
                    if tb is None or not _log_error(
                        self.ledger, job, self.worker_id, {**payload, "traceback": tb}
                    ):
                        _log_error(self.ledger, job, self.worker_id, payload)
                except StorageError as e:  # kept for later: did this one commit after all?
                    run.error_uncertain = run.error_uncertain or e.maybe_committed
                    raise
            # committed now, unless a batch holds it (a failed batch writes none of it)
            run.error_logged = not _in_batch(self.ledger)
        try:
            self.ledger.fail(
                job.id,
                message,
                worker_id=self.worker_id,
                error_type=name,
                attempt=job.attempts,
                retry=retry,
            )
        except (LeaseLost, InvalidTransition) as e:
            log.info("job %s not failed: %s", job.id, e)
            return
        except LedgerError as e:
            if _in_batch(self.ledger) or isinstance(e, _TRANSIENT):
                raise  # the batch fails whole; an outage keeps the outcome for later
            log.error("could not record the failure of job %s (%s): %s", job.id, name, e)
            return
        final = "" if retry else " (not retried)"
        log.info(
            "job %s failed after %.2fs%s: %s: %s",
            job.id,
            duration,
            final,
            name,
            _clip(message, 200),
        )

    def _error_recorded(self, job: Job, message: str) -> bool:
        """Whether this attempt's error event is in the log already: its write was cut off
        while committing (``maybe_committed``), and it may have committed."""
        return any(
            e.attempt == job.attempts
            and e.worker_id == self.worker_id
            and isinstance(e.payload, dict)
            and e.payload.get("error") == message
            for e in self.ledger.job_events(job.id, types=[EventType.ERROR])
        )

    def _release(self, job: Job, reason: str) -> None:
        try:
            self.ledger.release(
                job.id, worker_id=self.worker_id, reason=_clean(reason), attempt=job.attempts
            )
        except (LeaseLost, InvalidTransition) as e:
            log.info("job %s not released: %s", job.id, e)
        except LedgerError as e:
            if _in_batch(self.ledger) or isinstance(e, _TRANSIENT):
                raise  # the batch fails whole; an outage keeps the release for later
            log.error("could not release job %s (its lease will expire): %s", job.id, e)
        else:
            log.info("job %s released (%s)", job.id, _clip(reason, 200))

    # -- heartbeats --------------------------------------------------------------------------

    def _heartbeats(self, done: threading.Event) -> None:
        """One thread for every job in flight: each is heartbeaten ``heartbeat_every`` seconds
        after its claim and its last beat; a beat refused marks that job's context lost."""
        tick = min(self.heartbeat_every, 0.25)
        while not done.wait(tick):
            now = time.monotonic()
            for run in self._in_flight():
                if run.finished or now < run.next_beat:
                    continue
                run.next_beat = now + self.heartbeat_every
                self._beat(run)

    def _beat(self, run: _Run) -> None:
        context = run.context
        try:
            self.ledger.heartbeat(
                context.job.id,
                worker_id=self.worker_id,
                lease=self.lease,
                attempt=context.job.attempts,
            )
        except (LeaseLost, InvalidTransition) as e:
            if run.finished:  # its outcome was recorded while this beat was on its way
                log.debug("heartbeat for job %s after its end: %s", context.job.id, e)
                return
            cancelled = getattr(e, "status", None) == "cancelled"
            log.log(logging.INFO if cancelled else logging.WARNING, "%s", e)
            context._lost.set()
            run.interrupt()  # an async handler's task stops at once; a thread sees the flag
        except LedgerError as e:  # a busy or full disk: keep trying until the lease says no
            log.warning("heartbeat for job %s failed: %s", context.job.id, e)
        else:
            log.debug("heartbeat for job %s", context.job.id)

    # -- signals -----------------------------------------------------------------------------

    def _stopping_now(self) -> bool:
        self._take_signals()
        return self._stop.is_set()

    def _take_signals(self) -> None:
        """Act on signals counted since the last look (in the worker's thread, not in the
        signal handler, which must not take locks): the first stops, the next forces."""
        while self._signals_seen < self._signals:
            self._signals_seen += 1
            name = signal.Signals(self._last_signal).name
            if self._stop.is_set():
                self._stop_signal = self._last_signal
                log.warning("%s again: forcing the stop, releasing the jobs in hand", name)
                self.force_stop(f"{name}, twice")
            else:
                log.info(
                    "%s: stopping (the jobs in hand get %gs; send it again to force)",
                    name,
                    self.grace_period,
                )
                self._stop_signal = self._last_signal
                self.stop(name)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._last_signal = signum
            self._signals += 1

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return restore


def _is_async(fn: object) -> bool:
    """An ``async def`` function (or a callable object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the method itself is what is asked about
    )


def _in_batch(ledger: Ledger) -> bool:
    return getattr(ledger._service._batch, "step", None) is not None


def _plain_value(value: Any) -> Any:
    """A Struct (or a dataclass) as its fields, so a handler may return its own records."""
    if isinstance(value, msgspec.Struct) and not isinstance(value, Result):
        return msgspec.to_builtins(value)
    return value


def _to_result(value: Any) -> Result:
    if isinstance(value, Result):
        if value.result is not None:
            plain = _plain_value(value.result)
            check.json_bytes("handler result", plain)
            return msgspec.structs.replace(value, result=plain)
        return value
    if value is None:
        return Result("")
    if isinstance(value, str):
        return Result(value)
    plain = _plain_value(value)
    check.json_bytes("handler result", plain)  # refused: says what is wrong, and where
    return Result("", result=plain)


def _log_error(ledger: Ledger, job: Job, worker_id: str, payload: dict[str, str]) -> bool:
    """The error event; False when the ledger refused the payload (so a smaller one is tried)."""
    try:
        ledger.log_event(
            job.id, EventType.ERROR, payload, worker_id=worker_id, attempt=job.attempts
        )
    except (LeaseLost, InvalidTransition):
        return True  # not ours any more: the fail below says so too
    except InvalidArgument as e:
        log.warning("could not log the error event of job %s: %s", job.id, e)
        return False
    except LedgerError as e:
        if _in_batch(ledger) or isinstance(e, _TRANSIENT):
            raise  # the batch fails whole; an outage keeps the failure for later
        log.warning("could not log the error event of job %s: %s", job.id, e)
        return False
    return True


def _mapping(name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(name, value, "expected a dict of queue name -> setting")
    for key in value:
        check.text(f"{name} queue", key, nonempty=True)
    return dict(value)


def _exception_types(queue: str, types: Any) -> tuple[type[BaseException], ...]:
    if isinstance(types, type):
        types = (types,)
    if not isinstance(types, Sequence | set | frozenset) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in types
    ):
        raise InvalidArgument(f"no_retry[{queue!r}]", types, "expected a list of exception types")
    return tuple(types)


def _rate(queue: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise InvalidArgument(
            f"rate_limits[{queue!r}]", value, "expected jobs per second: a number above 0"
        )
    return float(value)


def _type_name(error: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Name`` otherwise."""
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _message(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not strand a job
        text = f"<{type(error).__qualname__} whose str() failed>"
    return _clean(text)


def _clean(text: str) -> str:
    """Text the ledger will store: lone surrogates become ``\\udcxx`` escapes, and a very
    long text is clipped in the middle (the start and the end say the most). Always a plain
    str: a str subclass (from an odd ``__str__``) would be refused by the ledger."""
    try:
        text.encode("utf-8")
        if type(text) is not str:
            text = text.encode("utf-8").decode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _clip(text, _MAX_TEXT)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... [{len(text) - 2 * half} characters clipped] ... {text[-half:]}"


def _grace(value: float | timedelta) -> float:
    """Seconds a stop waits for the handler; 0 is allowed (release at once)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return seconds("grace_period", value)
