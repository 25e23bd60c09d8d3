"""Helpers the contract tests share; public API only, so they hold on every backend."""

from __future__ import annotations

from ledger import EventType, Job, JobEvent, Ledger
from tests.conftest import FakeClock

CONFIG = {"role": "coder", "task": "contract"}
EVERY = 1_000_000  # a limit above any test's job count: "all of them"


def all_jobs(ledger: Ledger) -> list[Job]:
    """Every job, in id order: a stable view for comparing two ledgers or two moments."""
    return sorted(ledger.jobs(limit=EVERY), key=lambda job: job.id)


def state(ledger: Ledger) -> tuple[list[JobEvent], list[Job]]:
    """What a refused command must leave unchanged: the whole log and every job."""
    return ledger.read_all(), all_jobs(ledger)


def busy_ledger(ledger: Ledger, clock: FakeClock) -> list[str]:
    """A log with every event type in it; returns the job ids in creation order.

    Jobs: 0 completed, 1 retried (pending), 2 failed for good, 3 cancelled while running,
    4 and 5 rescued after their leases expired (4 back to pending, 5 failed: no attempts left),
    6 released, 7 pending with activity, never claimed, 8 cancelled and retried by an operator
    (pending); the queue ``default`` paused and resumed."""
    ids = [
        ledger.create_job(n % 3, {**CONFIG, "n": n}, max_attempts=1 if n == 5 else 2)
        for n in range(8)
    ]
    for n, job_id in enumerate(ids[:7]):
        claimed = ledger.claim(f"w{n}", lease=30)
        assert claimed is not None and claimed.id == job_id
        ledger.log_event(job_id, EventType.PROGRESS, {"step": n})
        clock.advance(1)
    ledger.log_event(ids[0], EventType.STARTED, {"task": "contract"})
    ledger.log_event(ids[0], EventType.TOOL_CALL, {"tool": "grep", "args": ["-r", "x"]})
    ledger.heartbeat(ids[0], worker_id="w0")
    ledger.charge(ids[0], 0.0, worker_id="w0", detail={"tokens": 0})  # a charge; cost unchanged
    ledger.record_step(ids[0], "fetch", {"ok": True}, worker_id="w0", attempt=1)  # a step
    ledger.complete(ids[0], "done", "success", 1.5, 3, worker_id="w0")
    ledger.log_event(ids[1], EventType.ERROR, {"error": "flaky"})
    ledger.fail(ids[1], "retry me", worker_id="w1")
    ledger.fail(ids[2], "give up", retry=False)
    assert ledger.cancel(ids[3], reason="not needed")
    ledger.release(ids[6], worker_id="w6", reason="shutting down")
    ledger.log_event(ids[7], EventType.PROGRESS, {"queued": True})
    clock.advance(3600)
    assert ledger.rescue_expired() == 2  # ids[4] and ids[5]
    ledger.set_budget(2, 1_000_000)  # a chat's stream (budget_set); blocks nothing here
    # operator actions: job 8 cancelled and retried (pending again); a queue paused and resumed
    ids.append(ledger.create_job(1, {**CONFIG, "n": 8}, by="ops"))
    assert ledger.cancel(ids[8], by="ops")
    ledger.retry(ids[8], by="ops")
    assert ledger.pause("default", by="ops") and ledger.resume("default", by="ops")
    return ids
