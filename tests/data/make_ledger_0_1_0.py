"""Writes ``ledger-0.1.0.db``: a small ledger in the store/projection format of release 0.1.0
(store schema 1, jobs projection schema 1), with every event type in it. Committed once; later
releases must open, replay and verify it (tests/test_upgrade.py). Do not regenerate it with a
newer release: that would test nothing."""

from __future__ import annotations

import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledger import Ledger

HERE = Path(__file__).resolve().parent


def main() -> None:
    path = HERE / "ledger-0.1.0.db"
    path.unlink(missing_ok=True)
    now = [datetime(2026, 11, 23, 12, 0, tzinfo=UTC)]

    def clock() -> datetime:
        now[0] += timedelta(seconds=1)
        return now[0]

    with Ledger(str(path), clock=clock, rng=random.Random(1)) as ledger:
        done = ledger.create_job(1, {"role": "coder", "task": "ship it"}, thread_id=7, user_id="u")
        retried = ledger.create_job(1, {"role": "tester"}, max_attempts=3, queue="tests")
        rescued = ledger.create_job(2, {"role": "reviewer"}, max_attempts=2, priority=5)
        cancelled = ledger.create_job(2, {"role": "writer"}, idempotency_key="write-once")
        released = ledger.create_job(3, {"role": "planner"})
        ledger.claim("w-rescued", lease=5)  # priority 5: the rescued job
        ledger.claim("w1")
        for kind in ("started", "progress", "tool_call", "error"):
            ledger.log_event(done, kind, {"kind": kind})
        ledger.heartbeat(done, worker_id="w1", lease=60)
        ledger.complete(done, "shipped", "success", 4.25, 2, worker_id="w1")
        ledger.claim("w2", queues=["tests"])
        ledger.fail(retried, "flaky")
        now[0] += timedelta(seconds=30)
        ledger.claim("w3")  # rescues the expired lease, then claims the rescued job again
        ledger.cancel(cancelled, reason="no longer needed")
        held = ledger.claim("w4")
        assert held is not None
        ledger.release(held.id, worker_id="w4", reason="shutting down")
        assert held.id == retried  # its backoff had passed: claimed again, then released
        failed = ledger.create_job(4, {"role": "critic"}, priority=9)
        ledger.claim("w5")
        ledger.fail(failed, "gave up", retry=False, worker_id="w5")
        ids = {
            "completed": done,
            "retried_then_released": retried,
            "rescued_and_running": rescued,
            "cancelled": cancelled,
            "pending": released,
            "failed": failed,
        }
        expected = {name: msgspec_job(ledger, job_id) for name, job_id in ids.items()}
    (HERE / "ledger-0.1.0.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


def msgspec_job(ledger: Ledger, job_id: str) -> dict[str, object]:
    import msgspec

    return msgspec.to_builtins(ledger.get_job(job_id))  # type: ignore[no-any-return]


if __name__ == "__main__":
    sys.exit(main())
