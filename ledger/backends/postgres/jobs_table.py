"""The ``jobs`` table (the jobs projection) as PostgreSQL holds it, and every query on it.

One row per `JobState`, its columns in the state's field order, typed: times ``timestamptz``
(loaded as aware UTC datetimes), integers ``bigint``, the config its JSON text. `row_values` is
the one place a state becomes a row and `to_state` the one place a row becomes a state, so what
commands write, what replay writes and what verify compares are the same values. The table
itself, its indexes and its NOTIFY triggers are in ``schema.sql``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from ...domain.model import JobStatus
from ...domain.state import FIELDS, JobState
from ...errors import CorruptProjection
from ..protocol import JobFilter
from . import budgets_table

Conn = Any  # psycopg.Connection

COLUMNS: tuple[str, ...] = tuple("config" if f == "config_json" else f for f in FIELDS)
_STATUS = {s.value: s for s in JobStatus}
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
select_row_statement = f"{_SELECT} WHERE id = %s"
# A command deciding on a job holds its row until it commits: two writers deciding on one job
# take turns, and the second decides on what the first wrote.
lock_row_statement = select_row_statement + " FOR UPDATE"
# The lock of a job whose row the command took from memory (`PostgresTransaction.load_job`):
# the row, still at the version and xmin this process wrote, locked, or ledger_expect_row raises.
# Sent ahead of everything else the transaction sends, without waiting for its answer.
# Parameters: job id, the writer's 64-bit transaction id, the server's start, job id, version,
# xmin, the run token (`guard_params`). The token is compared in the lock's own query (a
# one-time filter: no row is locked where it differs, and the function raises).
guard_statement = (
    "SELECT ledger_expect_row(count(*), %s, %s, %s) FROM (SELECT FROM jobs WHERE id = %s AND "
    "version = %s AND xmin = %s::xid AND (SELECT token FROM ledger_run) = %s FOR UPDATE) AS row"
)


def guard_params(job_id: str, version: int, xmin: str, xid: str, run: str) -> tuple[Any, ...]:
    """``run``: the server's start and its run token, as the held write returned them."""
    started, _, token = run.partition(" ")
    return (job_id, xid, started, job_id, version, xmin, token)


insert_statement = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
)
_CREATED_AT = COLUMNS.index("created_position")


def _insert_taking_position(position: str) -> str:
    """A new job's INSERT whose created_position is the SQL expression ``position``."""
    values = ", ".join(position if i == _CREATED_AT else "%s" for i in range(len(COLUMNS)))
    return f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({values})"


