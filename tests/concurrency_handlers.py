"""Handlers for the worker processes of tests/test_worker_concurrency_processes.py.

Each job's config names a directory (``dir``) where the handler leaves marks: one line per
call of a step's function (``<step>.calls``), and a file per job that started (``<id>.started``),
so the test can tell what ran, and how often, across a kill -9."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from ledger import Job, JobContext


def _mark(job: Job, name: str, text: str = "") -> None:
    with open(Path(job.config["dir"]) / name, "a") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def two_steps(job: Job, ctx: JobContext) -> dict[str, Any]:
    """Step one, then step two, which hangs (after marking that it ran) while the config says
    so: the test kills the process there, in the middle of step two."""

    def one() -> str:
        _mark(job, "one.calls", str(job.attempts))
        return "first"

    def two() -> str:
        _mark(job, "two.calls", str(job.attempts))
        if job.config.get("hang_in_two") and not Path(job.config["dir"], "no-hang").exists():
            threading.Event().wait(3600)
        return "second"

    a = ctx.step("one", one)
    b = ctx.step("two", two)
    return {"one": a, "two": b}


async def stuck(job: Job, ctx: JobContext) -> str:
    """Marks that it started, then waits (for ever, or until the worker stops when the config
    says ``finish_on_stop``: then it returns a result within the grace period)."""
    _mark(job, f"{job.id}.started")
    while not (ctx.stopping and job.config.get("finish_on_stop")):
        await asyncio.sleep(0.01)
    return "finished on stop"
