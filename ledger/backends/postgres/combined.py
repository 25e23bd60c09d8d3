"""One statement for a command's events and its job row (and, at a lone COMMIT, the checkpoint).

Why: on PostgreSQL every statement costs about as much again as the row it writes (measured on
the ledger's create, raw psycopg in pipeline mode: ~30 us of psycopg's Python on the client and
~25 us of parse, bind and execute on the server per statement). A command that appends events to
one job and writes that job's row sent them as one INSERT per event and one job write; here they
become one statement with data-modifying CTEs::

    WITH e AS (INSERT INTO events ... VALUES (...), (...) RETURNING position)
    UPDATE jobs SET ... WHERE id = %s                    -- or INSERT INTO jobs ... (created)

and a lone caller's COMMIT folds the projection checkpoint into the same statement, so a lone
``create_job`` (without an idempotency key, which it looks up first) is one statement in all (no
BEGIN, no COMMIT: a statement outside a transaction block is its own transaction, and
``_Transactions`` sends it so when it is all there is).

Why it is the same write: the rows are the ones the backend sent one statement each. The events
are one multi-row INSERT, whose rows go in in order, each row's BEFORE trigger seeing the rows
before it (the insert trigger's version check and position counter work as they did; two
members would run in no set order). What the job write cannot see is the events' rows (a
statement's members share its snapshot), so the two reads that needed them take the positions
from the INSERT's RETURNING instead: a new job's ``created_position`` (its version-1 event,
which must be the first row) and the checkpoint (the last position the events took: the
transaction holds the counter row, so nobody appends in between). Only a tail of event inserts
for the very job whose row is then written is combined; anything else is sent as it was.

Order and locks: PostgreSQL runs a member the main statement does not read after the main
statement, so an UPDATE of the job row may run before the events' INSERT (and, with the
checkpoint, after the checkpoint's UPDATE). No lock is taken in a new order by it: a row a
command changes was locked when the command read it (`jobs.load` and the claim take it ``FOR
UPDATE``), so the UPDATE waits for nothing; a new job's INSERT reads ``e``, so it follows the
events, which take the counter row first, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...domain.state import JobState
from . import events_table, jobs_table

# The backend's own event INSERT, its VALUES row repeated (one per event), returning positions.
_INTO, _ROW = events_table.INSERT_INTO, events_table.INSERT_ROW
_CHECKPOINT = (
    "UPDATE projection_checkpoints SET position = (SELECT max(position) FROM e) WHERE name = %s"
)
MAX_EVENTS = 8  # a longer tail (rare) goes as it is: one statement text per count is prepared
_cache: dict[tuple[int, str, bool, bool], str] = {}
# What the job write returns where the backend keeps the row in memory (`_Transactions.known`):
# the row version's xmin, a new job's real created_position (its state has a stand-in), the
# writing transaction's 64-bit id and the server's run: its start (epoch seconds) and the token
# of schema.sql's UNLOGGED ledger_run (made here where a crash emptied it), what the guard checks.
_RETURNING = (
    "RETURNING xmin::text AS xmin, created_position, pg_current_xact_id()::text AS xid, "
    "extract(epoch FROM pg_postmaster_start_time())::text || ' ' || "
    "coalesce((SELECT token FROM ledger_run), ledger_run_token()) AS started"
)


class Combined:
    """A command's event inserts (``events``: their parameter rows) and its job row's write
    (``state``: the row it writes), as one statement; `statement` renders it, with the
    checkpoint ``name`` moved to the last position its events took when one is given."""

    __slots__ = ("events", "job_params", "job_statement", "state")

    def __init__(
        self,
        events: list[Any],
        job_statement: str,
        job_params: Sequence[Any],
        state: JobState | None = None,
    ) -> None:
        self.events = events
        self.job_statement = job_statement  # "e" names the events' positions
        self.job_params = job_params
        self.state = state

    def statement(
        self, checkpoint: str | None = None, *, returning: bool = False
    ) -> tuple[str, tuple[Any, ...]]:
        """``returning``: the statement returns one row, the job row's xmin (as text), its
        created_position, the transaction's 64-bit id and the server's run (both as text;
        no row: the checkpoint row is missing)."""
        key = (len(self.events), self.job_statement, checkpoint is not None, returning)
        text = _cache.get(key)
        if text is None:
            text = _cache[key] = _render(*key)
        params = [value for row in self.events for value in row]
        params.extend(self.job_params)
        if checkpoint is not None:
            params.append(checkpoint)
        return text, tuple(params)


def _render(count: int, job_statement: str, checkpoint: bool, returning: bool) -> str:
    # One multi-row INSERT, not a member per event: members run in no set order, and the
    # insert trigger of an event must see the events before it (its version check); the rows
    # of one INSERT are inserted in order, each trigger seeing the rows before its own.
    events = f"e AS ({_INTO} VALUES {', '.join([_ROW] * count)} RETURNING position)"
    if not checkpoint:
        return f"WITH {events} {job_statement}{' ' + _RETURNING if returning else ''}"
    if not returning:
        return f"WITH {events}, j AS ({job_statement}) {_CHECKPOINT}"
    # The job write read by the checkpoint's RETURNING: it runs there, after the events and
    # the checkpoint row, as it ran after the main statement before; the row was locked already.
    return (
        f"WITH {events}, j AS ({job_statement} {_RETURNING}) {_CHECKPOINT} "
        "RETURNING (SELECT xmin FROM j), (SELECT created_position FROM j), "
        "(SELECT xid FROM j), (SELECT started FROM j)"
    )


def combine(
    queue: list[tuple[Any, Any, bool]],
    new: list[JobState],
    changed: list[tuple[JobState, tuple[str, ...]]],
) -> bool:
    """Replace the event inserts at the end of ``queue`` (`_Later`'s) with one `Combined`
    entry that also writes the one job row of ``new`` or ``changed``; False (``queue`` as it
    was) where the write is not that shape.

    Not combined: many new jobs after their created events (`create_jobs`). One INSERT of
    100 such rows, each taking its position from its event's row of the CTE, measured slower
    than the 200 pipelined statements it replaced (28 against 17 ms raw: 4 ms of planning,
    and 4,000 parameters)."""
    if len(new) + len(changed) != 1:
        return False
    state = new[0] if new else changed[0][0]
    count = 0
    for statement, params, many in reversed(queue):
        if statement is not events_table.insert_deferred_statement or many:
            break
        if params[0] != state.id:
            return False
        count += 1
    if count == 0 or count > MAX_EVENTS or (changed and not changed[0][1]):
        return False
    rows = [entry[1] for entry in queue[-count:]]
    job_params: Sequence[Any]
    if new:
        if rows[0][1] != 1 or state.created_position >= 0:  # its created event is not here
            return False
        job_statement = jobs_table.insert_created_from_statement
        job_params = jobs_table.values_but_position(state)
    else:
        fields = changed[0][1]
        job_statement = jobs_table.update_statement(fields)
        job_params = jobs_table.update_values(state, fields)
    del queue[-count:]
    queue.append((Combined(rows, job_statement, job_params, state), None, False))
    return True
