"""The ``jobs`` table: the jobs projection as SQLite stores it, and every query on it.

One row per `JobState`, its columns in the state's field order. Times are fixed-width UTC text
(`timecodec`), the status its enum value, the config its JSON text. `row_values` is the one
place a state becomes a row and `to_state` the one place a row becomes a state, so what the live
commands write, what replay writes and what verify compares are the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import apsw
import msgspec

from ...domain.model import JobStatus
from ...domain.state import FIELDS, JobState
from ...domain.timeutil import to_text as _format
from ...domain.transitions import STATUSES
from ...errors import CorruptProjection
from ..protocol import JobFilter
from .budgets_table import FITS_BUDGET
from .queues_table import NOT_PAUSED
from .timecodec import from_text, known_times, optional_text, to_text

COLUMNS: tuple[str, ...] = tuple("config" if f == "config_json" else f for f in FIELDS)
_TIME_COLUMNS = frozenset(
    {"started_at", "completed_at", "created_at", "updated_at", "run_at", "lease_expires_at"}
)
_statuses = ", ".join(f"'{s.value}'" for s in STATUSES)

# The text of this statement is part of the file format: a ledger's table keeps the shape it was
# created with, so a change here needs a new projection schema version (a rebuild on open).
table_statement = f"""CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    chat_id INTEGER NOT NULL,
    thread_id INTEGER,
    user_id TEXT,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({_statuses})),
    worker_id TEXT,
    started_at TEXT,
    completed_at TEXT,
    result_summary TEXT,
    result_status TEXT,
    cost_cents REAL,
    duration_seconds INTEGER,
    error_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    run_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    lease_expires_at TEXT,
    idempotency_key TEXT,
    created_position INTEGER NOT NULL,
    lease_seconds REAL,
    result_json TEXT,
    timeout_seconds REAL,
    parent_id TEXT,
    max_cost_cents REAL,
    subtree_cost_cents REAL NOT NULL DEFAULT 0.0,
    holder_host TEXT,
    holder_boot_id TEXT,
    holder_pid INTEGER,
    holder_start INTEGER,
    CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
)"""

# The statuses jobs_status lists. Running jobs are left out: a claim and its complete would
# each move the job's entry from one status region of the index to another (two pages written
# per command, about 14 us a claim + complete at synchronous=NORMAL), and the running set is
# small and already in jobs_lease, which its listings walk instead (`_build`). Written as an OR
# of equalities because SQLite uses a partial index only when it can prove the query's WHERE
# implies the index's, and its prover sees that ``status = 'failed'`` implies an OR holding that
# very term, but not ``status != 'running'`` nor an IN list.
_LISTED = " OR ".join(f"status = '{s.value}'" for s in STATUSES if s is not JobStatus.RUNNING)
# Every status a claim has reached (running and the ends): the jobs of jobs_chat_status, which
# leaves pending jobs out so that a create writes no entry there (the same OR form).
_STARTED = " OR ".join(f"status = '{s.value}'" for s in STATUSES if s is not JobStatus.PENDING)

# Each index serves a query below; the partial ones stay as small as the live set, so their
# cost does not grow with the number of finished jobs.
index_statements = (
    # claim: best pending job in priority, then age order; queue and run_at filtered in-index
    "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs "
    "(priority DESC, created_at, created_position, queue, run_at) WHERE status = 'pending'",
    # rescue: running jobs whose lease has run out
    "CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_expires_at) WHERE status = 'running'",
    # listing by status, oldest first (pending_jobs, failed_jobs, the CLI): every status but
    # running, whose jobs jobs_lease already holds (`_LISTED`)
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at, created_position) "
    f"WHERE {_LISTED}",
    # a chat's jobs, newest first (jobs_for_chat, recent events)
    "CREATE INDEX IF NOT EXISTS jobs_chat ON jobs (chat_id, created_at, created_position)",
    # a chat's running jobs and its latest finished ones (the summary), from those entries
    # alone: through jobs_chat both walked the chat's whole history (10,000 finished jobs in a
    # chat: 12 ms for its running jobs, 23 ms for the three latest finished; 0.01 and 0.02 ms
    # so). A claim and an end each move the job's entry: about 2.3 WAL pages a claim+complete.
    "CREATE INDEX IF NOT EXISTS jobs_chat_status ON jobs "
    f"(chat_id, status, completed_at, created_position) WHERE {_STARTED}",
    # a job's children, oldest first (trees: children, descendants, cascading cancel)
    "CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id, created_at, created_position) "
    "WHERE parent_id IS NOT NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
)
drop_statement = "DROP TABLE IF EXISTS jobs"

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
select_row_statement = f"{_SELECT} WHERE id = ?"
insert_statement = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)
dump_statement = f"{_SELECT} ORDER BY id"
prefix_statement = "SELECT id FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?"
idempotency_statement = "SELECT id FROM jobs WHERE idempotency_key = ?"
# INDEXED BY: without ANALYZE statistics the planner prefers jobs_status and sorts every pending
# job on each claim; the partial index yields them already in claim order (and SQLite refuses
# the query outright if the index ever stops fitting it, instead of silently scanning).
# A paused queue's jobs are passed over (`queues_table.NOT_PAUSED`: the operator's pause).
# The whole row, not just the id: the claim goes on to load the job it found, and reading it
# here saves that second lookup (`claimable` hands the state on).
_CLAIM = (
    _SELECT
    + " INDEXED BY jobs_claim WHERE status = 'pending' AND run_at <= ? {queues}"
    + NOT_PAUSED
    + FITS_BUDGET
    + "ORDER BY priority DESC, created_at, created_position LIMIT 1"
)
claim_any_statement = _CLAIM.format(queues="")
expired_statement = (
    "SELECT id FROM jobs INDEXED BY jobs_lease WHERE status = 'running' AND lease_expires_at <= ? "
    "ORDER BY lease_expires_at"
)
# A literal LIMIT: with a bound one SQLite runs this (every claim's first query) twice as slowly.
expired_batch_statement = expired_statement + " LIMIT 100"
counts_statement = "SELECT status, queue, count(*) FROM jobs GROUP BY status, queue ORDER BY 1, 2"
# One count per status in a single scan, no GROUP BY: grouping sorted every matching row in a
# temporary b-tree (jobs_status, which gave them in status order, has no running jobs), and the
# throughput chart runs this once per bucket. Statuses by name, the order GROUP BY gave.
_BY_NAME = sorted(STATUSES, key=lambda s: s.value)
finished_since_statement = (
    f"SELECT {', '.join(f'count(*) FILTER (WHERE status = {s.value!r})' for s in _BY_NAME)} "
    "FROM jobs WHERE completed_at >= ?"
)
durations_statement = (
    "SELECT duration_seconds FROM jobs WHERE status = 'completed' AND duration_seconds IS NOT NULL "
    "ORDER BY duration_seconds"
)
cost_statement = "SELECT coalesce(sum(cost_cents), 0.0) FROM jobs"
tables_statement = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'jobs'"

_ORDERS = {
    "newest": "created_at DESC, created_position DESC",
    "oldest": "created_at, created_position",
    "started": "started_at, created_position",
    "finished": "completed_at DESC, created_position DESC",
}
_fromiso = datetime.fromisoformat  # `timecodec.from_text`, without the call around it
_STATUS = {s.value: s for s in JobStatus}  # a dict lookup is 5x cheaper than JobStatus(text)
_STATUS_TEXT = {s: s.value for s in JobStatus}  # and 4x cheaper than an enum's ``.value``
_PENDING, _RUNNING = (JobStatus.PENDING,), (JobStatus.RUNNING,)


def claim_statement(queue_count: int | None) -> str:
    if queue_count is None:
        return claim_any_statement
    return _CLAIM.format(queues=f"AND queue IN ({', '.join('?' * queue_count)}) ")


def row_values(state: JobState) -> tuple[Any, ...]:
    """The row of ``state``, in `COLUMNS` order (the one place a state becomes a row)."""
    _text = to_text
    return (
        state.id,
        state.chat_id,
        state.thread_id,
        state.user_id,
        state.config_json,
        _STATUS_TEXT[state.status],
        state.worker_id,
        None if state.started_at is None else _text(state.started_at),
        None if state.completed_at is None else _text(state.completed_at),
        state.result_summary,
        state.result_status,
        state.cost_cents,
        state.duration_seconds,
        state.error_message,
        _text(state.created_at),
        _text(state.updated_at),
        state.version,
        state.queue,
        state.priority,
        _text(state.run_at),
        state.attempts,
        state.max_attempts,
        None if state.lease_expires_at is None else _text(state.lease_expires_at),
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


_astuple = msgspec.structs.astuple
_CONVERTED = "status created_at updated_at run_at started_at completed_at lease_expires_at"
_STATUS_I, _CREATED_I, _UPDATED_I, _RUN_I, _STARTED_I, _COMPLETED_I, _LEASE_I = (
    COLUMNS.index(c) for c in _CONVERTED.split()
)  # the columns `bulk_rows` converts


def bulk_rows(states: Iterable[JobState]) -> list[list[Any]]:
    """`row_values` of many new states, for one bulk insert (replay writes ~100,000 of them a
    batch): the same values (tested), from the fields in their order (`msgspec.structs.astuple`,
    one C call) with only the status and the times converted, each time formatted without the
    memo of `timecodec.to_text` (texts a later command reads back: a bulk insert only churns
    it), and a time two columns share (created_at and run_at, updated_at and completed_at, the
    same object in the common case) formatted once. 2.5x cheaper than `row_values`."""
    out: list[list[Any]] = []
    append = out.append
    for state in states:
        row = list(_astuple(state))
        row[_STATUS_I] = _STATUS_TEXT[row[_STATUS_I]]
        created, updated = state.created_at, state.updated_at
        row[_CREATED_I] = created_text = _format(created)
        row[_UPDATED_I] = updated_text = _format(updated)
        run = row[_RUN_I]
        row[_RUN_I] = created_text if run is created else _format(run)
        done = row[_COMPLETED_I]
        if done is not None:
            row[_COMPLETED_I] = updated_text if done is updated else _format(done)
        for i in (_STARTED_I, _LEASE_I):
            moment = row[i]
            if moment is not None:
                row[i] = _format(moment)
        append(row)
    return out


def column_value(state: JobState, field: str) -> Any:
    """One field of ``state`` as its column holds it (for an UPDATE of the changed fields)."""
    value = getattr(state, field)
    if field in _TIME_COLUMNS:
        return optional_text(value)
    if field == "status":
        return value.value
    return value


def to_state(values: Sequence[Any]) -> JobState:
    """The state a row holds (the one place a row becomes a state); a row edited around the
    ledger into something no event writes is a `CorruptProjection`, never a bare Python error."""
    try:
        return _to_state(values)
    except (ValueError, TypeError) as e:
        key = values[0] if values and isinstance(values[0], str) else "?"
        raise CorruptProjection("jobs", key, f"a column holds what no event writes ({e})") from e


def _to_state(values: Sequence[Any]) -> JobState:
    """The row's values by position (`JobState`'s field order is the columns'), the status and
    the times converted in place: the columns `bulk_rows` converts the other way."""
    row = list(values)
    if len(row) != len(COLUMNS):
        raise ValueError(f"{len(row)} columns, not the {len(COLUMNS)} of a job row")
    known = _STATUS.get(row[_STATUS_I])
    if known is None:
        status = row[_STATUS_I]
        raise CorruptProjection("jobs", row[0], f"its status {status!r} is not a job status")
    row[_STATUS_I] = known
    _time = known_times.get  # a time this process wrote or read: no parsing
    for i in _OPTIONAL_TIMES:
        text = row[i]
        if text is not None:
            row[i] = _time(text) or _fromiso(text)
    for i in _TIMES:
        text = row[i]
        row[i] = _time(text) or _fromiso(text)
    return JobState(*row)


_OPTIONAL_TIMES = (_STARTED_I, _COMPLETED_I, _LEASE_I)
_TIMES = (_CREATED_I, _UPDATED_I, _RUN_I)


_update_cache: dict[tuple[str, ...], tuple[str, Callable[[JobState], tuple[Any, ...]]]] = {}


def _updater(fields: tuple[str, ...]) -> tuple[str, Callable[[JobState], tuple[Any, ...]]]:
    """The UPDATE of exactly ``fields`` and a function giving its parameters from a state (the
    fields as `column_value` stores them, then the id), made once per set of fields. The
    function is compiled from the field names (checked against `FIELDS`, so nothing else can
    reach the source): one call per row instead of one per changed column."""
    cached = _update_cache.get(fields)
    if cached is None:
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"not JobState fields: {sorted(unknown)}")
        assignments = ", ".join(f"{'config' if f == 'config_json' else f} = ?" for f in fields)
        statement = f"UPDATE jobs SET {assignments} WHERE id = ?"
        parts = [_column_expression(f) for f in fields]
        source = f"lambda s: ({', '.join(parts)}, s.id)"
        names = {"_text": to_text, "_status": _STATUS_TEXT}
        params = eval(source, names)  # the source holds field names only: see above
        cached = _update_cache[fields] = (statement, params)
    return cached


def _column_expression(field: str) -> str:
    """`column_value` as an expression on ``s`` (for `_updater`)."""
    if field in _TIME_COLUMNS:
        return f"(None if s.{field} is None else _text(s.{field}))"
    if field == "status":
        return "_status[s.status]"
    return f"s.{field}"


def save(
    conn: apsw.Connection,
    new: Sequence[JobState],
    changed: Iterable[tuple[JobState, tuple[str, ...]]],
) -> None:
    """INSERT the new jobs (in creation order: the same rowids on every replay) and UPDATE only
    the changed columns of the others."""
    if new:
        if len(new) == 1:
            conn.execute(insert_statement, row_values(new[0]))
        else:
            conn.executemany(insert_statement, bulk_rows(new))
    execute = conn.execute
    for state, fields in changed:
        statement, params = _updater(fields)
        execute(statement, params(state))


def load(conn: apsw.Connection, job_id: str) -> JobState | None:
    try:
        values = conn.execute(select_row_statement, (job_id,)).fetchone()
    except UnicodeDecodeError as e:
        raise _not_text(job_id, e) from e
    return None if values is None else to_state(values)


def select(conn: apsw.Connection, where: JobFilter) -> list[JobState]:
    statement, params = _filtered(_SELECT, where, order=True)
    try:
        return [to_state(values) for values in conn.execute(statement, params)]
    except UnicodeDecodeError as e:
        raise _not_text("?", e) from e


def _not_text(key: str, error: UnicodeDecodeError) -> CorruptProjection:
    """SQLite hands back a text column that is not UTF-8 (written around the ledger)."""
    return CorruptProjection("jobs", key, f"a text column is not valid UTF-8 ({error.reason})")


def count(conn: apsw.Connection, where: JobFilter) -> int:
    statement, params = _filtered("SELECT count(*) FROM jobs", where, order=False)
    return int(conn.execute(statement, params).get)


_filter_cache: dict[tuple[Any, ...], str] = {}


def _filtered(head: str, where: JobFilter, *, order: bool) -> tuple[str, list[Any]]:
    """The statement for a `JobFilter` (cached by its shape) and its parameters. Statuses are
    written into the statement (they are the enum's own values), so SQLite can see that a
    filter on one fits a partial index."""
    statuses = where.statuses
    shape = (
        head,
        statuses,
        where.chat_id is not None,
        where.queue is not None,
        where.order if order else None,
        order and where.limit is not None,
    )
    statement = _filter_cache.get(shape)
    if statement is None:
        statement = _filter_cache[shape] = _build(head, where, order=order)
    params: list[Any] = []
    if where.chat_id is not None:
        params.append(where.chat_id)
    if where.queue is not None:
        params.append(where.queue)
    if order and where.limit is not None:
        params.append(where.limit)
    return statement, params


def _build(head: str, where: JobFilter, *, order: bool) -> str:
    """Running jobs of any chat: INDEXED BY jobs_lease, the running set (sorted afterwards).
    Running jobs of one chat: jobs_chat_status, that chat's running entries (forcing jobs_lease
    there made the summary walk every running job of every chat: 25x slower with 5,000 running
    jobs). Pending jobs of one chat walk the pending region of jobs_status (``+chat_id`` keeps
    jobs_chat out): the backlog is the live set, where the chat's jobs are its whole history
    (counting one chat's pending jobs among 10,000 of its finished ones: 10.8 ms through
    jobs_chat, 0.09 ms so). Several statuses: an IN list with the WHERE of each partial index
    that holds them all beside it (`_LISTED`, `_STARTED`: SQLite uses a partial index only
    where it sees the query's WHERE implies the index's), so that each status is walked in
    order and a LIMIT stops early (an OR of the statuses sorted every match: 100 ms for the
    newest 50 of 40,000 finished jobs, 0.26 ms so). Running with pending and no chat: an OR
    of one term per status, each walking its own index (`_status_term`)."""
    clauses = []
    statuses = where.statuses
    if statuses is not None:
        implied = [] if len(statuses) < 2 else _implied(statuses, where.chat_id is not None)
        if implied:
            listed = ", ".join(f"'{JobStatus(s).value}'" for s in statuses)
            clauses.append(f"status IN ({listed})" + "".join(f" AND ({w})" for w in implied))
        else:
            terms = [_status_term(JobStatus(s), alone=len(statuses) == 1) for s in statuses]
            clauses.append(terms[0] if len(terms) == 1 else f"({' OR '.join(terms)})")
        if tuple(statuses) == _RUNNING and where.chat_id is None:
            head += " INDEXED BY jobs_lease"
    if where.chat_id is not None:
        clauses.append(
            "+chat_id = ?"
            if statuses is not None and tuple(statuses) == _PENDING
            else "chat_id = ?"
        )
    if where.queue is not None:
        clauses.append("queue = ?")
    statement = head + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
    if order:
        statement += f" ORDER BY {_ORDERS[where.order]}"
        if where.limit is not None:
            statement += " LIMIT ?"
    return statement


def _implied(statuses: Sequence[JobStatus], chat: bool) -> list[str]:
    """The WHERE of each partial index that holds every job of ``statuses`` (jobs_chat_status
    only when one chat is asked for: it is ordered by chat first)."""
    implied = [] if JobStatus.RUNNING in statuses else [_LISTED]
    if chat and JobStatus.PENDING not in statuses:
        implied.append(_STARTED)
    return implied


def _status_term(status: JobStatus, *, alone: bool) -> str:
    """One status of a filter. Among others, running gets a term on lease_expires_at (the CHECK
    makes it the same rows): SQLite's OR plan needs a searchable term per branch, and the scan
    of the partial jobs_lease that serves running alone is not one. Each other status matches
    a branch of jobs_status's WHERE (`_LISTED`)."""
    if status is JobStatus.RUNNING and not alone:
        return "(status = 'running' AND lease_expires_at IS NOT NULL)"
    return f"status = '{status.value}'"


