"""Numbers about the ledger for people: counts, throughput, durations, cost."""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime, timedelta

import msgspec

from .backends.protocol import JobFilter, Snapshot
from .domain.model import Job, JobStatus
from .domain.state import to_job

_OLDEST_PENDING = JobFilter(statuses=(JobStatus.PENDING,), order="oldest", limit=1)


DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 3600.0)


class Histogram(msgspec.Struct, frozen=True):
    """Observations by bucket, as Prometheus counts them: ``counts[i]`` is how many are at most
    ``bounds[i]`` (cumulative); ``count`` is all of them (the implied +Inf bucket)."""

    bounds: list[float]
    counts: list[int]
    count: int
    sum: float


def histogram(ordered: list[float] | list[int], bounds: tuple[float, ...]) -> Histogram:
    """``ordered`` (ascending) counted into cumulative buckets."""
    return Histogram(
        bounds=list(bounds),
        counts=[bisect_right(ordered, b) for b in bounds],
        count=len(ordered),
        sum=float(sum(ordered)),
    )


class Stats(msgspec.Struct, frozen=True):
    counts: dict[str, dict[str, int]]  # status -> queue -> jobs
    finished_last_hour: dict[str, int]  # status -> jobs that ended in the last hour
    duration_p50: float | None
    duration_p95: float | None
    total_cost_cents: float
    oldest_pending: Job | None
    # The metrics' figures (``/metrics`` of ``ledger serve`` exports exactly these). Counters
    # count events in the log, so they are true for every worker and process on the ledger.
    oldest_pending_age: dict[str, float] = {}  # queue -> seconds its oldest pending job waited
    events: dict[str, int] = {}  # event type -> events in the log
    claimed: int = 0  # claimed events
    completed: int = 0  # completed events
    failed: int = 0  # failed events (final failures)
    retried: int = 0  # retry_scheduled (automatic) + retried (an operator's) events
    rescued: int = 0  # lease_expired events (a dead worker's job taken back)
    duration_histogram: Histogram | None = None  # completed jobs' durations (seconds)
    queue_wait_histogram: Histogram | None = None  # started jobs' wait before their last start
    cost_by_chat: dict[int, float] = {}  # chat -> cents


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
    events = snapshot.event_type_counts()
    return Stats(
        counts=counts,
        finished_last_hour=snapshot.finished_since(now - timedelta(hours=1)),
        duration_p50=_percentile(durations, 0.5),
        duration_p95=_percentile(durations, 0.95),
        total_cost_cents=snapshot.total_cost(),
        oldest_pending=to_job(oldest[0]) if oldest else None,
        oldest_pending_age={
            q: max(0.0, (now - t).total_seconds())
            for q, t in snapshot.oldest_pending_by_queue().items()
        },
        events=events,
        claimed=events.get("claimed", 0),
        completed=events.get("completed", 0),
        failed=events.get("failed", 0),
        retried=events.get("retry_scheduled", 0) + events.get("retried", 0),
        rescued=events.get("lease_expired", 0),
        duration_histogram=histogram(durations, DURATION_BUCKETS),
        queue_wait_histogram=histogram(snapshot.queue_waits(), QUEUE_WAIT_BUCKETS),
        cost_by_chat=snapshot.cost_by_chat(),
    )