# A job created in this transaction has a stand-in created_position (below zero; see the
# backend's append): the real one is its created event's (version 1), taken from the log.
insert_created_statement = _insert_taking_position(
    "(SELECT position FROM events WHERE job_id = %s AND version = 1)"
)
# The same row written in one statement with its created event (`combined`): the position is
# the first one the events' INSERT ``e`` returns (the statement's snapshot cannot see the row).
insert_created_from_statement = _insert_taking_position("(SELECT min(position) FROM e)")
dump_statement = f"{_SELECT} ORDER BY id"
# COLLATE "C": prefix ranges compare code points, as SQLite's text does.
prefix_statement = (
    'SELECT id FROM jobs WHERE id COLLATE "C" >= %s AND id COLLATE "C" < %s '
    'ORDER BY id COLLATE "C" LIMIT %s'
)
idempotency_statement = "SELECT id FROM jobs WHERE idempotency_key = %s"
# SKIP LOCKED: a claimer passes over jobs another claimer holds instead of waiting for it, so
# claimers never block each other and never take the same job.
# A paused queue's jobs are passed over (the queues projection: an operator's pause).
# The claim returns the whole row (the claim decides on it: no second query to load it) and
# whether the job's chat has a budgets row at all (without one there is no budget row to lock
# and check again: `still_fits` would find none).
_CLAIM = (
    f"SELECT {', '.join(COLUMNS)}, EXISTS (SELECT 1 FROM budgets AS b WHERE b.chat_id = "
    "jobs.chat_id) FROM jobs WHERE status = 'pending' AND run_at <= %s {queues}"
    "AND queue NOT IN (SELECT queue FROM queues WHERE paused) "
    + budgets_table.FITS_BUDGET
    + "{skip}ORDER BY priority DESC, created_at, created_position LIMIT 1 FOR UPDATE SKIP LOCKED"
)
claim_any_statement = _CLAIM.format(queues="", skip="")
claim_queues_statement = _CLAIM.format(queues="AND queue = ANY(%s) ", skip="")
# Jobs this claim found over budget once it held the lock, and chats whose budget row another
# transaction holds while this one may not wait for it (`claimable`'s ``wait_for_budgets``).
_SKIP = "AND NOT (id = ANY(%s)) AND NOT (chat_id = ANY(%s::bigint[])) "
claim_any_skip_statement = _CLAIM.format(queues="", skip=_SKIP)
claim_queues_skip_statement = _CLAIM.format(queues="AND queue = ANY(%s) ", skip=_SKIP)
CLAIM_TRIES = 20  # candidates one claim checks under their chat's lock before it gives up
children_statement = f"{_SELECT} WHERE parent_id = %s ORDER BY created_at, created_position"
# The subtree below a job, parents before their children (by depth, then age). Each level is
# found through ``jobs_parent`` (the LATERAL subquery, kept apart by its OFFSET 0, is run once
# per row found: an index scan), and the rows ride in the recursion, so nothing joins the tree
# back to the table. Planned as a join, on a table not yet ANALYZEd (after a bulk load, before
# autovacuum), it scanned the whole table: 16-30 ms for a leaf's empty subtree on 20,000 jobs.
descendants_statement = (
    f"WITH RECURSIVE tree ({', '.join(COLUMNS)}, depth) AS ("
    f"SELECT {', '.join(COLUMNS)}, 1 FROM jobs WHERE parent_id = %s "
    f"UNION ALL SELECT {', '.join('c.' + c for c in COLUMNS)}, t.depth + 1 FROM tree AS t "
    f"CROSS JOIN LATERAL (SELECT {', '.join(COLUMNS)} FROM jobs "
    "WHERE jobs.parent_id = t.id OFFSET 0) AS c) "
    f"SELECT {', '.join(COLUMNS)} FROM tree ORDER BY depth, created_at, created_position"
)
# The lock order of every write that locks several job rows: newest first (a job is created
# after its parent, so each job comes before its ancestors), the order a roll-up takes them in
# (`WriteTransaction.lock_jobs`). ``= ANY`` of an array the statement computes first: the rows
# are found by primary key, and locked as the sorted rows come out.
_LOCK_ORDER = " ORDER BY created_position DESC FOR UPDATE"
lock_jobs_statement = f"{_SELECT} WHERE id = ANY(%s){_LOCK_ORDER}"
lock_jobs_nowait_statement = lock_jobs_statement + " NOWAIT"
# The jobs and every ancestor of theirs (each parent found by primary key, one level at a time).
lock_lineage_statement = (
    "WITH RECURSIVE up (id, parent_id) AS (SELECT id, parent_id FROM jobs WHERE id = ANY(%s) "
    "UNION SELECT p.id, p.parent_id FROM up CROSS JOIN LATERAL "
    "(SELECT jobs.id, jobs.parent_id FROM jobs WHERE jobs.id = up.parent_id OFFSET 0) AS p) "
    f"{_SELECT} WHERE id = ANY(ARRAY(SELECT id FROM up)){_LOCK_ORDER}"
)
lock_lineage_nowait_statement = lock_lineage_statement + " NOWAIT"
# Expired leases are locked as they are found (so the rescue holds every row before it appends:
# no deadlock with a command that holds the counter), skipping those a claim holds right now.
_EXPIRED = (
    "SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at <= %s "
    "ORDER BY lease_expires_at, created_position {limit}FOR UPDATE SKIP LOCKED"
)
expired_statement = _EXPIRED.format(limit="")
expired_limit_statement = _EXPIRED.format(limit="LIMIT %s ")
counts_statement = (
    'SELECT status, queue, count(*) FROM jobs GROUP BY status, queue ORDER BY status COLLATE "C", '
    'queue COLLATE "C"'
)
finished_since_statement = (
    "SELECT status, count(*) FROM jobs WHERE completed_at >= %s GROUP BY status"
)
durations_statement = (
    "SELECT duration_seconds FROM jobs WHERE status = 'completed' AND duration_seconds IS NOT NULL "
    "ORDER BY duration_seconds"
)
cost_statement = "SELECT coalesce(sum(cost_cents), 0.0) FROM jobs"
exists_statement = "SELECT to_regclass('jobs') IS NOT NULL"
truncate_statement = "TRUNCATE jobs"

