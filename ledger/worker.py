"""`Worker`: the claim loop every caller would otherwise write, with heartbeats and clean stops.

A worker claims a job, runs ``handler(job, ctx)`` while a background thread heartbeats the lease,
then completes or fails the job. If the job is cancelled or the lease is lost meanwhile,
``ctx.cancelled`` turns true so a long handler can stop early, and the worker does not touch a
job that is no longer its own. SIGTERM/SIGINT ask it to stop: the job in hand is finished
(handler returned) or released back to pending (handler raised), never left running.
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

from .core import DEFAULT_LEASE, Ledger
from .errors import InvalidArgument, InvalidTransition, LeaseLost, LedgerError
from .model import EventType, Job, Result
from .timeutil import seconds

log = logging.getLogger("ledger.worker")

Handler = Callable[[Job, "JobContext"], "Result | str | None"]


class JobContext:
    """What a handler gets besides its job: a way to log activity, and the cancellation flag."""

    def __init__(self, ledger: Ledger, job: Job, worker_id: str) -> None:
        self.job = job
        self.worker_id = worker_id
        self._ledger = ledger
        self._lost = threading.Event()
        self._stopping = threading.Event()

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled, its lease was lost, or the worker is stopping."""
        return self._lost.is_set() or self._stopping.is_set()

    @property
    def lost(self) -> bool:
        """True once the job is no longer this worker's (cancelled, or lease lost)."""
        return self._lost.is_set()

    def log(self, type: EventType | str, payload: Any = None) -> bool:
        """Append an activity event; False (and ``cancelled`` set) when the job is no longer
        this worker's to log to."""
        try:
            self._ledger.log_event(self.job.id, type, payload)
        except InvalidTransition:
            self._lost.set()
            return False
        return True


class Worker:
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
    ) -> None:
        if not callable(handler):
            raise InvalidArgument("handler", handler, "expected a callable handler(job, ctx)")
        self.ledger = ledger
        self.handler = handler
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queues = None if queues is None else list(queues)
        self.lease = seconds("lease", lease)
        self.heartbeat_every = seconds("heartbeat_every", heartbeat_every or self.lease / 3)
        self.poll_interval = seconds("poll_interval", poll_interval)
        self._stop = threading.Event()
        self._context: JobContext | None = None

    def stop(self) -> None:
        """Ask the worker to stop after (or, for a cooperative handler, during) the job in hand."""
        self._stop.set()
        context = self._context
        if context is not None:
            context._stopping.set()

    def run(self, *, max_jobs: int | None = None, stop_when_idle: bool = False) -> int:
        """Work jobs until stopped, ``max_jobs`` were handled, or (with ``stop_when_idle``) no job
        is claimable right now. Returns how many jobs were handled."""
        restore = self._install_signal_handlers()
        handled = 0
        try:
            while not self._stop.is_set() and (max_jobs is None or handled < max_jobs):
                if self.run_once():
                    handled += 1
                elif stop_when_idle:
                    break
                else:
                    self._stop.wait(self.poll_interval)
        finally:
            restore()
        return handled

    def run_once(self) -> bool:
        """Claim and handle one job; False when none was claimable."""
        job = self.ledger.claim(self.worker_id, queues=self.queues, lease=self.lease)
        if job is None:
            return False
        context = JobContext(self.ledger, job, self.worker_id)
        if self._stop.is_set():
            context._stopping.set()
        self._context = context
        beating = threading.Event()
        beater = threading.Thread(target=self._heartbeat, args=(context, beating), daemon=True)
        beater.start()
        try:
            self._handle(job, context)
        finally:
            beating.set()
            beater.join()
            self._context = None
        return True

    def _handle(self, job: Job, context: JobContext) -> None:
        started = time.monotonic()
        try:
            outcome = self.handler(job, context)
        except Exception as e:
            self._after_error(job, context, e)
            return
        duration = round(time.monotonic() - started)
        result = outcome if isinstance(outcome, Result) else Result(outcome or "")
        self._finish(
            job,
            "complete",
            lambda: self.ledger.complete(
                job.id,
                result.summary,
                result.result_status,
                result.cost_cents,
                duration,
                worker_id=self.worker_id,
            ),
        )

    def _after_error(self, job: Job, context: JobContext, error: Exception) -> None:
        if context._stopping.is_set() and not context.lost:
            self._finish(
                job,
                "release",
                lambda: self.ledger.release(
                    job.id, worker_id=self.worker_id, reason=f"worker stopping: {error!r}"
                ),
            )
            return
        message = str(error) or type(error).__name__
        context.log(
            EventType.ERROR,
            {"error": message, "type": type(error).__name__, "traceback": traceback.format_exc()},
        )
        self._finish(
            job, "fail", lambda: self.ledger.fail(job.id, message, worker_id=self.worker_id)
        )

    def _finish(self, job: Job, what: str, call: Callable[[], None]) -> None:
        try:
            call()
        except (LeaseLost, InvalidTransition) as e:
            log.warning("could not %s job %s: %s", what, job.id, e)

    def _heartbeat(self, context: JobContext, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_every):
            try:
                self.ledger.heartbeat(context.job.id, worker_id=self.worker_id, lease=self.lease)
            except (LeaseLost, InvalidTransition) as e:
                log.warning("job %s is no longer ours: %s", context.job.id, e)
                context._lost.set()
                return
            except LedgerError as e:  # a busy or full disk: keep trying until the lease says no
                log.warning("heartbeat for job %s failed: %s", context.job.id, e)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("worker %s stopping on signal %d", self.worker_id, signum)
            self.stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return restore
