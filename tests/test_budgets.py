"""Budgets on a real SQLite file beyond the contract suite: ``ctx.charge`` inside a worker's
handler, an import refusing a charge no call could write, the budgets table as stored, and a
ledger whose jobs projection predates trees and budgets rebuilding on open."""

from __future__ import annotations

import json

import apsw
import pytest

from ledger import BudgetExceeded, EventType, InvalidArgument, JobContext, Ledger, Result, Worker
from tests.conftest import table_dump


def test_ctx_charge_records_spending_and_stops_at_the_maximum(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, {"task": "spend"}, max_cost_cents=10)
    refused: list[str] = []

    def handler(job: object, ctx: JobContext) -> Result:
        ctx.charge(4, detail={"tokens": 400})
        ctx.charge(4)
        try:
            ctx.charge(4)  # 12 > 10: refused, nothing written
        except BudgetExceeded as e:
            refused.append(str(e))
        return Result("spent 8", cost_cents=1)

    assert Worker(ledger, handler, worker_id="w").run(stop_when_idle=True) == 1
    assert len(refused) == 1 and "max_cost_cents 10" in refused[0]
    job = ledger.get_job(job_id)
    assert job is not None and job.cost_cents == 9 and job.result_summary == "spent 8"
    charges = ledger.job_events(job_id, types=[EventType.CHARGED])
    assert [(e.payload["cents"], e.worker_id, e.attempt) for e in charges] == [
        (4.0, "w", 1),
        (4.0, "w", 1),
    ]
    assert charges[0].payload["detail"] == {"tokens": 400}
    assert ledger.verify().ok


def test_a_handler_that_lets_budget_exceeded_escape_fails_its_attempt(ledger: Ledger) -> None:
    ledger.set_budget(1, 3)
    job_id = ledger.create_job(1, {"task": "overspend"})

    def handler(job: object, ctx: JobContext) -> Result:
        ctx.charge(2)
        ctx.charge(2)  # 4 > 3
        return Result("never")

    Worker(ledger, handler, worker_id="w").run(stop_when_idle=True)
    job = ledger.get_job(job_id)
    assert job is not None and job.status.value == "failed"
    assert "chat 1 has 1 of its 3 cents left" in (job.error_message or "")
    assert ledger.budget(1).spent_cents == 2


def test_import_refuses_a_charge_whose_detail_no_call_could_write(
    ledger: Ledger, tmp_path: object
) -> None:
    job_id = ledger.create_job(1, {})
    ledger.claim("w")
    ledger.charge(job_id, 1, detail={"ok": 1})
    lines = [json.loads(line) for line in ledger.export_events()]
    lines[-1]["data"]["detail"] = {"big": 2**70}  # no int64: charge() refuses it
    for line in lines:  # re-encoded data no longer fits the chain: import without the hashes
        line.pop("hash", None)
    with Ledger(":memory:") as copy, pytest.raises(InvalidArgument, match=r"line 3.*detail"):
        copy.import_events(json.dumps(line) for line in lines)


def test_budgets_are_a_table_of_their_own(db_path: str, ledger: Ledger) -> None:
    ledger.set_budget(7, 12.5)
    ledger.set_budget(8, 1)
    ledger.set_budget(8, None)
    rows = [row[:2] + row[3:] for row in table_dump(db_path, "budgets")]
    assert rows == [(7, 12.5, 1), (8, None, 2)]
    events = table_dump(db_path, "events")
    assert {row[1] for row in events} == {"chat:7", "chat:8"}


def test_a_projection_from_before_trees_is_rebuilt_on_open(db_path: str) -> None:
    """A checkpoint of an older jobs projection version makes the next writable open rebuild,
    so the new columns (parent, maximum, subtree cost) and the budgets are filled from the log."""
    with Ledger(db_path) as ledger:
        ledger.set_budget(1, 50)
        parent = ledger.create_job(1, {})
        ledger.claim("w")
        child = ledger.create_job(1, {}, parent_id=parent, max_cost_cents=9)
        ledger.claim("w")
        ledger.complete(child, "ok", cost_cents=4)
    conn = apsw.Connection(db_path)
    conn.execute("UPDATE projection_checkpoints SET schema_version = 1")
    conn.execute("UPDATE jobs SET subtree_cost_cents = 0")
    conn.execute("DELETE FROM budgets")
    conn.close()
    with Ledger(db_path) as ledger:
        assert ledger.get_job(parent).subtree_cost_cents == 4  # type: ignore[union-attr]
        assert ledger.budget(1).limit_cents == 50
        assert ledger.verify().ok
