"""Commands for subagent trees and budgets: ``tree`` and ``budget``.

``tree`` opens the ledger read-only; ``budget`` too, unless it sets a limit. Both print what the
library returns (`Ledger.descendants`, `Ledger.budget`).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from ..domain.model import Budget, Job, JobStatus
from . import format as fmt
from .common import AddCommand, open_ledger, out


def _seconds(now: datetime, job: Job) -> float | None:
    """How long the job ran: its recorded duration when it completed, else since its claim
    (running) or until it ended (failed, cancelled); None when it never started."""
    if job.duration_seconds is not None:
        return float(job.duration_seconds)
    if job.started_at is None:
        return None
    end = now if job.status is JobStatus.RUNNING else (job.completed_at or now)
    return max((end - job.started_at).total_seconds(), 0.0)


def _cents(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _line(now: datetime, job: Job, depth: int) -> str:
    took = _seconds(now, job)
    return (
        f"{'  ' * depth}{job.id[:8]}  {job.status.value:<9}  cost {_cents(job.cost_cents)}  "
        f"subtree {_cents(job.subtree_cost_cents)}  {'-' if took is None else fmt.duration(took)}"
    )


def _nest(now: datetime, root: Job, below: list[Job]) -> dict[str, Any]:
    """The subtree as nested dicts (parents listed before children, so one pass suffices)."""
    nodes: dict[str, dict[str, Any]] = {}
    for job in [root, *below]:
        node: dict[str, Any] = {"job": job, "duration_seconds": _seconds(now, job), "children": []}
        nodes[job.id] = node
        parent = nodes.get(job.parent_id) if job.parent_id is not None else None
        if parent is not None and job is not root:
            parent["children"].append(node)
    return nodes[root.id]


def cmd_tree(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=True) as ledger:
        root = ledger.find_job(args.job_id)
        below = ledger.descendants(root.id)
        now = ledger.now()
    tree = _nest(now, root, below)
    if args.json:
        out(fmt.to_json(tree))
        return 0
    stack: list[tuple[dict[str, Any], int]] = [(tree, 0)]
    while stack:  # depth first, iteratively: a deep tree never exhausts the stack
        node, depth = stack.pop()
        out(_line(now, node["job"], depth))
        stack.extend((child, depth + 1) for child in reversed(node["children"]))
    return 0


def _budget_text(budget: Budget) -> str:
    limit = "unlimited" if budget.limit_cents is None else _cents(budget.limit_cents)
    return (
        f"chat {budget.chat_id}\n"
        f"limit      {limit}\n"
        f"spent      {_cents(budget.spent_cents)}\n"
        f"reserved   {_cents(budget.reserved_cents)}\n"
        f"remaining  {'-' if budget.remaining_cents is None else _cents(budget.remaining_cents)}"
    )


def cmd_budget(args: argparse.Namespace) -> int:
    changing = args.set is not None or args.remove
    with open_ledger(args, readonly=not changing) as ledger:
        if changing:
            ledger.set_budget(args.chat_id, None if args.remove else args.set)
        budget = ledger.budget(args.chat_id)
    out(fmt.to_json(budget) if args.json else _budget_text(budget))
    return 0


def register(command: AddCommand) -> None:
    p = command("tree", cmd_tree, "a job and every job below it: status, cost, duration")
    p.add_argument("job_id", metavar="JOB_ID", help="the id or a unique prefix of it")

    p = command("budget", cmd_budget, "a chat's budget: limit, spent, reserved, remaining")
    p.add_argument("chat_id", type=int, metavar="CHAT_ID")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--set", type=float, metavar="CENTS", help="set the chat's limit")
    change.add_argument("--remove", action="store_true", help="remove the limit (unlimited)")
