"""Budgets enforced at claim (issue 18, section 2; law 12) on every backend, through the public
API only: set_budget / budget, reservations taken by claims and released when jobs end, jobs
held back with a reason, charges within the job's maximum and the chat's limit, replay. The
teardown verifies every ledger (projection = fold)."""

from __future__ import annotations

import pytest

from ledger import (
    Budget,
    BudgetExceeded,
    EventType,
    InvalidArgument,
    InvalidTransition,
    JobStatus,
    LeaseLost,
    Ledger,
    LedgerError,
)
from tests.conftest import FakeClock

from .support import CONFIG, state


def claim_id(ledger: Ledger, worker: str = "w") -> str | None:
    job = ledger.claim(worker)
    return None if job is None else job.id


def test_a_chat_without_a_budget_is_unlimited(ledger: Ledger) -> None:
    assert ledger.budget(4) == Budget(
        chat_id=4, limit_cents=None, spent_cents=0.0, reserved_cents=0.0, remaining_cents=None
    )
    ledger.create_job(4, CONFIG, max_cost_cents=10**9)
    assert claim_id(ledger) is not None


def test_set_budget_reads_back_and_is_an_event(ledger: Ledger) -> None:
    assert ledger.set_budget(4, 300) is True
    budget = ledger.budget(4)
    assert (budget.limit_cents, budget.remaining_cents) == (300, 300)
    (event,) = ledger.read_all()
    assert event.type is EventType.BUDGET_SET and event.job_id == "chat:4"
    assert event.payload == {"chat_id": 4, "limit_cents": 300.0}
    assert ledger.set_budget(4, 300) is False  # unchanged: nothing written
    assert ledger.set_budget(4, None) is True
    assert ledger.budget(4).limit_cents is None and ledger.budget(4).remaining_cents is None
    assert len(ledger.read_all()) == 2
    assert [e.version for e in ledger.read_all()] == [1, 2]


@pytest.mark.parametrize("cents", [-1, float("nan"), float("inf"), "10", True])
def test_bad_budgets_and_maximums_are_refused(ledger: Ledger, cents: object) -> None:
    before = state(ledger)
    with pytest.raises(InvalidArgument, match="cents"):
        ledger.set_budget(1, cents)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="max_cost_cents"):
        ledger.create_job(1, CONFIG, max_cost_cents=cents)  # type: ignore[arg-type]
    assert state(ledger) == before


def test_a_claim_reserves_and_the_end_releases(ledger: Ledger) -> None:
    ledger.set_budget(1, 100)
    job = ledger.create_job(1, CONFIG, max_cost_cents=30)
    assert claim_id(ledger) == job
    assert ledger.budget(1) == Budget(
        chat_id=1, limit_cents=100, spent_cents=0, reserved_cents=30, remaining_cents=70
    )
    ledger.complete(job, "ok", cost_cents=12)
    assert ledger.budget(1) == Budget(
        chat_id=1, limit_cents=100, spent_cents=12, reserved_cents=0, remaining_cents=88
    )


def test_four_jobs_under_a_budget_for_three(ledger: Ledger) -> None:
    ledger.set_budget(1, 30)
    ids = [ledger.create_job(1, CONFIG, max_cost_cents=10) for _ in range(4)]
    assert [claim_id(ledger, f"w{n}") for n in range(4)] == [*ids[:3], None]
    blocked = ledger.get_job(ids[3])
    assert blocked is not None and blocked.status is JobStatus.PENDING
    assert blocked.blocked_reason is not None and "budget" in blocked.blocked_reason
    assert "chat 1" in blocked.blocked_reason
    assert ledger.pending_jobs()[0].blocked_reason == blocked.blocked_reason
    assert ledger.get_job(ids[0]).blocked_reason is None  # type: ignore[union-attr]


def test_a_job_ending_under_its_reservation_unblocks_the_next(ledger: Ledger) -> None:
    ledger.set_budget(1, 25)
    first, second = (ledger.create_job(1, CONFIG, max_cost_cents=20) for _ in range(2))
    assert claim_id(ledger) == first
    assert claim_id(ledger) is None
    ledger.complete(first, "cheap", cost_cents=5)  # 5 spent, 20 reservation released
    assert ledger.get_job(second).blocked_reason is None  # type: ignore[union-attr]
    assert claim_id(ledger) == second