# NULLS FIRST/LAST as SQLite orders them (NULL sorts lowest there).
_ORDERS = {
    "newest": "created_at DESC, created_position DESC",
    "oldest": "created_at, created_position",
    "started": "started_at NULLS FIRST, created_position",
    "finished": "completed_at DESC NULLS LAST, created_position DESC",
}


def row_values(state: JobState) -> tuple[Any, ...]:
    """The row of ``state``, in `COLUMNS` order (the one place a state becomes a row)."""
    return (
        state.id,
        state.chat_id,
        state.thread_id,
        state.user_id,
        state.config_json,
        state.status.value,
        state.worker_id,
        state.started_at,
        state.completed_at,
        state.result_summary,
        state.result_status,
        state.cost_cents,
        state.duration_seconds,
        state.error_message,
        state.created_at,
        state.updated_at,
        state.version,
        state.queue,
        state.priority,
        state.run_at,
        state.attempts,
        state.max_attempts,
        state.lease_expires_at,
        state.idempotency_key,
        state.created_position,
        state.lease_seconds,
        state.result_json,
        state.timeout_seconds,
        state.parent_id,
        state.max_cost_cents,
        state.subtree_cost_cents,
        state.holder_host,
        state.holder_boot_id,
        state.holder_pid,
        state.holder_start,
    )


def _created_values(state: JobState) -> tuple[Any, ...]:
    values = row_values(state)
    return (*values[:_CREATED_AT], state.id, *values[_CREATED_AT + 1 :])


def values_but_position(state: JobState) -> tuple[Any, ...]:
    """`row_values` without ``created_position`` (`insert_created_from_statement` takes it)."""
    values = row_values(state)
    return (*values[:_CREATED_AT], *values[_CREATED_AT + 1 :])


def _insert(state: JobState) -> tuple[str, tuple[Any, ...]]:
    if state.created_position < 0:
        return insert_created_statement, _created_values(state)
    return insert_statement, row_values(state)


def column_value(state: JobState, field: str) -> Any:
    value = getattr(state, field)
    return value.value if field == "status" else value


def to_state(values: Sequence[Any]) -> JobState:
    """The state a row holds (the one place a row becomes a state)."""
    status = values[5]
    known = _STATUS.get(status)
    if known is None:
        raise CorruptProjection("jobs", values[0], f"its status {status!r} is not a job status")
    fields = dict(zip(FIELDS, values, strict=True))
    fields["status"] = known
    return JobState(**fields)


_update_cache: dict[tuple[str, ...], str] = {}


def update_values(state: JobState, fields: tuple[str, ...]) -> tuple[Any, ...]:
    """The parameters of `update_statement` (``fields``) for ``state``."""
    return (*[column_value(state, f) for f in fields], state.id)


def update_statement(fields: tuple[str, ...]) -> str:
    statement = _update_cache.get(fields)
    if statement is None:
        assignments = ", ".join(f"{'config' if f == 'config_json' else f} = %s" for f in fields)
        statement = _update_cache[fields] = f"UPDATE jobs SET {assignments} WHERE id = %s"
    return statement


def save(
    conn: Conn, new: Sequence[JobState], changed: Iterable[tuple[JobState, tuple[str, ...]]]
) -> None:
    """INSERT the new jobs in creation order and UPDATE only the changed columns of the others."""
    if len(new) == 1:
        conn.execute(*_insert(new[0]))
    elif new:
        own = [_created_values(s) for s in new if s.created_position < 0]  # see above
        earlier = [row_values(s) for s in new if s.created_position >= 0]
        with conn.cursor() as cursor:
            for statement, rows in ((insert_created_statement, own), (insert_statement, earlier)):
                if rows:
                    cursor.executemany(statement, rows)
    for state, fields in changed:
        conn.execute(update_statement(fields), update_values(state, fields))


def load(conn: Conn, job_id: str, *, lock: bool = False, nowait: bool = False) -> JobState | None:
    """The job's row (``lock``: ``FOR UPDATE``; with ``nowait``, `LockNotAvailable` at once
    when another transaction holds it)."""
    if lock:
        statement = lock_row_nowait_statement if nowait else lock_row_statement
    else:
        statement = select_row_statement
    values = conn.execute(statement, (job_id,)).fetchone()
    return None if values is None else to_state(values)


