"""Numbers about the ledger for people: counts, throughput, durations, cost."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from .backends.protocol import JobFilter, Snapshot
from .domain.model import Job, JobStatus
from .domain.state import to_job

_OLDEST_PENDING = JobFilter(statuses=(JobStatus.PENDING,), order="oldest", limit=1)


class Stats(msgspec.Struct, frozen=True):
    counts: dict[str, dict[str, int]]  # status -> queue -> jobs
    finished_last_hour: dict[str, int]  # status -> jobs that ended in the last hour
    duration_p50: float | None
    duration_p95: float | None
    total_cost_cents: float
    oldest_pending: Job | None


def _percentile(ordered: list[int], fraction: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return float(ordered[index])


def collect(snapshot: Snapshot, now: datetime) -> Stats:
    """Several reads whose answers must agree: run inside one snapshot (`Backend.read`)."""
    counts: dict[str, dict[str, int]] = {}
    for status, queue, n in snapshot.job_counts():
        counts.setdefault(status, {})[queue] = n
    durations = snapshot.completed_durations()
    oldest = snapshot.jobs(_OLDEST_PENDING)
    return Stats(
        counts=counts,
        finished_last_hour=snapshot.finished_since(now - timedelta(hours=1)),
        duration_p50=_percentile(durations, 0.5),
        duration_p95=_percentile(durations, 0.95),
        total_cost_cents=snapshot.total_cost(),
        oldest_pending=to_job(oldest[0]) if oldest else None,
    )
