"""Bad input, fuzzed: random sequences of API calls with random and hostile arguments.

Every call either succeeds or raises a `LedgerError`; a failed call changes nothing; a model of
the state machine written here agrees with the projection after every step; `verify` passes.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import apsw
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger import InvalidTransition, JobNotFound, JobStatus, LeaseLost, Ledger, LedgerError
from tests.conftest import FakeClock, snapshot

NESTED: list[Any] = []
_node = NESTED
for _ in range(5000):
    _node.append([])
    _node = _node[0]
HUGE = "x" * (17 * 1024 * 1024)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.text(max_size=20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["\ud800", "'; DROP TABLE events; --", "\x00", "é漢字🙂"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
hostile = st.one_of(
    json_value, st.sampled_from([NESTED, HUGE, object(), {1: object()}, b"\xff\xfe", {"k": {1, 2}}])
)
hostile_int = st.one_of(st.integers(-(2**65), 2**65), st.sampled_from([True, 1.5, "7", None]))
hostile_text = st.one_of(st.text(max_size=10), st.sampled_from(["", "\udcff", 12, None]))
WORKERS = ["w1", "w2", "w3"]
INT64 = st.integers(-(2**63), 2**63 - 1)  # a config or payload holds int64 ints (README)


@dataclass
class ModelJob:
    id: str
    status: str
    attempts: int
    max_attempts: int
    worker: str | None
    lease_until: datetime | None
    run_at: datetime
    priority: int
    created: tuple[datetime, int]
    version: int


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.path = str(Path(self.dir) / "ledger.db")
        self.clock = FakeClock()
        self.ledger = Ledger(self.path, clock=self.clock, rng=random.Random(0))
        self.jobs: dict[str, ModelJob] = {}
        self.keys: dict[str, str] = {}
        self.sequence = 0

    def teardown(self) -> None:
        report = self.ledger.verify()
        assert report.ok, report.differences[:3]
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------

    def attempt(self, call: Any) -> tuple[bool, Any]:
        """Run a call; a failure must be a LedgerError that changed nothing."""
        before = snapshot(self.path)
        try:
            return True, call()
        except LedgerError as e:
            assert snapshot(self.path) == before, f"{type(e).__name__} left changes behind"
            return False, e

    def pick(self, data: st.DataObject) -> Any:
        known = sorted(self.jobs)
        choices = st.sampled_from(known) if known else st.nothing()
        return data.draw(st.one_of(choices, hostile_text, st.sampled_from(["nope", "'--"])))

    def rescue_model(self) -> None:
        now = self.clock.now
        for job in self.jobs.values():
            if job.status == "running" and job.lease_until is not None and job.lease_until <= now:
                job.version += 1
                job.worker, job.lease_until = None, None
                if job.attempts >= job.max_attempts:
                    job.status = "failed"
                else:
                    job.status, job.run_at = "pending", now

    # -- rules -------------------------------------------------------------------------------

    @rule(data=st.data(), clean=st.booleans())
    def create(self, data: st.DataObject, clean: bool) -> None:
        config = data.draw(
            st.dictionaries(st.text(max_size=5), INT64, max_size=3) if clean else hostile
        )
        chat = data.draw(st.integers(0, 5) if clean else hostile_int)
        attempts = data.draw(st.integers(1, 3) if clean else hostile_int)
        priority = data.draw(st.integers(-1, 1) if clean else hostile_int)
        delay = data.draw(st.sampled_from([None, 0, 30]))
        run_at = None if delay is None else self.clock.now + timedelta(seconds=delay)
        key = data.draw(st.sampled_from([None, None, "k1", "k2"]))
        ok, result = self.attempt(
            lambda: self.ledger.create_job(
                chat,
                config,
                max_attempts=attempts,
                priority=priority,
                run_at=run_at,
                idempotency_key=key,
            )
        )
        if clean:
            assert ok, result
        if not ok:
            return
        if key is not None and key in self.keys:
            assert result == self.keys[key]
            return
        self.sequence += 1
        self.jobs[result] = ModelJob(
            result,
            "pending",
            0,
            attempts,
            None,
            None,
            run_at or self.clock.now,
            priority,
            (self.clock.now, self.sequence),
            1,
        )
        if key is not None:
            self.keys[key] = result

    @rule(
        worker=st.one_of(st.sampled_from(WORKERS), hostile_text),
        lease=st.one_of(st.sampled_from([10.0, 60.0]), st.floats(allow_nan=True), hostile_int),
    )
    def claim(self, worker: Any, lease: Any) -> None:
        ok, job = self.attempt(lambda: self.ledger.claim(worker, lease=lease))
        if not ok:
            assert not (worker in WORKERS and lease in (10.0, 60.0)), job
            return
        self.rescue_model()
        now = self.clock.now
        ready = [j for j in self.jobs.values() if j.status == "pending" and j.run_at <= now]
        if not ready:
            assert job is None
            return
        best = min(ready, key=lambda j: (-j.priority, j.created))
        assert job is not None and job.id == best.id
        best.status, best.worker, best.attempts = "running", worker, best.attempts + 1
        best.lease_until, best.version = now + timedelta(seconds=float(lease)), best.version + 1

    def _holder_rules(self, job: ModelJob | None, worker: Any, outcome: Any, ok: bool) -> bool:
        """Common expectations for heartbeat/complete/fail; True when the call should succeed."""
        if job is None:
            assert not ok
            return False
        lost = worker is not None and (job.status != "running" or job.worker != worker)
        if lost:
            assert not ok and isinstance(outcome, LeaseLost | LedgerError)
            return False
        if job.status != "running":
            assert not ok and isinstance(outcome, InvalidTransition | LedgerError)
            return False
        return True

    @rule(data=st.data(), worker=st.sampled_from([None, *WORKERS]))
    def heartbeat(self, data: st.DataObject, worker: str | None) -> None:
        job_id = self.pick(data)
        ok, outcome = self.attempt(lambda: self.ledger.heartbeat(job_id, worker_id=worker))
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if self._holder_rules(job, worker, outcome, ok):
            assert ok, outcome
            assert job is not None
            job.version += 1
            job.lease_until = self.ledger.get_job(job.id).lease_expires_at  # type: ignore[union-attr]

    @rule(
        data=st.data(),
        worker=st.sampled_from([None, *WORKERS]),
        cost=st.one_of(st.just(1.5), st.floats(allow_nan=True), hostile_int),
    )
    def complete(self, data: st.DataObject, worker: str | None, cost: Any) -> None:
        job_id = self.pick(data)
        ok, outcome = self.attempt(
            lambda: self.ledger.complete(job_id, "done", "success", cost, 3, worker_id=worker)
        )
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if self._holder_rules(job, worker, outcome, ok) and cost == 1.5:
            assert ok, outcome
        if ok:
            assert job is not None
            job.status, job.lease_until, job.version = "completed", None, job.version + 1

    @rule(data=st.data(), worker=st.sampled_from([None, *WORKERS]), retry=st.booleans())
    def fail(self, data: st.DataObject, worker: str | None, retry: bool) -> None:
        job_id = self.pick(data)
        ok, outcome = self.attempt(
            lambda: self.ledger.fail(job_id, "boom", worker_id=worker, retry=retry)
        )
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if self._holder_rules(job, worker, outcome, ok):
            assert ok, outcome
            assert job is not None
            job.version += 1
            job.lease_until = None
            if retry and job.attempts < job.max_attempts:
                job.status, job.worker = "pending", None
                job.run_at = self.ledger.get_job(job.id).run_at  # type: ignore[union-attr]
                assert job.run_at > self.clock.now
            else:
                job.status = "failed"

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = self.pick(data)
        ok, outcome = self.attempt(lambda: self.ledger.cancel(job_id))
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            assert not ok and isinstance(outcome, JobNotFound | LedgerError)
            return
        assert ok
        assert outcome is (job.status in ("pending", "running"))
        if outcome:
            job.status, job.lease_until, job.version = "cancelled", None, job.version + 1

    @rule(
        data=st.data(),
        kind=st.one_of(st.sampled_from(["progress", "tool_call"]), hostile_text),
        clean=st.booleans(),
    )
    def log(self, data: st.DataObject, kind: Any, clean: bool) -> None:
        job_id = self.pick(data)
        payload = data.draw(st.fixed_dictionaries({"n": INT64}) if clean else hostile)
        ok, _ = self.attempt(lambda: self.ledger.log_event(job_id, kind, payload))
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if ok:
            assert job is not None and job.status in ("pending", "running")
            job.version += 1
        elif job is not None and clean and kind in ("progress", "tool_call"):
            assert job.status in ("completed", "failed", "cancelled")

    @rule(seconds=st.sampled_from([1, 9, 30, 61, 400]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def rescue(self) -> None:
        expected = sum(
            1
            for j in self.jobs.values()
            if j.status == "running"
            and j.lease_until is not None
            and j.lease_until <= self.clock.now
        )
        assert self.ledger.rescue_expired() == expected
        self.rescue_model()

    @rule(limit=hostile_int)
    def queries(self, limit: Any) -> None:
        for call in (
            lambda: self.ledger.pending_jobs(limit),
            lambda: self.ledger.jobs_for_chat(1, limit),
            lambda: self.ledger.recent_events_for_chat(1, limit),
            lambda: self.ledger.read_all(0, limit),
        ):
            ok, result = self.attempt(call)
            assert (
                ok
                or isinstance(limit, bool)
                or not isinstance(limit, int)
                or limit < 0
                or limit > 2**63 - 1
            ), result

    @precondition(lambda self: bool(self.jobs))
    @invariant()
    def model_agrees_with_projection(self) -> None:
        for job in self.jobs.values():
            live = self.ledger.get_job(job.id)
            assert live is not None
            assert (live.status.value, live.attempts, live.version) == (
                job.status,
                job.attempts,
                job.version,
            ), job
            if job.status == "running":
                assert live.worker_id == job.worker and live.lease_expires_at == job.lease_until
            assert live.status is JobStatus(job.status)


LedgerMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestLedgerFuzz = LedgerMachine.TestCase


def test_sql_in_ids_is_inert(tmp_path: Path) -> None:
    with Ledger(str(tmp_path / "l.db")) as ledger:
        job_id = ledger.create_job(1, {})
        for hostile_id in ("' OR 1=1 --", "x'); DELETE FROM events; --", "%", "_"):
            assert ledger.get_job(hostile_id) is None
        conn = apsw.Connection(str(tmp_path / "l.db"))
        assert conn.execute("SELECT count(*) FROM events").get == 1
        conn.close()
        assert ledger.get_job(job_id) is not None
