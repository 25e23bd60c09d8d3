"""The text the original's ``getActiveJobsSummary`` produced, for an LLM's context (a failed job
also names its error, where the original printed ``unknown``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .model import Job, JobStatus

NOTHING = "No active or recent subagents."


def _field(config: Any, key: str, default: str) -> str:
    value = config.get(key) if isinstance(config, dict) else None
    return value if isinstance(value, str) else default


def format_running(now: datetime, job: Job) -> str:
    role = _field(job.config, "role", "unknown")
    task = _field(job.config, "task", "")[:50]
    duration = (
        "?" if job.started_at is None else f"{round((now - job.started_at).total_seconds())}s"
    )
    return f'- {job.id[:8]} ({role}): running {duration} - "{task}"'


def format_recent(job: Job) -> str:
    """A finished job: the original's line for a completed one; a failed one says ``failed``
    and names its error (the original printed ``unknown -`` and nothing, hiding why)."""
    role = _field(job.config, "role", "unknown")
    if job.status is JobStatus.FAILED and job.result_status is None:
        error = (job.error_message or "").replace("\n", " ")[:60]  # one line per job
        return f"- {job.id[:8]} ({role}): failed - {error}"
    status = job.result_status if job.result_status is not None else "unknown"
    summary = (job.result_summary or "")[:60]
    return f"- {job.id[:8]} ({role}): {status} - {summary}"


def format_summary(now: datetime, running: Sequence[Job], recent: Sequence[Job]) -> str:
    """Running jobs, then the latest finished ones; each line ends in a newline, as Haskell's
    ``Text.unlines`` did."""
    if not running and not recent:
        return NOTHING
    lines: list[str] = []
    if running:
        lines += ["## Running Subagents", *running_tree(now, running)]
    if recent:
        lines += ["", "## Recent Subagents", *(format_recent(j) for j in recent)]
    return "".join(line + "\n" for line in lines)


def running_tree(now: datetime, running: Sequence[Job]) -> list[str]:
    """The running jobs' lines, each one whose parent is running too indented under it (two
    spaces a level), in the given order within a level; without parents, the original's
    flat list exactly."""
    present = {job.id for job in running}
    below: dict[str, list[Job]] = {}
    roots: list[Job] = []
    for job in running:
        if job.parent_id is not None and job.parent_id in present:
            below.setdefault(job.parent_id, []).append(job)
        else:
            roots.append(job)
    lines: list[str] = []
    stack: list[tuple[Job, int]] = [(job, 0) for job in reversed(roots)]
    while stack:  # depth first, iteratively: a deep tree never exhausts the stack
        job, depth = stack.pop()
        lines.append("  " * depth + format_running(now, job))
        stack.extend((child, depth + 1) for child in reversed(below.get(job.id, [])))
    return lines
