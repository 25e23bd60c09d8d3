"""`Worker`: the claim loop every caller would otherwise write, with heartbeats and true outcomes.

A worker claims a job and runs ``handler(job, ctx)`` in a thread of its own while a second
thread heartbeats the lease; the worker's own thread waits for the handler and records what
really happened. Why a thread for the handler: so that a stop can stop *waiting* for a handler
that will not return (grace period, second signal) and still release the job it holds.

The rules, all in one place:

- A handler returns a `Result`, a ``str`` (the summary) or ``None`` (empty summary): the job
  completes. Anything else, or a result the ledger refuses (a NaN cost, text that is not valid
  Unicode), fails the job with an error saying what was wrong. An exception fails it too (a retry
  when attempts are left), with its type, message and traceback recorded.
- Stopping is not cancelling. ``ctx.cancelled``: the job was cancelled or is no longer this
  worker's; nothing the handler does is recorded any more. ``ctx.stopping``: the worker was asked
  to stop (SIGTERM, Ctrl-C, `Worker.stop`); the handler has ``grace_period`` seconds to finish.
  While stopping, a handler that returns a `Result` or a ``str`` finished its work and the job
  completes; one that returns ``None`` or raises gave up, and the job is *released*: back to
  pending, the attempt not counted. A handler still running when the grace period ends, or at a
  second signal, is abandoned and its job released. An interrupted job is never a success.
- A handler that raises ``KeyboardInterrupt`` or ``SystemExit`` interrupts the worker: the job is
  released and the worker stops. No exception, of any kind, leaves a job running.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import FrameType
from typing import Any

from .api import Ledger
from .domain import commands
from .domain import validate as check
from .domain.model import EventType, Job, Result
from .domain.timeutil import seconds
from .errors import InvalidArgument, InvalidTransition, JobInterrupted, LeaseLost, LedgerError
from .service import DEFAULT_LEASE

log = logging.getLogger("ledger.worker")

Handler = Callable[[Job, "JobContext"], "Result | str | None"]

DEFAULT_GRACE = 30.0
_TICK = 0.05  # how often the worker's thread looks at signals and the grace deadline
_MAX_TEXT = 64 * 1024  # an error message or traceback longer than this is clipped in the middle


class JobContext:
    """What a handler gets besides its job: a way to log activity, and the two flags
    ``cancelled`` (the job is not ours any more) and ``stopping`` (the worker wants to stop)."""

    def __init__(self, ledger: Ledger, job: Job, worker_id: str) -> None:
        self.job = job
        self.worker_id = worker_id
        self._ledger = ledger
        self._lost = threading.Event()
        self._stopping = threading.Event()

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or is no longer this worker's (lease lost, or
        released at a forced stop). Nothing the handler returns is recorded after that."""
        return self._lost.is_set()

    @property
    def lost(self) -> bool:
        """Same as ``cancelled`` (kept for handlers written against 0.1)."""
        return self._lost.is_set()

    @property
    def stopping(self) -> bool:
        """True once the worker was asked to stop: finish quickly and return a `Result` (or str)
        to have the job completed, or return None / raise to have it released."""
        return self._stopping.is_set()

    def check(self) -> None:
        """Raise `JobInterrupted` when the job was cancelled or the worker is stopping, so a
        handler can bail out with one call; the worker releases the job (or, if it is not ours
        any more, leaves it alone). Never makes the job a failure."""
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


