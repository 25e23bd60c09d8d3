"""Law 12 with real processes: a budget is never overspent by claims or charges made at once by
several processes, on SQLite (one file) and PostgreSQL (one schema). Each process opens its own
`Ledger`; they all start on one event, so their claims race for real. Nothing is mocked."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger import BudgetExceeded, Ledger

FORK = multiprocessing.get_context("fork")  # children open their own Ledger (own connections)
DEADLINE = 60.0  # seconds: a bound on waiting for children, never a timing assertion
PROCESSES = 4
CONFIG = {"role": "coder", "task": "budget race"}


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "budget.db")
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test]'")
    return str(request.getfixturevalue("postgres_schema"))


def race(target: str, work: Callable[[str, str], Any]) -> list[Any]:
    """Run ``work(target, worker_id)`` in `PROCESSES` processes started together; their
    results (a child's exception comes back as text and fails the test). Every child stays
    alive until all have reported: a holder that exits is gone, and a claim on this host would
    rescue its jobs at once (local rescue), releasing their reservations."""
    start, done, results = FORK.Event(), FORK.Event(), FORK.Queue()
    procs = [
        FORK.Process(target=_child, args=(work, target, f"w{n}", start, done, results))
        for n in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    start.set()
    try:
        out = [results.get(timeout=DEADLINE) for _ in procs]
    finally:
        done.set()
    for proc in procs:
        proc.join(DEADLINE)
        assert proc.exitcode == 0, f"child exited with {proc.exitcode}"
    errors = [r for r in out if isinstance(r, str) and r.startswith("error:")]
    assert not errors, errors
    return out


def _child(
    work: Callable[..., Any], target: str, worker: str, start: Any, done: Any, results: Any
) -> None:
    try:
        start.wait(DEADLINE)
        results.put(work(target, worker))
    except BaseException as e:  # the parent asserts on it
        results.put(f"error: {type(e).__name__}: {e}")
    done.wait(DEADLINE)


def _claim_all(target: str, worker: str) -> list[str]:
    """Claim until nothing is claimable, finishing nothing: every reservation stays held."""
    claimed = []
    with Ledger(target) as ledger:
        while (job := ledger.claim(worker, lease=300)) is not None:
            claimed.append(job.id)
    return claimed


def test_four_processes_start_exactly_the_jobs_the_budget_fits(target: str) -> None:
    with Ledger(target) as ledger:
        ledger.set_budget(1, 30)  # fits three reservations of 10
        created = ledger.create_jobs([{"chat_id": 1, "config": CONFIG, "max_cost_cents": 10}] * 12)
    claimed = [job_id for per in race(target, _claim_all) for job_id in per]
    assert len(claimed) == 3 and len(set(claimed)) == 3
    assert set(claimed) <= set(created)
    with Ledger(target) as ledger:
        budget = ledger.budget(1)
        assert (budget.reserved_cents, budget.remaining_cents) == (30, 0)
        pending = ledger.jobs(status="pending", limit=100)
        assert len(pending) == 9
        assert all(job.blocked_reason is not None for job in pending)
        assert ledger.verify().ok


def _charge_until_refused(target: str, worker: str) -> float:
    """Take jobs (no maximum of their own) and charge a cent at a time until the chat's budget
    refuses; what this process got charged."""
    charged = 0.0
    with Ledger(target) as ledger:
        while (job := ledger.claim(worker, lease=300)) is not None:
            try:
                while True:
                    ledger.charge(job.id, 1, worker_id=worker)
                    charged += 1
            except BudgetExceeded:
                ledger.complete(job.id, "budget spent", worker_id=worker)
    return charged


def test_charges_of_four_processes_never_pass_the_chats_limit(target: str) -> None:
    with Ledger(target) as ledger:
        ledger.set_budget(2, 40)
        ledger.create_jobs([{"chat_id": 2, "config": CONFIG}] * 8)
    charged = race(target, _charge_until_refused)
    assert sum(charged) == 40
    with Ledger(target) as ledger:
        budget = ledger.budget(2)
        assert (budget.spent_cents, budget.remaining_cents) == (40, 0)
        assert ledger.claim("late") is None  # nothing left: no job without a maximum starts
        assert ledger.verify().ok
