"""The reads behind the dashboard and the metrics: a paged job search with a text filter, finished
jobs by time slice, and the figures `stats` reports for ``/metrics``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ledger import InvalidArgument, Ledger
from tests.conftest import FakeClock


def test_search_jobs_filters_pages_and_totals(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `search_jobs` returns one page, newest first, of the jobs matching every filter,
    with how many match in all and their total cost; the text filter matches config text, the
    result summary and the error message, in any ASCII case, and is only text, never SQL."""
    ids = []
    for i in range(7):
        ids.append(ledger.create_job(i % 2, {"task": f"Report-{i}"}, queue="q" if i < 5 else "r"))
        clock.advance(1)
    job = ledger.claim("w1", queues=["q"])
    assert job is not None and job.id == ids[0]
    ledger.complete(job.id, "wrote the SUMMARY", cost_cents=2.5)

    page = ledger.search_jobs(queue="q", limit=2)
    assert [j.id for j in page.jobs] == [ids[4], ids[3]]
    assert (page.total, page.offset, page.limit, page.cost_cents) == (5, 0, 2, 2.5)
    last = ledger.search_jobs(queue="q", limit=2, offset=4)
    assert [j.id for j in last.jobs] == [ids[0]] and last.total == 5

    assert [j.id for j in ledger.search_jobs(text="report-5").jobs] == [ids[5]]
    assert [j.id for j in ledger.search_jobs(text="summary").jobs] == [ids[0]]
    assert [j.id for j in ledger.search_jobs(text=ids[2][:8]).jobs] == [ids[2]]
    chat1 = ledger.search_jobs(chat_id=1, status="pending")
    assert [j.id for j in chat1.jobs] == [ids[5], ids[3], ids[1]] and chat1.cost_cents == 0.0
    assert ledger.search_jobs(chat_id=0, status="completed").cost_cents == 2.5
    nothing = ledger.search_jobs(text="%' OR 1=1 --")
    assert (nothing.jobs, nothing.total) == ([], 0)
    assert ledger.search_jobs(text="%").total == 0  # no wildcards: % is a character


def test_search_jobs_refuses_bad_filters(ledger: Ledger) -> None:
    """Promise: a bad filter is an `InvalidArgument` naming it."""
    with pytest.raises(InvalidArgument, match="status"):
        ledger.search_jobs(status="sleeping")
    with pytest.raises(InvalidArgument, match="offset"):
        ledger.search_jobs(offset=-1)
    with pytest.raises(InvalidArgument, match="text"):
        ledger.search_jobs(text="")
    with pytest.raises(InvalidArgument, match="chat_id"):
        ledger.search_jobs(chat_id="7")  # type: ignore[arg-type]


def test_throughput_counts_finished_jobs_per_slice(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `throughput` counts the jobs that finished in each slice of the span, by
    status, oldest slice first; jobs finished before the span are not counted."""
    a, b, c = (ledger.create_job(1, {}) for _ in range(3))
    for job_id, outcome in ((a, "complete"), (b, "fail")):
        claimed = ledger.claim("w")
        assert claimed is not None and claimed.id == job_id
        if outcome == "complete":
            ledger.complete(job_id, "ok")
        else:
            ledger.fail(job_id, "boom", retry=False)
        clock.advance(1800)  # a at 0, b at 30 min
    claimed = ledger.claim("w")
    assert claimed is not None
    ledger.complete(c, "ok")  # at 60 min
    clock.advance(60)
    buckets = ledger.throughput(span=timedelta(hours=1), buckets=4)
    assert [b.finished for b in buckets] == [{}, {"failed": 1}, {}, {"completed": 1}]
    assert buckets[0].start == clock.now - timedelta(hours=1)
    assert buckets[-1].end == clock.now
    with pytest.raises(InvalidArgument, match="buckets"):
        ledger.throughput(span=timedelta(hours=1), buckets=0)


def test_stats_reports_the_metrics_figures(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `stats` counts claimed, completed, failed, retried and rescued events in the log,
    buckets durations and queue waits, sums cost by chat, and ages each queue's oldest pending
    job."""
    first = ledger.create_job(1, {}, max_attempts=2)
    ledger.create_job(2, {}, queue="slow")
    clock.advance(10)
    ledger.create_job(3, {})
    job = ledger.claim("w", queues=["default"], lease=30)
    assert job is not None and job.id == first
    clock.advance(31)
    assert ledger.rescue_expired() == 1  # back to pending: attempts are left
    clock.advance(60)
    job = ledger.claim("w", queues=["default"])
    assert job is not None and job.id == first
    clock.advance(3)
    ledger.complete(first, "ok", cost_cents=1.5, duration_seconds=3)
    stats = ledger.stats()
    assert (stats.claimed, stats.completed, stats.failed, stats.rescued) == (2, 1, 0, 1)
    assert stats.events["created"] == 3
    assert stats.cost_by_chat == {1: 1.5}
    assert stats.oldest_pending_age == {"default": 94.0, "slow": 104.0}
    durations = stats.duration_histogram
    assert durations is not None and (durations.count, durations.sum) == (1, 3.0)
    assert durations.counts[:2] == [0, 1]  # not within 1 s, within 5 s
    waits = stats.queue_wait_histogram
    assert waits is not None and waits.count == 1
    assert waits.sum == 60.0  # back to pending (run_at) at 41 s, claimed again at 101 s
