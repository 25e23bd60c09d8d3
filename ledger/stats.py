"""Numbers about the ledger for people: counts, throughput, durations, cost."""

from __future__ import annotations

from datetime import datetime, timedelta

import apsw
import msgspec

from projections import jobs_queries as q

from .model import Job
from .timeutil import to_db


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


def collect(conn: apsw.Connection, now: datetime) -> Stats:
    """Several queries whose answers must agree: call inside one read transaction
    (`connection.read_snapshot`, as `Ledger.stats` does)."""
    counts: dict[str, dict[str, int]] = {}
    for status, queue, n in conn.execute(q.stats_counts_statement):
        counts.setdefault(status, {})[queue] = n
    since = to_db(now - timedelta(hours=1))
    finished: dict[str, int] = {
        str(status): int(n)
        for status, n in conn.execute(q.stats_finished_since_statement, (since,))
    }
    durations = [r[0] for r in conn.execute(q.stats_durations_statement)]
    oldest = q.fetch_jobs(conn, q.stats_oldest_pending_statement)
    return Stats(
        counts=counts,
        finished_last_hour=finished,
        duration_p50=_percentile(durations, 0.5),
        duration_p95=_percentile(durations, 0.95),
        total_cost_cents=float(conn.execute(q.stats_cost_statement).get),
        oldest_pending=oldest[0] if oldest else None,
    )
