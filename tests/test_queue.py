"""Leases, rescue, retries, priorities, scheduling, idempotency and queues (injected clock)."""

from __future__ import annotations

import random
from datetime import timedelta

import apsw
import pytest

from ledger import EventType, InvalidTransition, JobStatus, LeaseLost, Ledger, RetryPolicy
from ledger.backends.sqlite import jobs_table as q
from tests.conftest import FakeClock, event_count, snapshot

CONFIG = {"role": "coder"}


def test_claim_sets_a_lease_and_counts_attempts(ledger: Ledger, clock: FakeClock) -> None:
    job_id = ledger.create_job(1, CONFIG, max_attempts=3)
    job = ledger.claim("w1", lease=10)
    assert job is not None and job.id == job_id
    assert job.lease_expires_at == clock.now + timedelta(seconds=10)
    assert job.attempts == 1 and job.max_attempts == 3
    assert ledger.claim("w2", lease=timedelta(minutes=1)) is None


def test_heartbeat_keeps_the_lease(ledger: Ledger, clock: FakeClock) -> None:
    job_id = ledger.create_job(1, CONFIG, max_attempts=2)
    ledger.claim("w1", lease=10)
    for _ in range(5):
        clock.advance(9)
        ledger.heartbeat(job_id, worker_id="w1")  # extends by the claim's 10 s
        assert ledger.claim("w2") is None
    assert ledger.get_job(job_id).lease_expires_at == clock.now + timedelta(seconds=10)  # type: ignore[union-attr]
    ledger.heartbeat(job_id, worker_id="w1", lease=60)
    clock.advance(59)
    assert ledger.claim("w2") is None
    assert ledger.get_job(job_id).worker_id == "w1"  # type: ignore[union-attr]


