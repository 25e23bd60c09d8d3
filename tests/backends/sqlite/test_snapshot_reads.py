"""`active_jobs_summary` and `stats` are made of several queries; each reads one snapshot, so a
writer that commits between two of them cannot make the answer mix two states (a job shown both
running and finished, counts that disagree with the durations).

The interleaving is real: an exec trace on the reader's connection runs a write through a second
`Ledger` (its own connection) just before the reader's later query, and waits for its commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger import Ledger
from ledger.backends.sqlite import jobs_table as q
from tests.conftest import FakeClock


def _write_before(ledger: Ledger, statement: str, write: Callable[[], None]) -> list[bool]:
    """Run ``write`` (once) just before ``ledger`` executes ``statement``; returns a flag list
    that holds True once it ran."""
    ran: list[bool] = []

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        if sql == statement and not ran:
            write()  # commits on another connection before this statement runs
            ran.append(True)
        return True

    ledger._backend._reader().set_exec_trace(trace)  # this thread's read connection
    return ran


def test_summary_never_shows_a_job_both_running_and_finished(
    db_path: str, clock: FakeClock
) -> None:
    with Ledger(db_path, clock=clock) as reader, Ledger(db_path, clock=clock) as writer:
        job_id = writer.create_job(7, {"role": "coder", "task": "fix it"})
        assert writer.claim("w1") is not None
        before = reader.active_jobs_summary(7)
        assert "## Running Subagents" in before and "Recent" not in before

        def finish() -> None:
            writer.complete(job_id, "fixed", "success", worker_id="w1")

        ran = _write_before(reader, q.recent_finished_for_chat_statement, finish)
        during = reader.active_jobs_summary(7)
        reader._backend._reader().set_exec_trace(None)
        assert ran == [True]
        assert during == before  # the snapshot taken by the first query, not half of each
        after = reader.active_jobs_summary(7)
        assert after.count(job_id[:8]) == 1 and "success - fixed" in after
        assert reader.verify().ok


def test_stats_read_one_snapshot(db_path: str, clock: FakeClock) -> None:
    with Ledger(db_path, clock=clock) as reader, Ledger(db_path, clock=clock) as writer:
        job_id = writer.create_job(1, {})
        assert writer.claim("w1") is not None
        before = reader.stats()
        assert before.counts == {"running": {"default": 1}} and before.duration_p50 is None

        def finish() -> None:
            writer.complete(job_id, "done", "success", cost_cents=5.0, duration_seconds=9)

        ran = _write_before(reader, q.durations_statement, finish)
        during = reader.stats()
        reader._backend._reader().set_exec_trace(None)
        assert ran == [True]
        assert during == before
        after = reader.stats()
        assert after.counts == {"completed": {"default": 1}}
        assert after.duration_p50 == 9.0 and after.total_cost_cents == 5.0
        assert reader.verify().ok
