"""EXPLAIN on a session set up as the backend's writer's (its session statements), for the
plan tests: a plan depends on those settings, so it is asked for under the same ones."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.backends.postgres import backend
from ledger.backends.postgres.connection import connect, session_statements


def writer_plan(
    url: str, statement: str, params: Sequence[object], *, before: Sequence[str] = ()
) -> str:
    """The plan of ``statement`` as the writer would run it; ``before``: statements run first
    in the same transaction (ANALYZE, a planner setting), rolled back with it."""
    statements = session_statements("full", 30_000, False) + backend.WRITER_STATEMENTS
    conn = connect(url, statements, "explaining")
    try:
        for setup in before:
            conn.execute(setup)
        rows = conn.execute("EXPLAIN " + statement, params).fetchall()
        conn.rollback()
    finally:
        conn.close()
    return "\n".join(row[0] for row in rows)
