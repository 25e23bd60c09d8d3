"""``/metrics``: the ledger's `Stats` in Prometheus' text format, written by prometheus-client.

Every figure is read from the ledger itself at scrape time (the counters count events in the
log), never kept in this process, so a scrape tells the truth about every worker and process on
the ledger, and two servers on one ledger report the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..domain.model import JobStatus
from ..reads import LedgerReads
from ..stats import Histogram, Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_COUNTERS = (
    ("claimed", "Claims recorded in the log (every attempt that started)."),
    ("completed", "Jobs completed."),
    ("failed", "Jobs failed for good."),
    ("retried", "Retries scheduled, automatically or by an operator."),
    ("rescued", "Expired leases taken back from workers that stopped heartbeating."),
)


def _histogram(name: str, doc: str, h: Histogram | None) -> HistogramMetricFamily:
    h = h or Histogram(bounds=[], counts=[], count=0, sum=0.0)
    buckets = [(str(b), float(c)) for b, c in zip(h.bounds, h.counts, strict=True)]
    buckets.append(("+Inf", float(h.count)))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


def families(stats: Stats) -> Iterator[Metric]:
    """The metric families of one `Stats` (one snapshot of the ledger)."""
    jobs = GaugeMetricFamily("ledger_jobs", "Jobs by queue and status.", labels=["queue", "status"])
    queues = {q for by_queue in stats.counts.values() for q in by_queue}
    for queue in sorted(queues):
        for status in JobStatus:  # every status, 0 included, so a series never vanishes
            jobs.add_metric([queue, status.value], stats.counts.get(status.value, {}).get(queue, 0))
    yield jobs
    oldest = GaugeMetricFamily(
        "ledger_oldest_pending_age_seconds",
        "Age of the oldest pending job, per queue (queues with pending jobs).",
        labels=["queue"],
    )
    for queue, age in sorted(stats.oldest_pending_age.items()):
        oldest.add_metric([queue], age)
    yield oldest
    for name, doc in _COUNTERS:
        yield CounterMetricFamily(f"ledger_jobs_{name}", doc, value=getattr(stats, name))
    events = CounterMetricFamily("ledger_events", "Events in the log, by type.", labels=["type"])
    for event_type, n in sorted(stats.events.items()):
        events.add_metric([event_type], n)
    yield events
    yield _histogram(
        "ledger_job_duration_seconds", "Durations of completed jobs.", stats.duration_histogram
    )
    yield _histogram(
        "ledger_queue_wait_seconds",
        "How long started jobs waited, from ready to their latest start.",
        stats.queue_wait_histogram,
    )
    cost = GaugeMetricFamily(
        "ledger_cost_cents", "Total cost of a chat's jobs, in cents.", labels=["chat_id"]
    )
    for chat_id, cents in sorted(stats.cost_by_chat.items()):
        cost.add_metric([str(chat_id)], cents)
    yield cost


class LedgerCollector(Collector):
    """Collects `families` from a fresh `stats()` on every scrape."""

    def __init__(self, ledger: LedgerReads) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        return families(self._ledger.stats())


def render(ledger: LedgerReads) -> bytes:
    """The text exposition of the ledger's metrics, as of now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger))
    return generate_latest(registry)
