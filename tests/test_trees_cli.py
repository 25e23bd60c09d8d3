"""Trees and budgets from the shell and in the README: ``ledger tree``, ``ledger budget``,
``ledger show``'s children and blocked reason, through real subprocesses on real files; the
README's example of a parent spawning children under a budget runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ledger import JobStatus, Ledger
from tests.conftest import ROOT, run_cli


@pytest.fixture
def family(db_path: str) -> dict[str, str]:
    """chat 5: root (running) -> child (completed, cost 3) -> grandchild (pending)."""
    with Ledger(db_path) as ledger:
        root = ledger.create_job(5, {"role": "lead"})
        ledger.claim("w")
        child = ledger.create_job(5, {"role": "coder"}, parent_id=root)
        ledger.claim("w")
        grandchild = ledger.create_job(5, {"role": "tester"}, parent_id=child, max_cost_cents=50)
        ledger.charge(child, 2)
        ledger.complete(child, "ok", cost_cents=1, duration_seconds=7)
        ledger.set_budget(5, 40)
    return {"root": root, "child": child, "grandchild": grandchild}


def test_tree_prints_status_cost_and_duration_indented(
    db_path: str, family: dict[str, str]
) -> None:
    lines = run_cli("tree", family["root"][:8], db=db_path, check=True).stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(family["root"][:8]) and "running" in lines[0]
    assert "subtree 3.00" in lines[0]
    assert lines[1].startswith("  " + family["child"][:8])
    assert "completed" in lines[1] and "cost 3.00" in lines[1] and "7.0s" in lines[1]
    assert lines[2].startswith("    " + family["grandchild"][:8]) and "pending" in lines[2]


def test_tree_json_nests_the_children(db_path: str, family: dict[str, str]) -> None:
    tree = json.loads(run_cli("tree", family["root"], "--json", db=db_path, check=True).stdout)
    assert tree["job"]["id"] == family["root"] and tree["job"]["subtree_cost_cents"] == 3.0
    (child,) = tree["children"]
    assert child["job"]["id"] == family["child"] and child["duration_seconds"] == 7
    (grandchild,) = child["children"]
    assert grandchild["job"]["id"] == family["grandchild"] and grandchild["children"] == []


def test_tree_of_an_unknown_job_is_one_line(db_path: str, family: dict[str, str]) -> None:
    result = run_cli("tree", "zzzz", db=db_path)
    assert result.returncode == 1 and "no job" in result.stderr
    assert "Traceback" not in result.stderr


def test_show_lists_children_and_why_a_job_waits(db_path: str, family: dict[str, str]) -> None:
    shown = run_cli("show", family["root"], db=db_path, check=True).stdout
    assert f"children:\n  {family['child']}  completed" in shown
    waiting = run_cli("show", family["grandchild"], db=db_path, check=True).stdout
    assert re.search(r"blocked_reason\s+waiting for budget", waiting)
    data = json.loads(run_cli("show", family["child"], "--json", db=db_path, check=True).stdout)
    assert [c["id"] for c in data["children"]] == [family["grandchild"]]


def test_budget_shows_and_sets(db_path: str, family: dict[str, str]) -> None:
    shown = run_cli("budget", "5", db=db_path, check=True).stdout
    assert "limit      40.00" in shown and "spent      3.00" in shown
    assert "remaining  37.00" in shown
    data = json.loads(run_cli("budget", "5", "--set", "60", "--json", db=db_path).stdout)
    assert data == {
        "chat_id": 5,
        "limit_cents": 60.0,
        "spent_cents": 3.0,
        "reserved_cents": 0.0,
        "remaining_cents": 57.0,
    }
    with Ledger(db_path) as ledger:  # the raised budget lets the grandchild start
        assert ledger.claim("w2").id == family["grandchild"]  # type: ignore[union-attr]
        assert ledger.verify().ok
    removed = run_cli("budget", "5", "--remove", db=db_path, check=True).stdout
    assert "limit      unlimited" in removed and "remaining  -" in removed


def test_budget_refuses_bad_cents_in_one_line(db_path: str, family: dict[str, str]) -> None:
    for bad in ("-5", "nan"):
        result = run_cli("budget", "5", "--set", bad, db=db_path)
        assert result.returncode == 1 and "cents" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    with Ledger(db_path, readonly=True) as ledger:
        assert ledger.budget(5).limit_cents == 40


def test_readme_trees_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"<!-- trees-example -->\n```python\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README trees example", "exec"), {})
    with Ledger(str(tmp_path / "agents.db"), readonly=True) as ledger:
        (lead,) = [j for j in ledger.jobs() if j.parent_id is None]
        assert lead.subtree_cost_cents == 15.0
        children = ledger.children(lead.id)
        assert len(children) == 2 and {c.status for c in children} == {JobStatus.COMPLETED}
        budget = ledger.budget(42)
        assert (budget.spent_cents, budget.remaining_cents) == (15.0, 85.0)
        assert ledger.verify().ok