def statement_for(where: JobFilter) -> str:
    """The SELECT a `JobFilter` runs (benchmarks and plan tests run exactly these)."""
    return _filtered(_SELECT, where, order=True)[0]


get_statement = select_row_statement
pending_statement = statement_for(JobFilter(statuses=_PENDING, order="oldest", limit=1))
running_statement = statement_for(JobFilter(statuses=_RUNNING, order="started"))
for_chat_statement = statement_for(JobFilter(chat_id=0, order="newest", limit=1))
running_for_chat_statement = statement_for(JobFilter(statuses=_RUNNING, chat_id=0, order="started"))
recent_finished_for_chat_statement = statement_for(
    JobFilter(
        statuses=(JobStatus.COMPLETED, JobStatus.FAILED), chat_id=0, order="finished", limit=1
    )
)


children_statement = f"{_SELECT} WHERE parent_id = ? ORDER BY created_at, created_position"
# The subtree below a job, parents before their children (by depth, then age).
descendants_statement = (
    "WITH RECURSIVE tree (id, depth) AS (SELECT id, 1 FROM jobs WHERE parent_id = ? "
    "UNION ALL SELECT j.id, t.depth + 1 FROM jobs AS j JOIN tree AS t ON j.parent_id = t.id) "
    f"SELECT {', '.join('jobs.' + c for c in COLUMNS)} FROM tree JOIN jobs ON jobs.id = tree.id "
    "ORDER BY tree.depth, jobs.created_at, jobs.created_position"
)


