"""``/metrics`` in Prometheus' text format (parsed back with prometheus_client's own parser),
``ledger stats --json`` with the same figures, the change feed that wakes live pages, and
``ledger serve`` without the web extra."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger import InvalidArgument, Ledger
from ledger.cli import main
from ledger.web import create_app
from ledger.web.app import ChangeFeed
from tests.conftest import FakeClock
from tests.web.conftest import ClientFactory, Populated


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_prometheus_text_with_the_ledgers_figures(
    open_client: ClientFactory, populated: Populated
) -> None:
    answer = open_client().get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(answer.text)
    assert samples[("ledger_jobs", (("queue", "reports"), ("status", "completed")))] == 1
    assert samples[("ledger_jobs", (("queue", "reports"), ("status", "pending")))] == 0
    assert samples[("ledger_jobs", (("queue", "default"), ("status", "pending")))] == 2
    assert samples[("ledger_jobs", (("queue", "slow"), ("status", "running")))] == 1
    assert samples[("ledger_oldest_pending_age_seconds", (("queue", "default"),))] == 0.0
    assert samples[("ledger_jobs_claimed_total", ())] == 3
    assert samples[("ledger_jobs_completed_total", ())] == 1
    assert samples[("ledger_jobs_failed_total", ())] == 1
    assert samples[("ledger_jobs_retried_total", ())] == 0
    assert samples[("ledger_jobs_rescued_total", ())] == 0
    assert samples[("ledger_events_total", (("type", "created"),))] == 5
    assert samples[("ledger_job_duration_seconds_bucket", (("le", "1.0"),))] == 0
    assert samples[("ledger_job_duration_seconds_bucket", (("le", "5.0"),))] == 1
    assert samples[("ledger_job_duration_seconds_count", ())] == 1
    assert samples[("ledger_job_duration_seconds_sum", ())] == 4.0
    assert samples[("ledger_queue_wait_seconds_count", ())] == 3
    assert samples[("ledger_queue_wait_seconds_sum", ())] == 15.0  # each waited 5 s
    assert samples[("ledger_cost_cents", (("chat_id", "7"),))] == 12.5


def test_metrics_count_what_other_processes_did(
    open_client: ClientFactory, populated: Populated, clock: FakeClock
) -> None:
    """The counters come from the log, not from this process: a rescue done through another
    `Ledger` shows in the next scrape."""
    client = open_client()
    assert _samples(client.get("/metrics").text)[("ledger_jobs_rescued_total", ())] == 0
    with Ledger(populated.path, clock=clock) as other:
        clock.advance(301)
        assert other.rescue_expired() == 1
    assert _samples(client.get("/metrics").text)[("ledger_jobs_rescued_total", ())] == 1


def test_stats_json_reports_the_same_figures(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", "--db", populated.path, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["claimed"], stats["completed"], stats["failed"]) == (3, 1, 1)
    assert (stats["retried"], stats["rescued"]) == (0, 0)
    assert stats["cost_by_chat"] == {"7": 12.5}
    assert set(stats["oldest_pending_age"]) == {"default"}
    assert stats["duration_histogram"]["count"] == 1
    assert stats["queue_wait_histogram"]["sum"] == 15.0
    assert stats["events"]["claimed"] == 3


def test_the_change_feed_wakes_on_a_commit_by_another_ledger(populated: Populated) -> None:
    """Live pages: a commit through another `Ledger` (as another process's) reaches a
    subscriber with the new last position."""
    watched = Ledger(populated.path, readonly=True)
    feed = ChangeFeed(watched, debounce=0.01)

    async def scenario() -> int:
        feed.start(asyncio.get_running_loop())
        queue = feed.subscribe()
        done = threading.Event()

        def write() -> None:
            with Ledger(populated.path) as other:
                other.create_job(1, {"from": "elsewhere"})
            done.set()

        threading.Thread(target=write).start()
        try:
            return await asyncio.wait_for(queue.get(), 10)
        finally:
            feed.stop()
            assert done.wait(10)

    try:
        position = asyncio.run(scenario())
        assert position == watched.last_position()
    finally:
        watched.close()


def test_actions_need_a_token(populated: Populated) -> None:
    with Ledger(populated.path) as ledger, pytest.raises(InvalidArgument, match="token"):
        create_app(ledger, allow_actions=True, token=None)


def test_serve_without_the_web_extra_is_one_line(populated: Populated) -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "from ledger.cli import main\n"
        f"sys.exit(main(['serve', '--db', {populated.path!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "ledger: error: ledger serve needs the web extra (starlette is missing): "
        "pip install 'jobledger[web]'"
    ]


def test_stats_text_names_the_counters(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", "--db", populated.path]) == 0
    out = capsys.readouterr().out
    assert "in the log: 3 claimed, 1 completed, 1 failed, 0 retried, 0 rescued" in out