def _filtered(head: str, where: JobFilter, *, order: bool) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if where.statuses is not None:
        # Written into the statement (the enum's own values), not a parameter: the planner
        # proves a partial index fits (jobs_status leaves running out, jobs_lease holds only
        # running) from constants only, and a prepared statement's generic plan has none.
        names = ", ".join(f"'{JobStatus(s).value}'" for s in where.statuses)
        clauses.append(f"status IN ({names})")
    if where.chat_id is not None:
        clauses.append("chat_id = %s")
        params.append(where.chat_id)
    if where.queue is not None:
        clauses.append("queue = %s")
        params.append(where.queue)
    statement = head + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
    if order:
        statement += f" ORDER BY {_ORDERS[where.order]}"
        if where.limit is not None:
            # Written in, as the statuses are: with ``LIMIT %s`` the plan psycopg prepares
            # after a few runs assumes a tenth of the matches and sorts them all (a chat's
            # three latest finished jobs among its 2,250: 2.6-3.3 ms, the index walk 0.04 ms).
            statement += f" LIMIT {int(where.limit)}"
    return statement, params


def select(conn: Conn, where: JobFilter) -> list[JobState]:
    statement, params = _filtered(_SELECT, where, order=True)
    return [to_state(values) for values in conn.execute(statement, params)]


def count(conn: Conn, where: JobFilter) -> int:
    statement, params = _filtered("SELECT count(*) FROM jobs", where, order=False)
    return int(conn.execute(statement, params).fetchone()[0])


def prefix(conn: Conn, text: str, limit: int) -> list[str]:
    rows = conn.execute(prefix_statement, (text, text + "\U0010ffff", limit))
    return [r[0] for r in rows]


def dump(conn: Conn) -> Iterator[tuple[str, dict[str, Any]]]:
    for values in conn.execute(dump_statement):
        yield values[0], dict(zip(COLUMNS, values, strict=True))


def stored_form(state: JobState) -> dict[str, Any]:
    return dict(zip(COLUMNS, row_values(state), strict=True))


def exists(conn: Conn) -> bool:
    return bool(conn.execute(exists_statement).fetchone()[0])