def children(conn: apsw.Connection, job_id: str) -> list[JobState]:
    return [to_state(values) for values in conn.execute(children_statement, (job_id,))]


def descendants(conn: apsw.Connection, job_id: str) -> list[JobState]:
    return [to_state(values) for values in conn.execute(descendants_statement, (job_id,))]


def prefix(conn: apsw.Connection, text: str, limit: int) -> list[str]:
    return [r[0] for r in conn.execute(prefix_statement, (text, text + "\U0010ffff", limit))]


def dump(conn: apsw.Connection) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every row as stored, by id, for verify."""
    try:
        for values in conn.execute(dump_statement):
            yield values[0], dict(zip(COLUMNS, values, strict=True))
    except UnicodeDecodeError as e:
        raise _not_text("?", e) from e


def stored_form(state: JobState) -> dict[str, Any]:
    """``state`` as `dump` would show its row."""
    return dict(zip(COLUMNS, row_values(state), strict=True))


def exists(conn: apsw.Connection) -> bool:
    return bool(conn.execute(tables_statement).get)


def create(conn: apsw.Connection, *, indexes: bool = True) -> None:
    """The table, and (unless a bulk load comes first: it is faster to index afterwards) its
    indexes."""
    conn.execute(table_statement)
    if indexes:
        create_indexes(conn)


def create_indexes(conn: apsw.Connection) -> None:
    for statement in index_statements:
        conn.execute(statement)


_STATUS_INDEX = next(s for s in index_statements if " jobs_status " in s)
_CHAT_STATUS_INDEX = next(s for s in index_statements if " jobs_chat_status " in s)
_status_index_sql = "SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = 'jobs_status'"


def upgrade_indexes(conn: apsw.Connection) -> None:
    """Replace, in the open's write transaction, an index whose definition changed while the
    rows it indexes did not: jobs_status of a file from before it left running jobs out; and
    build one added since (jobs_chat_status). An index swap takes milliseconds, and building
    one reads only the jobs table, where a new projection version would replay the whole log
    (with the write lock held) on the first open of every older file."""
    sql = conn.execute(_status_index_sql).get
    if isinstance(sql, str) and " WHERE " not in sql:
        conn.execute("DROP INDEX jobs_status")
        conn.execute(_STATUS_INDEX)
    if sql is not None:  # a jobs table (an index added later is built on the first open)
        conn.execute(_CHAT_STATUS_INDEX)


def claimable(conn: apsw.Connection, now: str, queues: Sequence[str] | None) -> JobState | None:
    """The state of the best claimable job, or None."""
    params = (now,) if queues is None else (now, *queues)
    try:
        row = conn.execute(claim_statement(None if queues is None else len(queues)), params)
        values = row.fetchone()
    except UnicodeDecodeError as e:
        raise _not_text("?", e) from e
    return None if values is None else to_state(values)


def expired(conn: apsw.Connection, now: str, limit: int | None) -> list[str]:
    statement = expired_batch_statement if limit == 100 else expired_statement
    rows = conn.execute(statement, (now,)).fetchall()
    return [str(r[0]) for r in (rows if limit in (None, 100) else rows[:limit])]


# Running jobs only (the partial lease index): the live set, however long the history.
# `held_on` gives one row per holder process, not per job: a claim looks at each local process
# once, however many jobs it holds (a worker with 64 in flight). A few running jobs are made
# unique in Python (SQL's DISTINCT builds a temporary b-tree, which cost a claim more than the
# scan itself); past `_FEW` the DISTINCT query, which hands back far fewer rows, is cheaper.
_FEW = 64
_HELD_ON = (
    "SELECT {distinct} holder_boot_id, holder_pid, holder_start FROM jobs INDEXED BY jobs_lease "
    "WHERE status = 'running' AND holder_host = ?"
)
held_on_statement = _HELD_ON.format(distinct="") + f" LIMIT {_FEW + 1}"
held_on_distinct_statement = _HELD_ON.format(distinct="DISTINCT")
held_by_statement = (
    "SELECT id FROM jobs INDEXED BY jobs_lease WHERE status = 'running' AND holder_host = ? "
    "AND holder_boot_id IS ? AND holder_pid IS ? AND holder_start IS ? ORDER BY lease_expires_at"
)


def held_on(conn: apsw.Connection, host: str) -> list[tuple[str, int, int]]:
    """(boot id, pid, process start) of every process holding a running job on ``host``."""
    rows = conn.execute(held_on_statement, (host,)).fetchall()
    if len(rows) > _FEW:
        rows = conn.execute(held_on_distinct_statement, (host,)).fetchall()
    return list(dict.fromkeys(rows))  # type: ignore[arg-type]


def held_by(conn: apsw.Connection, host: str, holder: tuple[Any, Any, Any]) -> list[str]:
    """The running jobs that one process (boot id, pid, start) holds on ``host``."""
    return [str(r[0]) for r in conn.execute(held_by_statement, (host, *holder))]


def with_key(conn: apsw.Connection, key: str) -> str | None:
    row = conn.execute(idempotency_statement, (key,)).fetchone()
    return None if row is None else str(row[0])


def counts(conn: apsw.Connection) -> list[tuple[str, str, int]]:
    return [(str(s), str(q), int(n)) for s, q, n in conn.execute(counts_statement)]


def finished_since(conn: apsw.Connection, since: str) -> dict[str, int]:
    counts = conn.execute(finished_since_statement, (since,)).fetchall()[0]  # an aggregate: one row
    return {s.value: int(n) for s, n in zip(_BY_NAME, counts, strict=True) if n}


def durations(conn: apsw.Connection) -> list[int]:
    return [r[0] for r in conn.execute(durations_statement)]


def total_cost(conn: apsw.Connection) -> float:
    return float(conn.execute(cost_statement).get)


# The dashboard's and the metrics' reads (`Snapshot.search_jobs` and the aggregates below).
# The text filter is a case-insensitive (ASCII) substring of the id, the config's JSON text, the
# user, the result summary and the error message; the same expression on PostgreSQL.
_TEXT_MATCH = (
    "instr(lower(id || ' ' || config || ' ' || coalesce(user_id, '') || ' ' || "
    "coalesce(result_summary, '') || ' ' || coalesce(error_message, '')), lower(?)) > 0"
)
oldest_pending_statement = (
    "SELECT queue, min(created_at) FROM jobs WHERE status = 'pending' GROUP BY queue ORDER BY 1"
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
    conn: apsw.Connection, where: JobFilter, text: str | None, offset: int, limit: int
) -> list[JobState]:
    statement, params = _searched(_SELECT, where, text)
    statement += f" ORDER BY {_ORDERS[where.order]} LIMIT ? OFFSET ?"
    try:
        return [to_state(values) for values in conn.execute(statement, [*params, limit, offset])]
    except UnicodeDecodeError as e:
        raise _not_text("?", e) from e


def search_totals(conn: apsw.Connection, where: JobFilter, text: str | None) -> tuple[int, float]:
    head = "SELECT count(*), coalesce(sum(cost_cents), 0.0) FROM jobs"
    statement, params = _searched(head, where, text)
    n, cost = conn.execute(statement, params).get
    return int(n), float(cost)


def oldest_pending(conn: apsw.Connection) -> dict[str, Any]:
    return {str(q): from_text(t) for q, t in conn.execute(oldest_pending_statement)}


def cost_by_chat(conn: apsw.Connection) -> dict[int, float]:
    return {int(c): float(s) for c, s in conn.execute(cost_by_chat_statement)}


def queue_waits(conn: apsw.Connection) -> list[float]:
    """Seconds from when each started job last became claimable (created, or its ``run_at`` if
    later: a retry or rescue sets it again) to when its latest attempt started, ascending;
    computed in Python, as on PostgreSQL."""
    waits = []
    for created, run_at, started in conn.execute(waits_statement):
        ready = max(from_text(created), from_text(run_at))
        waits.append(max(0.0, (from_text(started) - ready).total_seconds()))
    return sorted(waits)