def test_expired_lease_is_rescued_by_claim_and_stale_worker_refused(
    ledger: Ledger, clock: FakeClock
) -> None:
    job_id = ledger.create_job(1, CONFIG, max_attempts=2)
    ledger.claim("w1", lease=10)
    clock.advance(10)  # the lease ends at exactly now: expired
    job = ledger.claim("w2", lease=10)
    assert job is not None and job.id == job_id and job.worker_id == "w2" and job.attempts == 2
    types = [e.type for e in ledger.job_events(job_id)]
    assert types[-2:] == [EventType.LEASE_EXPIRED, EventType.CLAIMED]
    before = snapshot(ledger.path)
    for call in (
        lambda: ledger.heartbeat(job_id, worker_id="w1"),
        lambda: ledger.complete(job_id, "late", "success", 0.0, 1, worker_id="w1"),
        lambda: ledger.fail(job_id, "late", worker_id="w1"),
    ):
        with pytest.raises(LeaseLost) as raised:
            call()
        assert raised.value.holder == "w2" and raised.value.worker_id == "w1"
    assert snapshot(ledger.path) == before
    ledger.complete(job_id, "done", "success", 0.0, 1, worker_id="w2")
    assert ledger.get_job(job_id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_expired_lease_without_attempts_left_fails(ledger: Ledger, clock: FakeClock) -> None:
    job_id = ledger.create_job(1, CONFIG)  # max_attempts=1
    ledger.claim("w1", lease=5)
    clock.advance(6)
    assert ledger.claim("w2") is None
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert "lease expired" in (job.error_message or "") and "w1" in (job.error_message or "")


def test_rescue_expired_counts(ledger: Ledger, clock: FakeClock) -> None:
    ids = [ledger.create_job(1, CONFIG, max_attempts=2) for _ in range(3)]
    ledger.claim("a", lease=5)
    ledger.claim("b", lease=50)
    ledger.claim("c", lease=5)
    assert ledger.rescue_expired() == 0
    clock.advance(5)
    assert ledger.rescue_expired() == 2
    assert [ledger.get_job(i).status for i in ids] == [  # type: ignore[union-attr]
        JobStatus.PENDING,
        JobStatus.RUNNING,
        JobStatus.PENDING,
    ]
    assert ledger.rescue_expired() == 0
    assert ledger.verify().ok


def test_retry_with_exponential_backoff(db_path: str, clock: FakeClock) -> None:
    policy = RetryPolicy(base=10, factor=2, cap=3600, jitter=0.25)
    with Ledger(db_path, clock=clock, retry_policy=policy, rng=random.Random(7)) as ledger:
        job_id = ledger.create_job(1, CONFIG, max_attempts=3)
        waits = []
        for attempt in (1, 2):
            job = ledger.claim("w")
            assert job is not None and job.attempts == attempt
            ledger.fail(job_id, f"boom {attempt}")
            job = ledger.get_job(job_id)
            assert job is not None and job.status is JobStatus.PENDING
            assert job.error_message == f"boom {attempt}" and job.worker_id is None
            wait = (job.run_at - clock.now).total_seconds()
            waits.append(wait)
            assert ledger.claim("w") is None  # not before run_at
            clock.now = job.run_at  # inclusive: claimable from run_at on
        assert 7.5 <= waits[0] <= 10 and 15 <= waits[1] <= 20
        ledger.claim("w")
        ledger.fail(job_id, "boom 3")  # no attempts left
        assert ledger.get_job(job_id).status is JobStatus.FAILED  # type: ignore[union-attr]
        types = [e.type for e in ledger.job_events(job_id)]
        assert types.count(EventType.RETRY_SCHEDULED) == 2 and types[-1] is EventType.FAILED
        live = snapshot(db_path)
        ledger.replay()  # the chosen times are in the events: replay does not re-roll them
        assert snapshot(db_path) == live


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(base=10, factor=2, cap=60, jitter=0)
    rng = random.Random(1)
    assert [policy.delay(n, rng).total_seconds() for n in (1, 2, 3, 4, 10)] == [10, 20, 40, 60, 60]


def test_fail_without_retry_is_final(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG, max_attempts=5)
    ledger.claim("w")
    ledger.fail(job_id, "fatal", retry=False)
    assert ledger.get_job(job_id).status is JobStatus.FAILED  # type: ignore[union-attr]


def test_priority_then_age(ledger: Ledger, clock: FakeClock) -> None:
    low_old = ledger.create_job(1, CONFIG, priority=0)
    clock.advance(1)
    high_new = ledger.create_job(1, CONFIG, priority=10)
    clock.advance(1)
    high_newer = ledger.create_job(1, CONFIG, priority=10)
    negative = ledger.create_job(1, CONFIG, priority=-5)
    order = [ledger.claim("w").id for _ in range(4)]  # type: ignore[union-attr]
    assert order == [high_new, high_newer, low_old, negative]


def test_run_at_is_inclusive(ledger: Ledger, clock: FakeClock) -> None:
    later = clock.now + timedelta(minutes=5)
    job_id = ledger.create_job(1, CONFIG, run_at=later)
    assert ledger.get_job(job_id).run_at == later  # type: ignore[union-attr]
    clock.advance(299.999)
    assert ledger.claim("w") is None
    clock.now = later
    assert ledger.claim("w").id == job_id  # type: ignore[union-attr]


def test_idempotency_key_returns_the_first_job(ledger: Ledger) -> None:
    first = ledger.create_job(1, CONFIG, idempotency_key="order-42")
    before = snapshot(ledger.path)
    assert ledger.create_job(2, {"other": True}, idempotency_key="order-42") == first
    assert snapshot(ledger.path) == before
    ids = ledger.create_jobs(
        [
            {"chat_id": 1, "config": CONFIG, "idempotency_key": "order-42"},
            {"chat_id": 1, "config": CONFIG, "idempotency_key": "order-43"},
            {"chat_id": 1, "config": CONFIG, "idempotency_key": "order-43"},
        ]
    )
    assert ids[0] == first and ids[1] == ids[2] != first
    assert event_count(ledger.path) == 2
    assert ledger.get_job(ids[1]).idempotency_key == "order-43"  # type: ignore[union-attr]


def test_queues(ledger: Ledger) -> None:
    mail = ledger.create_job(1, CONFIG, queue="mail")
    ledger.create_job(1, CONFIG, queue="default")
    video = ledger.create_job(1, CONFIG, queue="video")
    assert ledger.claim("w", queues=["video"]).id == video  # type: ignore[union-attr]
    assert ledger.claim("w", queues=["video"]) is None
    assert ledger.claim("w", queues=["mail", "video"]).id == mail  # type: ignore[union-attr]
    got = ledger.claim("w")
    assert got is not None and got.queue == "default"


def test_create_jobs_is_all_or_nothing_and_ordered(ledger: Ledger) -> None:
    ids = ledger.create_jobs([{"chat_id": n, "config": {"n": n}} for n in range(20)])
    assert len(set(ids)) == 20
    assert [ledger.claim("w").config["n"] for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
    assert ledger.create_jobs([]) == []


def test_release_gives_the_attempt_back(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w1")
    with pytest.raises(LeaseLost):
        ledger.release(job_id, worker_id="w2")
    ledger.release(job_id, worker_id="w1", reason="shutting down")
    job = ledger.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING and job.attempts == 0
    assert ledger.claim("w2").attempts == 1  # type: ignore[union-attr]


def test_cancel_a_running_job_locks_out_its_worker(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w1")
    assert ledger.cancel(job_id)
    with pytest.raises(LeaseLost):
        ledger.heartbeat(job_id, worker_id="w1")
    with pytest.raises(InvalidTransition):
        ledger.heartbeat(job_id)


def _plan(path: str, statement: str, params: tuple) -> str:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
    finally:
        conn.close()
    return " | ".join(str(r[-1]) for r in rows)


def test_claim_and_rescue_queries_use_partial_indexes_without_sorting(ledger: Ledger) -> None:
    ledger.create_jobs([{"chat_id": 1, "config": CONFIG} for _ in range(50)])
    now = "2026-01-01T00:00:00.000000+00:00"
    for statement, params, index in (
        (q.claim_statement(None), (now,), "jobs_claim"),
        (q.claim_statement(2), (now, "a", "b"), "jobs_claim"),
        (q.expired_statement, (now,), "jobs_lease"),
        (q.expired_batch_statement, (now,), "jobs_lease"),
        (q.pending_statement, (10,), "jobs_status"),
    ):
        plan = _plan(ledger.path, statement, params)
        assert f"INDEX {index}" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # no sort of every pending job per claim
        full_scans = [step for step in plan.split(" | ") if step.strip() == "SCAN jobs"]
        assert not full_scans, plan


def test_status_listings_walk_an_index_and_never_scan_finished_jobs(ledger: Ledger) -> None:
    """jobs_status leaves running jobs out (a claim and a complete would each move one between
    its status regions): running listings walk the partial jobs_lease (one chat's: that chat's
    entries in jobs_chat_status, not every running job of every chat), every other status
    jobs_status, and a filter of several statuses one index per status."""
    from ledger.backends.protocol import JobFilter

    ledger.create_jobs([{"chat_id": 1, "config": CONFIG} for _ in range(50)])
    running, pending, done = JobStatus.RUNNING, JobStatus.PENDING, JobStatus.COMPLETED
    for where, indexes in (
        (JobFilter(statuses=(running,), order="started"), ["jobs_lease"]),
        # one chat's running and latest finished jobs (the summary): that chat's entries of
        # those statuses, not its whole history
        (JobFilter(statuses=(running,), chat_id=1, order="started"), ["jobs_chat_status"]),
        (
            JobFilter(statuses=(done, JobStatus.FAILED), chat_id=1, order="finished", limit=3),
            ["jobs_chat_status"],
        ),
        (JobFilter(statuses=(done,), order="newest", limit=5), ["jobs_status"]),
        (JobFilter(statuses=(JobStatus.FAILED,), order="oldest"), ["jobs_status"]),
        (JobFilter(statuses=(done, JobStatus.FAILED), order="finished"), ["jobs_status"]),
        (JobFilter(statuses=(pending, running), order="newest"), ["jobs_status", "jobs_lease"]),
        # the backlog, not the chat's whole history
        (JobFilter(statuses=(pending,), chat_id=1, order="newest"), ["jobs_status"]),
    ):
        statement = q.statement_for(where)
        plan = _plan(ledger.path, statement, tuple(range(statement.count("?"))))
        for index in indexes:
            assert f"INDEX {index}" in plan, (where, plan)
        assert not [s for s in plan.split(" | ") if s.strip() == "SCAN jobs"], (where, plan)
    # several statuses without running: one walk of jobs_status in order (an IN list, which a
    # LIMIT stops early), not one search per status merged and sorted
    for order in ("newest", "oldest"):
        where = JobFilter(statuses=(done, JobStatus.FAILED, pending), order=order, limit=5)
        plan = _plan(ledger.path, q.statement_for(where), (5,))
        assert "INDEX jobs_status" in plan and "MULTI-INDEX OR" not in plan, plan
    listed = {s: [j.status for j in ledger.jobs(status=s.value)] for s in (running, pending)}
    assert listed == {running: [], pending: [pending] * 50}
    ledger.claim("w")
    assert [j.status for j in ledger.running_jobs()] == [running]
    assert ledger.count_jobs(status="running") == 1 and ledger.count_jobs(status="pending") == 49