@pytest.mark.parametrize("end", ["fail", "cancel", "release", "retry"])
def test_every_end_of_an_attempt_releases_its_reservation(ledger: Ledger, end: str) -> None:
    ledger.set_budget(1, 10)
    job = ledger.create_job(1, CONFIG, max_cost_cents=10, max_attempts=2)
    assert claim_id(ledger, "w") == job
    assert ledger.budget(1).reserved_cents == 10
    if end == "fail":
        ledger.fail(job, "broken", retry=False)
    elif end == "cancel":
        ledger.cancel(job)
    elif end == "release":
        ledger.release(job, worker_id="w")
    else:
        ledger.fail(job, "flaky")  # back to pending for a retry
    assert ledger.budget(1).reserved_cents == 0


def test_raising_the_budget_unblocks_at_once(ledger: Ledger) -> None:
    ledger.set_budget(1, 5)
    job = ledger.create_job(1, CONFIG, max_cost_cents=10)
    assert claim_id(ledger) is None
    assert ledger.get_job(job).status is JobStatus.PENDING  # type: ignore[union-attr]
    ledger.set_budget(1, 10)
    assert claim_id(ledger) == job


def test_removing_the_budget_unblocks(ledger: Ledger) -> None:
    ledger.set_budget(1, 0)
    job = ledger.create_job(1, CONFIG)
    assert claim_id(ledger) is None
    ledger.set_budget(1, None)
    assert ledger.get_job(job).blocked_reason is None  # type: ignore[union-attr]
    assert claim_id(ledger) == job


def test_a_blocked_job_does_not_hold_back_others(ledger: Ledger) -> None:
    """The claim passes over a job its chat cannot afford, to a later one that fits (a smaller
    maximum, another chat's, one without a maximum)."""
    ledger.set_budget(1, 10)
    big = ledger.create_job(1, CONFIG, max_cost_cents=50, priority=5)
    other_chat = ledger.create_job(2, CONFIG, max_cost_cents=50)
    small = ledger.create_job(1, CONFIG, max_cost_cents=10)
    assert [claim_id(ledger), claim_id(ledger), claim_id(ledger)] == [other_chat, small, None]
    assert ledger.get_job(big).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_a_job_without_a_maximum_runs_while_anything_is_left(ledger: Ledger) -> None:
    ledger.set_budget(1, 10)
    first = ledger.create_job(1, CONFIG)
    second = ledger.create_job(1, CONFIG)
    assert claim_id(ledger) == first
    assert ledger.budget(1).reserved_cents == 0  # nothing reserved for it
    ledger.complete(first, "spent it all", cost_cents=10)
    assert claim_id(ledger) is None
    reason = ledger.get_job(second).blocked_reason  # type: ignore[union-attr]
    assert reason is not None and "spent" in reason
    ledger.set_budget(1, 10.5)
    assert claim_id(ledger) == second


def test_charges_add_up_to_the_cost(ledger: Ledger) -> None:
    job = ledger.create_job(1, CONFIG, max_cost_cents=10)
    ledger.claim("w")
    ledger.charge(job, 2.5, worker_id="w", detail={"model": "m", "tokens": 1200})
    ledger.charge(job, 1)
    assert ledger.get_job(job).cost_cents == 3.5  # type: ignore[union-attr]
    ledger.complete(job, "ok", cost_cents=0.5)
    assert ledger.get_job(job).cost_cents == 4.0  # type: ignore[union-attr]
    charges = ledger.job_events(job, types=[EventType.CHARGED])
    assert [e.payload["cents"] for e in charges] == [2.5, 1.0]
    assert charges[0].payload["detail"] == {"model": "m", "tokens": 1200}
    assert charges[0].worker_id == "w" and charges[0].attempt == 1


def test_a_charge_within_the_reservation_moves_it_to_spent(ledger: Ledger) -> None:
    ledger.set_budget(1, 50)
    job = ledger.create_job(1, CONFIG, max_cost_cents=20)
    ledger.claim("w")
    ledger.charge(job, 8)
    budget = ledger.budget(1)
    assert (budget.spent_cents, budget.reserved_cents, budget.remaining_cents) == (8, 12, 30)


def test_a_charge_past_the_jobs_maximum_is_refused(ledger: Ledger) -> None:
    job = ledger.create_job(1, CONFIG, max_cost_cents=10)
    ledger.claim("w")
    ledger.charge(job, 6)
    before = state(ledger)
    with pytest.raises(BudgetExceeded, match="max_cost_cents") as raised:
        ledger.charge(job, 5)
    assert isinstance(raised.value, LedgerError) and raised.value.job_id == job
    assert state(ledger) == before
    ledger.charge(job, 4)  # exactly up to the maximum is fine
    assert ledger.get_job(job).cost_cents == 10  # type: ignore[union-attr]