class _Outcome:
    """What the handler thread hands back: a return value or the exception it raised."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Worker:
    """Claims jobs and runs ``handler(job, ctx)`` on each; see the module docstring for the rules.

    ``grace_period`` (seconds or a timedelta, default 30; 0 releases at once): how long a stop
    waits for the handler in hand before releasing its job. After `run` returns,
    ``stop_reason`` says why it stopped and ``exit_status`` is what a process should exit with
    (0 after a clean stop; 128 + the signal's number when a handler had to be abandoned, 1 when
    that happened without a signal; 130 or the code of a ``KeyboardInterrupt``/``SystemExit``
    raised by a handler). ``abandoned`` is true when a handler thread may still be running.
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
    ) -> None:
        if not callable(handler):
            raise InvalidArgument("handler", handler, "expected a callable handler(job, ctx)")
        self.ledger = ledger
        self.handler = handler
        if worker_id is not None:
            check.text("worker_id", worker_id, nonempty=True)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        checked = commands.queues(queues)
        self.queues = None if checked is None else list(checked)
        self.lease = seconds("lease", lease)
        self.heartbeat_every = seconds("heartbeat_every", heartbeat_every or self.lease / 3)
        self.poll_interval = seconds("poll_interval", poll_interval)
        self.grace_period = _grace(grace_period)
        self.stop_reason: str | None = None
        self.exit_status = 0
        self.abandoned = False
        self._stop = threading.Event()
        self._force = threading.Event()
        self._context: JobContext | None = None
        self._signals = 0  # counted by the signal handler, which touches nothing else
        self._signals_seen = 0
        self._last_signal = 0
        self._stop_signal = 0  # the signal that stopped the worker, if one did

    # -- control -----------------------------------------------------------------------------

    def stop(self, reason: str = "stop() called") -> None:
        """Ask the worker to stop: the handler in hand gets the grace period to finish."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        context = self._context
        if context is not None:
            context._stopping.set()

    def force_stop(self, reason: str = "force_stop() called") -> None:
        """Stop now: the job in hand is released without waiting for its handler."""
        self.stop(reason)
        self._force.set()

    # -- the loop ----------------------------------------------------------------------------

    def run(self, *, max_jobs: int | None = None, stop_when_idle: bool = False) -> int:
        """Work jobs until stopped, ``max_jobs`` were handled, or (with ``stop_when_idle``) no job
        is claimable right now. Returns how many jobs were handled (claimed)."""
        restore = self._install_signal_handlers()
        handled = 0
        queues = ", ".join(self.queues) if self.queues else "all"
        log.info(
            "worker %s started: ledger %s, queues %s, pid %d, lease %gs, grace %gs",
            self.worker_id,
            self.ledger.path,
            queues,
            os.getpid(),
            self.lease,
            self.grace_period,
        )
        try:
            while not self._stopping_now() and (max_jobs is None or handled < max_jobs):
                if self.run_once():
                    handled += 1
                elif stop_when_idle:
                    self.stop_reason = self.stop_reason or "no claimable job (--stop-when-idle)"
                    break
                else:
                    self._idle()
        finally:
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
        """Claim and handle one job; False when none was claimable."""
        job = self.ledger.claim(self.worker_id, queues=self.queues, lease=self.lease)
        if job is None:
            return False
        log.info(
            "claimed job %s (queue %s, attempt %d of %d)",
            job.id,
            job.queue,
            job.attempts,
            job.max_attempts,
        )
        context = JobContext(self.ledger, job, self.worker_id)
        self._context = context
        try:
            if self._stopping_now():  # the stop came with the claim: do not start the handler
                context._stopping.set()
                self._release(job, "worker stopping before the handler started")
                return True
            beating = threading.Event()
            beater = threading.Thread(
                target=self._heartbeat,
                args=(context, beating),
                name="ledger-heartbeat",
                daemon=True,
            )
            beater.start()
            try:
                self._handle(job, context)
            finally:
                beating.set()
                beater.join()
        finally:
            self._context = None
        return True

    def _stopping_now(self) -> bool:
        self._take_signals()
        return self._stop.is_set()

    def _idle(self) -> None:
        """Wait for a change in the ledger (a new job, a retry coming due: the backend's
        wake-up, within milliseconds) or at most ``poll_interval`` before the next claim,
        waking for signals and stops."""
        deadline = time.monotonic() + self.poll_interval
        while not self._stopping_now():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.ledger._wait_for_change(min(left, _TICK), self._stop):
                return

    # -- one job -----------------------------------------------------------------------------

    def _handle(self, job: Job, context: JobContext) -> None:
        started = time.monotonic()
        outcome = _Outcome()
        thread = threading.Thread(
            target=_call_handler,
            args=(self.handler, job, context, outcome),
            name=f"ledger-handler-{job.id[:8]}",
            daemon=True,  # an abandoned handler must not keep the process alive
        )
        thread.start()
        log.debug("job %s: handler running in thread %s", job.id, thread.name)
        why = self._wait_for(outcome)
        duration = time.monotonic() - started
        if why is not None:
            self._abandon(job, context, why)
        elif outcome.error is not None:
            self._after_error(job, context, outcome.error, duration)
        else:
            self._after_return(job, context, outcome.value, duration)

    def _wait_for(self, outcome: _Outcome) -> str | None:
        """Wait for the handler; the reason to give up on it (a forced stop, the grace period
        ran out), or None once it returned or raised."""
        grace_ends: float | None = None
        while not outcome.done.wait(_TICK):
            self._take_signals()
            if self._force.is_set():
                return self.stop_reason or "forced stop"
            if self._stop.is_set():
                now = time.monotonic()
                if grace_ends is None:
                    grace_ends = now + self.grace_period
                    log.info("waiting up to %gs for the handler to finish", self.grace_period)
                elif now >= grace_ends:
                    return f"the handler did not finish within the {self.grace_period:g}s grace"
        return None

    def _abandon(self, job: Job, context: JobContext, why: str) -> None:
        """Give the job back while its handler still runs; the handler is left to itself (it
        sees ``ctx.cancelled``, and its log calls are refused) and its outcome is ignored."""
        context._lost.set()
        self.abandoned = True
        self.exit_status = 128 + self._stop_signal if self._stop_signal else 1
        log.warning("abandoning the handler of job %s: %s", job.id, why)
        self._release(job, f"worker stopping: {why}")

    def _after_return(self, job: Job, context: JobContext, value: Any, duration: float) -> None:
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
            self._fail(job, context, e, duration)
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
            )
        except InvalidArgument as e:
            self._fail(job, context, e, duration, "the handler's result could not be recorded: ")
        except (LeaseLost, InvalidTransition) as e:
            log.info("job %s not completed: %s", job.id, e)
        else:
            log.info(
                "job %s completed (%s) in %.2fs",
                job.id,
                _clean(str(result.result_status)),
                duration,
            )

    def _after_error(
        self, job: Job, context: JobContext, error: BaseException, duration: float
    ) -> None:
        name = _type_name(error)
        if isinstance(error, KeyboardInterrupt | SystemExit):
            self._interrupted_by(error)
        if context.cancelled:
            log.info("job %s was cancelled or taken over; its handler raised %s", job.id, name)
        elif isinstance(error, KeyboardInterrupt | SystemExit) or context.stopping:
            self._release(job, f"worker stopping: the handler raised {name}: {_message(error)}")
        else:
            self._fail(job, context, error, duration)

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
        job: Job,
        context: JobContext,
        error: BaseException,
        duration: float,
        prefix: str = "",
    ) -> None:
        """Record the failure: an error event with type, message and traceback, then the fail
        itself (with the type), each written so that the failure can always be recorded."""
        name = _type_name(error)
        message = prefix + (_message(error) or name)
        tb = _clean("".join(traceback.format_exception(error)))
        if not _log_error(context, {"error": message, "type": name, "traceback": tb}):
            _log_error(context, {"error": message, "type": name})
        try:
            self.ledger.fail(
                job.id, message, worker_id=self.worker_id, error_type=name, attempt=job.attempts
            )
        except (LeaseLost, InvalidTransition) as e:
            log.info("job %s not failed: %s", job.id, e)
            return
        except LedgerError as e:
            log.error("could not record the failure of job %s (%s): %s", job.id, name, e)
            return
        log.info("job %s failed after %.2fs: %s: %s", job.id, duration, name, _clip(message, 200))

    def _release(self, job: Job, reason: str) -> None:
        try:
            self.ledger.release(
                job.id, worker_id=self.worker_id, reason=_clean(reason), attempt=job.attempts
            )
        except (LeaseLost, InvalidTransition) as e:
            log.info("job %s not released: %s", job.id, e)
        except LedgerError as e:
            log.error("could not release job %s (its lease will expire): %s", job.id, e)
        else:
            log.info("job %s released (%s)", job.id, _clip(reason, 200))

    def _heartbeat(self, context: JobContext, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_every):
            try:
                self.ledger.heartbeat(
                    context.job.id,
                    worker_id=self.worker_id,
                    lease=self.lease,
                    attempt=context.job.attempts,
                )
            except (LeaseLost, InvalidTransition) as e:
                cancelled = getattr(e, "status", None) == "cancelled"
                log.log(logging.INFO if cancelled else logging.WARNING, "%s", e)
                context._lost.set()
                return
            except LedgerError as e:  # a busy or full disk: keep trying until the lease says no
                log.warning("heartbeat for job %s failed: %s", context.job.id, e)
            else:
                log.debug("heartbeat for job %s", context.job.id)

    # -- signals -----------------------------------------------------------------------------

    def _take_signals(self) -> None:
        """Act on signals counted since the last look (in the worker's thread, not in the
        signal handler, which must not take locks): the first stops, the next forces."""
        while self._signals_seen < self._signals:
            self._signals_seen += 1
            name = signal.Signals(self._last_signal).name
            if self._stop.is_set():
                self._stop_signal = self._last_signal
                log.warning("%s again: forcing the stop, releasing the job in hand", name)
                self.force_stop(f"{name}, twice")
            else:
                log.info(
                    "%s: stopping (the job in hand gets %gs; send it again to force)",
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


def _call_handler(handler: Handler, job: Job, context: JobContext, outcome: _Outcome) -> None:
    """The handler thread: every exception, of any kind, is handed to the worker's thread."""
    try:
        outcome.value = handler(job, context)
    except BaseException as e:  # the worker decides what each means
        outcome.error = e
    finally:
        outcome.done.set()


def _to_result(value: Any) -> Result:
    if isinstance(value, Result):
        return value
    if value is None:
        return Result("")
    if isinstance(value, str):
        return Result(value)
    why = f"a handler returns a Result, a str or None, not {type(value).__qualname__}"
    try:
        error = InvalidArgument("handler result", value, why)
    except Exception:  # a value whose repr itself fails
        error = InvalidArgument("handler result", type(value), why)
    raise error


def _log_error(context: JobContext, payload: dict[str, str]) -> bool:
    """The error event; False when the ledger refused the payload (so a smaller one is tried)."""
    try:
        context.log(EventType.ERROR, payload)
    except LedgerError as e:
        log.warning("could not log the error event of job %s: %s", context.job.id, e)
        return False
    return True


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