def _claim_query(
    now: datetime,
    queues: Sequence[str] | None,
    skipped: list[str],
    passed: list[int] | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The claim query and its parameters, passing over the ``skipped`` jobs and the jobs of
    the ``passed`` chats."""
    passed = passed or []
    if queues is None:
        if skipped or passed:
            return claim_any_skip_statement, (now, skipped, passed)
        return claim_any_statement, (now,)
    if skipped or passed:
        return claim_queues_skip_statement, (now, list(queues), skipped, passed)
    return claim_queues_statement, (now, list(queues))


def send_claim(conn: Conn, now: datetime, queues: Sequence[str] | None) -> Any:
    """Send the claim query's first try (pipeline mode: without waiting); `claimable` takes
    its cursor."""
    return conn.execute(*_claim_query(now, queues, []))


UNCHECKED: Any = object()
"""`claimable`'s answer when the best job's chat has a budget and ``check_budgets`` is off."""


def claimable(
    conn: Conn,
    now: datetime,
    queues: Sequence[str] | None,
    sent: Any = None,
    *,
    check_budgets: bool = True,
    wait_for_budgets: bool = True,
) -> JobState | None:
    """The best claimable job, its row locked. The query passes over jobs that do not fit their
    chat's budget as it was when the statement began; the chosen one, when its chat has a
    budget, is checked again under that budget row's lock (`budgets_table.still_fits`), so two
    claimers never both spend one budget. ``sent``: the cursor of a first try already sent
    (`send_claim`). Without ``check_budgets``, such a job gives `UNCHECKED` (no budget row
    locked). Without ``wait_for_budgets`` (the transaction holds the log's counter), a budget
    row another transaction holds passes over that chat's jobs: that holder is a claimer of
    the chat about to append, and waiting for it while holding the counter it needs is a
    deadlock. The jobs passed over stay pending, and this claim's own COMMIT (it appended)
    wakes the waiting workers to look again."""
    skipped: list[str] = []
    passed: list[int] = []
    for _ in range(CLAIM_TRIES):
        if sent is not None:
            cursor, sent = sent, None
        else:
            cursor = conn.execute(*_claim_query(now, queues, skipped, passed))
        row = cursor.fetchone()
        if row is None:
            return None
        *values, has_budget = row
        if has_budget and not check_budgets:
            return UNCHECKED
        state = to_state(values)
        if not has_budget:
            return state
        fits = budgets_table.still_fits(conn, state.id, wait=wait_for_budgets)
        if fits:
            return state
        if fits is None:
            passed.append(state.chat_id)
        else:
            skipped.append(state.id)
    return None


def children(conn: Conn, job_id: str) -> list[JobState]:
    return [to_state(values) for values in conn.execute(children_statement, (job_id,))]


def descendants(conn: Conn, job_id: str) -> list[JobState]:
    return [to_state(values) for values in conn.execute(descendants_statement, (job_id,))]


# A cascade's locks: the job's subtree (found as `descendants_statement` finds it), in the lock
# order, the job itself last (the oldest). Also for a job already final, whose cancel cascades
# nowhere: its status as the statement's snapshot saw it may be gone by the time its lock is
# granted (a retry sent it back to pending), and a cascade that locked the job alone, and then
# its children, deadlocked with a charge on a child.
_LOCK_SUBTREE = (
    "WITH RECURSIVE tree (id) AS (SELECT id FROM jobs WHERE id = %s "
    "UNION ALL SELECT c.id FROM tree AS t CROSS JOIN LATERAL "
    "(SELECT jobs.id FROM jobs WHERE jobs.parent_id = t.id OFFSET 0) AS c) "
    f"{_SELECT} WHERE id = ANY(ARRAY(SELECT id FROM tree)){_LOCK_ORDER}"
)
lock_subtree_statement = _LOCK_SUBTREE
lock_subtree_nowait_statement = _LOCK_SUBTREE + " NOWAIT"


def lock_subtree(
    conn: Conn, job_id: str, *, lock: bool = True, nowait: bool = False
) -> list[JobState]:
    """Lock the jobs below ``job_id`` and the job itself, newest first; their states (none:
    no such job). ``nowait``: `LockNotAvailable` at once when another
    transaction holds one. (``lock`` is always true: the signature of the other locking
    loads, for `PostgresTransaction._lock_or_step_back`.)"""
    statement = lock_subtree_nowait_statement if nowait else lock_subtree_statement
    return [to_state(values) for values in conn.execute(statement, (job_id,))]


def lock_jobs(
    conn: Conn,
    job_ids: Sequence[str],
    *,
    ancestors: bool = False,
    lock: bool = True,
    nowait: bool = False,
) -> list[JobState]:
    """Lock the jobs ``job_ids`` names (``ancestors``: and every ancestor of theirs) in the
    lock order (newest first); the states of those that exist. (``lock`` and ``nowait``: as
    `lock_subtree`'s.)"""
    if ancestors:
        statement = lock_lineage_nowait_statement if nowait else lock_lineage_statement
    else:
        statement = lock_jobs_nowait_statement if nowait else lock_jobs_statement
    return [to_state(values) for values in conn.execute(statement, (list(job_ids),))]


def send_expired(conn: Conn, now: datetime, limit: int | None) -> Any:
    """Send the expired leases' query (pipeline mode: without waiting); `expired_ids` reads it."""
    if limit is None:
        return conn.execute(expired_statement, (now,))
    return conn.execute(expired_limit_statement, (now, limit))


def expired_ids(cursor: Any) -> list[str]:
    return [str(r[0]) for r in cursor.fetchall()]


def expired(conn: Conn, now: datetime, limit: int | None) -> list[str]:
    return expired_ids(send_expired(conn, now, limit))


# One row per holder process, not per job (see the SQLite twin).
held_on_statement = (
    "SELECT DISTINCT holder_boot_id, holder_pid, holder_start FROM jobs "
    "WHERE status = 'running' AND holder_host = %s"
)
held_by_statement = (
    "SELECT id FROM jobs WHERE status = 'running' AND holder_host = %s "
    "AND holder_boot_id IS NOT DISTINCT FROM %s AND holder_pid IS NOT DISTINCT FROM %s "
    "AND holder_start IS NOT DISTINCT FROM %s ORDER BY lease_expires_at"
)
# In a write: locked as found, skipping those another transaction holds (another claimer
# rescuing the same gone process: a wait for them, after this claim's own rescue took the log's
# counter, was a deadlock), as `_EXPIRED` does.
lock_held_by_statement = held_by_statement + " FOR UPDATE SKIP LOCKED"
lock_row_nowait_statement = lock_row_statement + " NOWAIT"
# A combiner's read ahead (`send_locked`): the rows of the jobs several queued commands load
# first, locked in one statement. SKIP LOCKED: it never waits (in id order, beside commands that
# lock rows in their own order, a wait could deadlock); a row another transaction holds is
# left out, and its command locks it itself, as it would have.
lock_rows_statement = f"{_SELECT} WHERE id = ANY(%s) FOR UPDATE SKIP LOCKED"


def send_locked(conn: Conn, job_ids: list[str]) -> Any:
    """Send the read ahead of ``job_ids`` (pipeline mode: without waiting); its cursor's rows
    are the jobs found and not held by another transaction (`to_state` each)."""
    return conn.execute(lock_rows_statement, (job_ids,))


def send_held_on(conn: Conn, host: str) -> Any:
    """Send `held_on`'s query (pipeline mode: without waiting); its cursor's rows are the
    answer."""
    return conn.execute(held_on_statement, (host,))


def held_on(conn: Conn, host: str) -> list[tuple[str, int, int]]:
    """(boot id, pid, process start) of every process holding a running job on ``host``."""
    rows: list[tuple[str, int, int]] = send_held_on(conn, host).fetchall()
    return rows


def held_by(
    conn: Conn, host: str, holder: tuple[Any, Any, Any], *, lock: bool = False
) -> list[str]:
    """The running jobs that one process (boot id, pid, start) holds on ``host`` (``lock``:
    those no other transaction holds, locked)."""
    statement = lock_held_by_statement if lock else held_by_statement
    return [str(r[0]) for r in conn.execute(statement, (host, *holder))]


def with_key(conn: Conn, key: str) -> str | None:
    row = conn.execute(idempotency_statement, (key,)).fetchone()
    return None if row is None else str(row[0])


def counts(conn: Conn) -> list[tuple[str, str, int]]:
    return [(str(s), str(q), int(n)) for s, q, n in conn.execute(counts_statement)]


def finished_since(conn: Conn, since: datetime) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute(finished_since_statement, (since,))}


def durations(conn: Conn) -> list[int]:
    return [int(r[0]) for r in conn.execute(durations_statement)]


def total_cost(conn: Conn) -> float:
    return float(conn.execute(cost_statement).fetchone()[0])


# The dashboard's and the metrics' reads (`Snapshot.search_jobs` and the aggregates below),
# the same expressions as on SQLite (lower() there folds ASCII letters only).
_TEXT_MATCH = (
    "strpos(lower(id || ' ' || config || ' ' || coalesce(user_id, '') || ' ' || "
    "coalesce(result_summary, '') || ' ' || coalesce(error_message, '')), lower(%s)) > 0"
)
oldest_pending_statement = (
    "SELECT queue, min(created_at) FROM jobs WHERE status = 'pending' GROUP BY queue "
    'ORDER BY queue COLLATE "C"'
)
cost_by_chat_statement = (
    "SELECT chat_id, sum(cost_cents) FROM jobs WHERE cost_cents IS NOT NULL "
    "GROUP BY chat_id ORDER BY 1"
)
waits_statement = "SELECT created_at, run_at, started_at FROM jobs WHERE started_at IS NOT NULL"


def _searched(head: str, where: JobFilter, text: str | None) -> tuple[str, list[Any]]:
    statement, params = _filtered(head, where, order=False)
    if text is not None:
        statement += (" AND " if " WHERE " in statement else " WHERE ") + _TEXT_MATCH
        params.append(text)
    return statement, params


def search(
    conn: Conn, where: JobFilter, text: str | None, offset: int, limit: int
) -> list[JobState]:
    statement, params = _searched(_SELECT, where, text)
    statement += f" ORDER BY {_ORDERS[where.order]} LIMIT %s OFFSET %s"
    return [to_state(values) for values in conn.execute(statement, [*params, limit, offset])]


def search_totals(conn: Conn, where: JobFilter, text: str | None) -> tuple[int, float]:
    head = "SELECT count(*), coalesce(sum(cost_cents), 0.0) FROM jobs"
    statement, params = _searched(head, where, text)
    n, cost = conn.execute(statement, params).fetchone()
    return int(n), float(cost)


def oldest_pending(conn: Conn) -> dict[str, datetime]:
    return {str(q): t for q, t in conn.execute(oldest_pending_statement)}


def cost_by_chat(conn: Conn) -> dict[int, float]:
    return {int(c): float(s) for c, s in conn.execute(cost_by_chat_statement)}


def queue_waits(conn: Conn) -> list[float]:
    """As on SQLite: seconds from when each started job could run to its latest start."""
    waits = [
        max(0.0, (started - max(created, run_at)).total_seconds())
        for created, run_at, started in conn.execute(waits_statement)
    ]
    return sorted(waits)
