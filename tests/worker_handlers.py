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


def wait_for_stop(job: Job, ctx: JobContext) -> str:
    """Runs until the worker is told to stop, then raises: the worker must release the job."""
    Path(job.config["marker"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    raise InterruptedError("stopping")


def quick(job: Job, ctx: JobContext) -> str:
    return f"ok {job.config.get('n')}"
