"""The ``budgets`` table (the budgets projection, `projections.budgets`) and the budget checks.

One row per chat whose budget was set: its limit (NULL: unlimited) and its stream's version.
What a chat spent and holds in reservations is summed from the jobs projection (`USAGE`), inside
the claim's or the charge's own write transaction (``BEGIN IMMEDIATE``: no other writer runs
in between), so a claim never hands out a job whose reservation the chat cannot cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apsw

from projections.budgets import BudgetState

from .timecodec import from_text, to_text

table_statement = """CREATE TABLE IF NOT EXISTS budgets (
    chat_id INTEGER PRIMARY KEY,
    limit_cents REAL,
    changed_at TEXT NOT NULL,
    version INTEGER NOT NULL
)"""
_COLUMNS = "chat_id, limit_cents, changed_at, version"
select_statement = f"SELECT {_COLUMNS} FROM budgets WHERE chat_id = ?"
all_statement = f"SELECT {_COLUMNS} FROM budgets ORDER BY chat_id"
upsert_statement = (
    f"INSERT INTO budgets ({_COLUMNS}) VALUES (?, ?, ?, ?) ON CONFLICT (chat_id) DO UPDATE "
    "SET limit_cents = excluded.limit_cents, changed_at = excluded.changed_at, "
    "version = excluded.version"
)
delete_statement = "DELETE FROM budgets"
any_limit_statement = "SELECT EXISTS (SELECT 1 FROM budgets WHERE limit_cents IS NOT NULL)"


def _usage(chat: str) -> str:
    """(spent + reserved) of the chat ``chat`` names: every job's cost so far, plus what each
    running job with a ``max_cost_cents`` may still spend of it."""
    return (
        "(SELECT coalesce(sum(coalesce(k.cost_cents, 0.0)), 0.0) + coalesce(sum(CASE WHEN "
        "k.status = 'running' AND k.max_cost_cents IS NOT NULL THEN "
        "max(k.max_cost_cents - coalesce(k.cost_cents, 0.0), 0.0) ELSE 0.0 END), 0.0) "
        f"FROM jobs AS k WHERE k.chat_id = {chat})"
    )


usage_statement = (
    "SELECT coalesce(sum(coalesce(cost_cents, 0.0)), 0.0), coalesce(sum(CASE WHEN "
    "status = 'running' AND max_cost_cents IS NOT NULL THEN "
    "max(max_cost_cents - coalesce(cost_cents, 0.0), 0.0) ELSE 0.0 END), 0.0) "
    "FROM jobs WHERE chat_id = ?"
)
# The claim query's filter (see jobs_table): a pending job is not handed out when its chat has a
# limit and the job's reservation (what it may still spend of its max_cost_cents) does not fit in
# what the chat has left; a job without max_cost_cents needs the chat to have anything left.
FITS_BUDGET = (
    "AND NOT EXISTS (SELECT 1 FROM budgets AS b WHERE b.chat_id = jobs.chat_id "
    "AND b.limit_cents IS NOT NULL AND CASE WHEN jobs.max_cost_cents IS NULL "
    f"THEN {_usage('jobs.chat_id')} >= b.limit_cents "
    f"ELSE {_usage('jobs.chat_id')} + "
    "max(jobs.max_cost_cents - coalesce(jobs.cost_cents, 0.0), 0.0) > b.limit_cents END) "
)


def create(conn: apsw.Connection) -> None:
    conn.execute(table_statement)


def _state(row: Sequence[Any]) -> BudgetState:
    chat_id, limit_cents, changed_at, version = row
    return BudgetState(
        chat_id=int(chat_id),
        limit_cents=None if limit_cents is None else float(limit_cents),
        changed_at=from_text(changed_at),
        version=int(version),
    )


def load(conn: apsw.Connection, chat_id: int) -> BudgetState | None:
    try:
        row = conn.execute(select_statement, (chat_id,)).fetchone()
    except apsw.SQLError:  # a file no writable open has upgraded yet: no budget set
        return None
    return None if row is None else _state(row)


def save(conn: apsw.Connection, states: Sequence[BudgetState]) -> None:
    for s in states:
        conn.execute(upsert_statement, (s.chat_id, s.limit_cents, to_text(s.changed_at), s.version))


def states(conn: apsw.Connection) -> list[BudgetState]:
    try:
        return [_state(row) for row in conn.execute(all_statement)]
    except apsw.SQLError:
        return []


def usage(conn: apsw.Connection, chat_id: int) -> tuple[float, float]:
    """(spent, reserved) of a chat, from the jobs projection."""
    spent, reserved = conn.execute(usage_statement, (chat_id,)).fetchone()  # type: ignore[misc]
    return float(spent), float(reserved)


def any_limit(conn: apsw.Connection) -> bool:
    try:
        return bool(conn.execute(any_limit_statement).get)
    except apsw.SQLError:
        return False


def reset(conn: apsw.Connection) -> None:
    """Empty the projection for a rebuild (a projection table, not the log: rows may go)."""
    create(conn)
    conn.execute(delete_statement)
