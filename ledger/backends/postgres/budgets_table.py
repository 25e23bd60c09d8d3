"""The ``budgets`` table (the budgets projection, `projections.budgets`) as PostgreSQL holds it,
and the claim's budget check.

The table is in ``schema.sql``. What a chat spent and holds in reservations is summed from the
jobs projection, as on SQLite. At READ COMMITTED two claimers would each see the chat before the
other's claim commits, so a claim of a budgeted chat's job locks the chat's budget row
``FOR UPDATE`` and only then checks (a fresh statement, which sees every claim committed before
the lock was granted): claimers of one chat take turns, claimers of other chats never wait. A
claim whose transaction already appended (a rescue before it, or an earlier command of a shared
transaction) holds the log's counter, which such a turn-taker needs for its COMMIT: it does not
wait for the row but passes over that chat for now (`jobs_table.claimable`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projections.budgets import BudgetState

Conn = Any  # psycopg.Connection

_COLUMNS = "chat_id, limit_cents, changed_at, version"
select_statement = f"SELECT {_COLUMNS} FROM budgets WHERE chat_id = %s"
lock_statement = select_statement + " FOR UPDATE"
lock_nowait_statement = lock_statement + " NOWAIT"
all_statement = f"SELECT {_COLUMNS} FROM budgets ORDER BY chat_id"
upsert_statement = (
    f"INSERT INTO budgets ({_COLUMNS}) VALUES (%s, %s, %s, %s) ON CONFLICT (chat_id) "
    "DO UPDATE SET limit_cents = EXCLUDED.limit_cents, changed_at = EXCLUDED.changed_at, "
    "version = EXCLUDED.version"
)
delete_statement = "DELETE FROM budgets"
any_limit_statement = "SELECT EXISTS (SELECT 1 FROM budgets WHERE limit_cents IS NOT NULL)"


def _usage(chat: str) -> str:
    """spent + reserved of the chat ``chat`` names (see the SQLite twin)."""
    return (
        "(SELECT coalesce(sum(coalesce(k.cost_cents, 0)), 0) + coalesce(sum(CASE WHEN "
        "k.status = 'running' AND k.max_cost_cents IS NOT NULL THEN "
        "greatest(k.max_cost_cents - coalesce(k.cost_cents, 0), 0) ELSE 0 END), 0) "
        f"FROM jobs AS k WHERE k.chat_id = {chat})"
    )


usage_statement = (
    "SELECT coalesce(sum(coalesce(cost_cents, 0)), 0), coalesce(sum(CASE WHEN "
    "status = 'running' AND max_cost_cents IS NOT NULL THEN "
    "greatest(max_cost_cents - coalesce(cost_cents, 0), 0) ELSE 0 END), 0) "
    "FROM jobs WHERE chat_id = %s"
)
# True when the job (table alias ``jobs``) does not fit in its chat's budget right now.
_BLOCKED = (
    "EXISTS (SELECT 1 FROM budgets AS b WHERE b.chat_id = jobs.chat_id "
    "AND b.limit_cents IS NOT NULL AND CASE WHEN jobs.max_cost_cents IS NULL "
    f"THEN {_usage('jobs.chat_id')} >= b.limit_cents "
    f"ELSE {_usage('jobs.chat_id')} + "
    "greatest(jobs.max_cost_cents - coalesce(jobs.cost_cents, 0), 0) > b.limit_cents END)"
)
FITS_BUDGET = f"AND NOT {_BLOCKED} "
blocked_statement = f"SELECT {_BLOCKED} FROM jobs WHERE id = %s"


def _state(row: Sequence[Any]) -> BudgetState:
    chat_id, limit_cents, changed_at, version = row
    return BudgetState(
        chat_id=int(chat_id),
        limit_cents=None if limit_cents is None else float(limit_cents),
        changed_at=changed_at,
        version=int(version),
    )


def load(
    conn: Conn, chat_id: int, *, lock: bool = False, nowait: bool = False
) -> BudgetState | None:
    """The row (``lock``: ``FOR UPDATE``; with ``nowait``, `LockNotAvailable` at once when
    another transaction holds it)."""
    statement = select_statement
    if lock:
        statement = lock_nowait_statement if nowait else lock_statement
    row = conn.execute(statement, (chat_id,)).fetchone()
    return None if row is None else _state(row)


def save(conn: Conn, states: Sequence[BudgetState]) -> None:
    for s in states:
        conn.execute(upsert_statement, (s.chat_id, s.limit_cents, s.changed_at, s.version))


def states(conn: Conn) -> list[BudgetState]:
    return [_state(row) for row in conn.execute(all_statement)]


def usage(conn: Conn, chat_id: int) -> tuple[float, float]:
    spent, reserved = conn.execute(usage_statement, (chat_id,)).fetchone()
    return float(spent), float(reserved)


def any_limit(conn: Conn) -> bool:
    return bool(conn.execute(any_limit_statement).fetchone()[0])


lock_for_job_statement = (
    "SELECT b.limit_cents FROM budgets AS b JOIN jobs AS j ON b.chat_id = j.chat_id "
    "WHERE j.id = %s FOR UPDATE OF b"
)
try_lock_for_job_statement = lock_for_job_statement + " SKIP LOCKED"


def still_fits(conn: Conn, job_id: str, *, wait: bool = True) -> bool | None:
    """Lock the job's chat's budget row, then check again: does the job still fit (claims that
    committed while this one waited for the lock are counted now)? Without ``wait``: None when
    the row is not there to lock now (another transaction holds it; the caller knows from the
    claim query that the chat has one), and nothing was checked."""
    statement = lock_for_job_statement if wait else try_lock_for_job_statement
    row = conn.execute(statement, (job_id,)).fetchone()
    if row is None:
        return True if wait else None  # (waiting, no row: the chat has no budget row)
    if row[0] is None:
        return True
    return not bool(conn.execute(blocked_statement, (job_id,)).fetchone()[0])


def reset(conn: Conn) -> None:
    """Empty the projection for a rebuild (a projection table, not the log)."""
    conn.execute(delete_statement)
