"""Handlers that worker processes in the tests import (``python -m ledger work tests....``)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from ledger import EventType, Job, JobContext, Result


def flaky(job: Job, ctx: JobContext) -> Result:
    """Fails at random (seeded per job and attempt); hangs once when asked, so a test can kill
    the process mid-job; otherwise completes."""
    ctx.log(EventType.STARTED, {"pid": os.getpid(), "attempt": job.attempts})
    if job.config.get("hang_once") and job.attempts == 1:
        marker = Path(job.config["marker"])
        marker.write_text(str(os.getpid()))
        time.sleep(120)  # heartbeats go on until the test kills this process
    rng = random.Random(f"{job.id}:{job.attempts}")
    if rng.random() < job.config.get("fail_rate", 0.0):
        raise RuntimeError(f"random failure on attempt {job.attempts}")
    ctx.log(EventType.TOOL_CALL, {"tool": "noop"})
    return Result(f"done by {os.getpid()}", "success", 0.5)


def _started(job: Job) -> None:
    """Tell the test (which polls for the marker file) that the handler is running."""
    Path(job.config["marker"]).write_text(str(os.getpid()))


def _wait(ctx: JobContext) -> None:
    deadline = time.monotonic() + 60
    while not (ctx.stopping or ctx.cancelled) and time.monotonic() < deadline:
        time.sleep(0.01)


def wait_for_stop(job: Job, ctx: JobContext) -> str:
    """Runs until the worker is told to stop, then raises: the worker must release the job."""
    _started(job)
    _wait(ctx)
    raise InterruptedError("stopping")


def readme_pattern(job: Job, ctx: JobContext) -> Result | None:
    """The README's handler pattern: on a stop or a cancel, return None (give up)."""
    ctx.log(EventType.STARTED, {"task": job.config.get("task")})
    _started(job)
    _wait(ctx)
    if ctx.cancelled or ctx.stopping:
        return None
    return Result("done", "success", cost_cents=1.0)


def finish_in_grace(job: Job, ctx: JobContext) -> Result:
    """Sees the stop, finishes its work within the grace period and says so with a Result."""
    _started(job)
    _wait(ctx)
    ctx.log(EventType.PROGRESS, {"stopping": ctx.stopping})
    return Result("finished during the grace period", "success", cost_cents=0.25)


def check_until_stopped(job: Job, ctx: JobContext) -> str:
    """Bails out with ``ctx.check()`` (raises JobInterrupted) at the stop."""
    _started(job)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ctx.check()
        time.sleep(0.01)
    return "never stopped"


def stuck(job: Job, ctx: JobContext) -> str:
    """Ignores every stop: only a forced stop (second signal, grace period) gets past it."""
    _started(job)
    time.sleep(1000)
    return "woke up"


def exits(job: Job, ctx: JobContext) -> str:
    """Raises SystemExit from the handler: an interrupt, not a failure."""
    raise SystemExit(int(job.config.get("code", 3)))


def kind_of_return(job: Job, ctx: JobContext) -> object:
    """Returns or raises what the job's config names (for the bad-return tests)."""
    kind = job.config["kind"]
    if kind == "raise":
        raise RuntimeError(f"broken on purpose ({job.id[:8]})")
    return {"ok": "fine", "dict": {"a": 1}, "int": 7}[kind]


def quick(job: Job, ctx: JobContext) -> str:
    return f"ok {job.config.get('n')}"