def test_a_charge_past_the_chats_limit_is_refused(ledger: Ledger) -> None:
    ledger.set_budget(1, 10)
    job = ledger.create_job(1, CONFIG)  # no maximum: nothing reserved, every cent must fit
    ledger.claim("w")
    ledger.charge(job, 7)
    before = state(ledger)
    with pytest.raises(BudgetExceeded, match="chat 1"):
        ledger.charge(job, 4)
    assert state(ledger) == before
    ledger.charge(job, 3)
    assert ledger.budget(1).remaining_cents == 0


def test_a_charge_counts_other_jobs_reservations(ledger: Ledger) -> None:
    ledger.set_budget(1, 30)
    reserved = ledger.create_job(1, CONFIG, max_cost_cents=25)
    free = ledger.create_job(1, CONFIG)
    assert claim_id(ledger) == reserved
    assert claim_id(ledger) == free
    with pytest.raises(BudgetExceeded):
        ledger.charge(free, 6)  # 25 reserved + 6 > 30
    ledger.charge(free, 5)
    ledger.charge(reserved, 25)  # within its own reservation: always fits


def test_charge_needs_a_running_job_and_its_holder(ledger: Ledger) -> None:
    job = ledger.create_job(1, CONFIG)
    with pytest.raises(InvalidTransition):
        ledger.charge(job, 1)
    ledger.claim("w")
    with pytest.raises(LeaseLost):
        ledger.charge(job, 1, worker_id="someone-else")
    with pytest.raises(InvalidArgument, match="cents"):
        ledger.charge(job, -1)
    with pytest.raises(InvalidArgument, match="detail"):
        ledger.charge(job, 1, detail={1: "not a str key"})
    assert ledger.job_events(job, types=[EventType.CHARGED]) == []


def test_spent_counts_failed_and_cancelled_jobs_charges(ledger: Ledger) -> None:
    ledger.set_budget(1, 100)
    failed, cancelled = (ledger.create_job(1, CONFIG, max_cost_cents=50) for _ in range(2))
    ledger.claim("w1")
    ledger.claim("w2")
    ledger.charge(failed, 7)
    ledger.charge(cancelled, 3)
    ledger.fail(failed, "broke", retry=False)
    ledger.cancel(cancelled)
    assert ledger.budget(1) == Budget(
        chat_id=1, limit_cents=100, spent_cents=10, reserved_cents=0, remaining_cents=90
    )


def test_a_retry_reserves_what_is_left_of_the_maximum(ledger: Ledger, clock: FakeClock) -> None:
    ledger.set_budget(1, 100)
    job = ledger.create_job(1, CONFIG, max_cost_cents=40, max_attempts=2)
    ledger.claim("w")
    ledger.charge(job, 15)
    ledger.fail(job, "flaky")
    clock.advance(3600)
    assert claim_id(ledger) == job
    budget = ledger.budget(1)
    assert (budget.spent_cents, budget.reserved_cents) == (15, 25)


def test_replay_rebuilds_every_budget(ledger: Ledger) -> None:
    ledger.set_budget(1, 40)
    ledger.set_budget(2, 5)
    ledger.set_budget(3, 9)
    ledger.set_budget(3, None)
    job = ledger.create_job(1, CONFIG, max_cost_cents=20)
    ledger.claim("w")
    ledger.charge(job, 4)
    before = [ledger.budget(chat) for chat in (1, 2, 3)]
    report = ledger.replay()
    assert report.events == len(ledger.read_all())
    assert [ledger.budget(chat) for chat in (1, 2, 3)] == before
    assert before[0] == Budget(
        chat_id=1, limit_cents=40, spent_cents=4, reserved_cents=16, remaining_cents=20
    )
    assert ledger.verify().ok
    ledger.create_job(1, CONFIG, max_cost_cents=21)
    assert claim_id(ledger) is None  # the rebuilt budget still holds it back


def test_export_and_import_carry_the_budgets(open_ledger: object, ledger: Ledger) -> None:
    ledger.set_budget(1, 12)
    ledger.create_job(1, CONFIG, max_cost_cents=20)
    copy = open_ledger()  # type: ignore[operator]
    copy.import_events(ledger.export_events())
    assert copy.budget(1) == ledger.budget(1)
    assert copy.claim("w") is None
    assert copy.verify().ok
