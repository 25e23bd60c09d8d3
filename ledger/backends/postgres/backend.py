"""`PostgresBackend`: the storage protocol (`ledger.backends.protocol`) on a PostgreSQL database.

Writes run on one connection of their own, under a lock (the protocol serialises a backend's
transactions), at READ COMMITTED: the laws do not need more, because the database orders the
writers itself. `load_job` locks the job's row (``FOR UPDATE``), so two writers deciding on one
job take turns and the second decides on what the first committed; every append takes the
position counter's row lock, so appends commit in position order; `claimable` takes its row with
``FOR UPDATE SKIP LOCKED``, so claimers in other processes pass over it instead of waiting. No
transaction waits for a row lock while it holds the counter (the row's holder may be waiting
for the counter at its COMMIT): a job's locked read goes ahead of the command's queued events,
a later command of a shared transaction steps back rather than wait (`_lock_or_step_back`),
and a claim that rescued something passes over what others hold. A transaction PostgreSQL
aborts to break a deadlock (or a lost race for an idempotency key) is run
again, a few times, before it is reported as `LedgerBusy`.

Reads run on a `psycopg_pool.ConnectionPool`, each in one ``REPEATABLE READ READ ONLY``
transaction (one snapshot), several threads in parallel. `wait_for_change` listens on the
``ledger_events`` and ``ledger_jobs`` channels that ``schema.sql``'s triggers notify.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, TypeVar

import msgspec
import psycopg
from psycopg import IsolationLevel
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from projections.budgets import BudgetState
from projections.queues import QueueState

from ...domain import events as ev
from ...domain.chain import ChainRow
from ...domain.events import StoredEvent
from ...domain.state import JobState
from ...errors import ConcurrencyError, LedgerError, StorageError, StorageUnavailable
from ..group import Group, GroupCommit, StepBack
from ..protocol import Backend, ClaimLooks, JobFilter, WriteTransaction
from ..table_reads import TableReads
from . import budgets_table, queues_table
from . import events_table as events
from . import jobs_table as jobs
from .combined import Combined, combine
from .connection import (
    LockedOutOfOrder,
    check_reader,
    check_schema,
    configure,
    connect,
    create_schema,
    is_retryable,
    redact,
    schema_text,
    session_statements,
    still_open,
    wrap_error,
)

_T = TypeVar("_T")
log = logging.getLogger(__name__)
RETRIES = 5  # runs of a transaction PostgreSQL aborted (deadlock, serialisation) before LedgerBusy
READERS = 8  # read connections at most per backend
KNOWN_JOBS = 1024  # job rows `_Transactions.known` keeps at most
_CHANNELS = ("ledger_events", "ledger_jobs")
# The writer's statements are short, ordered index walks, and the claim (ORDER BY the jobs_claim
# index, LIMIT 1) is the hot one. Three planner settings keep them so:
# - enable_sort off: on a jobs table autovacuum has not analyzed yet (a new ledger, a burst of
#   jobs), the planner guessed 1 pending row and planned claims as a bitmap scan that sorts
#   every pending job (measured 7 ms a claim with 3,000 pending, O(backlog)) instead of the
#   index walk that stops at the first claimable one (0.15 ms). Sorts still run where no index
#   gives the order; they only stop looking cheaper than one that does.
# - force_generic_plan: the writer runs the same statements over and over, prepared (psycopg
#   prepares from a statement's fifth run); left to choose, the server kept planning the claim
#   afresh each run (1.5-2.5 ms a claim query, 0.6 ms with the generic plan: the same walk).
# - jit off: with sorts priced out, a statement that still needs one (a cascade's read of the
#   subtree) is costed far past the JIT thresholds, and the server compiled it on every run:
#   495 ms a read, 471 of them compiling (measured), while the cascade held the log's counter.
WRITER_STATEMENTS = [
    "SET enable_sort TO off",
    "SET plan_cache_mode TO force_generic_plan",
    "SET jit TO off",
]


class _Kept(NamedTuple):
    """A job row as a lone commit of this backend wrote it (`_Transactions.known`), with what
    the guard checks: the row version's xmin, the writing transaction's 64-bit id and the
    server's run (its start and ``ledger_run``'s token: schema.sql), all as the server printed
    them."""

    state: JobState
    xmin: str
    xid: str
    started: str


_GUARD_FAILED = re.compile(r"^job (?P<job>.*) changed since this process last wrote it", re.DOTALL)


class _StaleVersion(NamedTuple):
    """An append hit UNIQUE (job_id, version): the job moved on. Read from the error's detail
    once the command was rolled back, and turned into `ConcurrencyError` (the actual version
    needs a fresh query)."""

    job_id: str
    expected: int


class PostgresSnapshot(TableReads):
    """Reads on one connection, inside the transaction that holds it.
    The reads alike on every backend are `TableReads`'; here are the ones that differ."""

    __slots__ = ("conn",)
    _jobs: ClassVar[Any] = jobs
    _events: ClassVar[Any] = events
    _budgets: ClassVar[Any] = budgets_table

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    # jobs
    def count_jobs(self, where: JobFilter) -> int:
        return jobs.count(self.conn, where)

    def finished_since(self, since: datetime) -> dict[str, int]:
        return jobs.finished_since(self.conn, since)

    # the log
    def export_rows(self, after: int, limit: int) -> list[ChainRow]:
        """Rows as stored: data its JSON text, the time an aware UTC datetime, the hash."""
        return events.export_rows(self.conn, after, limit)

    def chain_rows(self, after: int = 0) -> Iterator[ChainRow]:
        try:
            yield from events.chain_rows(self.conn, after)
        except psycopg.Error as e:
            raise wrap_error(e, "reading the log") from e

    def head(self) -> tuple[int, str]:
        position, digest = events.read_head(self.conn, lock=False)
        return position, digest.hex()

    # replay and verify
    def iter_events(self, after: int = 0) -> Iterator[StoredEvent]:
        try:
            yield from events.iter_after(self.conn, after)
        except psycopg.Error as e:
            raise wrap_error(e, "reading the log") from e

    def version_at(self, job_id: str, position: int) -> int:
        return events.version_at(self.conn, job_id, position)

    def dump_jobs(self) -> list[tuple[str, dict[str, Any]]]:
        try:
            return list(jobs.dump(self.conn))
        except psycopg.Error as e:
            raise wrap_error(e, "reading the jobs projection") from e

    # queues (the queues projection)
    def queue_states(self) -> list[QueueState]:
        return queues_table.states(self.conn)

    def paused_queues(self) -> list[str]:
        return queues_table.paused(self.conn)


_TAKEN_VERSION = re.compile(r"\(job_id, version\)=\((?P<job>.*), (?P<version>\d+)\)")


def _stale_from(error: pg_errors.UniqueViolation) -> _StaleVersion | None:
    """The stale version a unique violation on (job_id, version) reports, from its detail."""
    found = _TAKEN_VERSION.search(getattr(error.diag, "message_detail", None) or "")
    if found is None:
        return None
    return _StaleVersion(found.group("job"), int(found.group("version")) - 1)


class _Later:
    """Writes a transaction may send at the end (`execute`/`executemany` queue them, in order):
    the events, the jobs rows and the checkpoint a command writes, so they reach the server
    together with the COMMIT. Used as a connection by the table modules' write functions."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: list[tuple[str, Any, bool]] = []

    def execute(self, statement: str, params: Any = None) -> None:
        self.queue.append((statement, params, False))

    def executemany(self, statement: str, rows: Any) -> None:
        self.queue.append((statement, rows, True))

    def cursor(self) -> contextlib.AbstractContextManager[_Later]:
        return contextlib.nullcontext(self)


class _Now:
    """The transaction's connection for everything else: a statement sent now first sends what
    `_Later` holds, so every read (and every lock) sees this transaction's own writes; and the
    transaction's BEGIN, which `_Transactions` keeps back until something is sent."""

    __slots__ = ("_conn", "_transactions", "later")

    def __init__(self, conn: psycopg.Connection[Any], transactions: _Transactions) -> None:
        self._conn = conn
        self._transactions = transactions
        self.later = _Later()

    def send(self) -> None:
        """Send the queued writes (pipeline mode: without waiting for their results)."""
        queue, self.later.queue = self.later.queue, []
        if not queue:
            return
        transactions = self._transactions
        transactions.open()
        send(self._conn, transactions.put(), queue)

    def _ready(self) -> None:
        """Before a statement of the transaction's own: what it must follow goes first."""
        if self.later.queue:
            self.send()
        else:
            self._transactions.open()

    def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        self._ready()
        return self._conn.execute(statement, params, **kwargs)

    def ahead(self) -> psycopg.Connection[Any]:
        """The connection, for a statement that need not follow the queued writes (they stay
        queued): the transaction's BEGIN goes first."""
        self._transactions.open()
        return self._conn

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        self._ready()
        return self._conn.cursor(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def send(
    conn: psycopg.Connection[Any], put: psycopg.Cursor[Any], queue: list[tuple[Any, Any, bool]]
) -> None:
    """Send `_Later`'s entries in order (``put``: the writer's cursor for them), a `Combined`
    one as its one statement."""
    for statement, params, many in queue:
        if many:
            with conn.cursor() as cursor:
                cursor.executemany(statement, params)
        elif params is None and isinstance(statement, Combined):
            put.execute(*statement.statement())
        else:
            put.execute(statement, params)


def forget_prepared(conn: psycopg.Connection[Any]) -> None:
    """After a failed statement in pipeline mode: forget which statements psycopg prepared
    (it sends ``DEALLOCATE ALL`` before the next, and prepares them again as it goes). The
    server skips everything after a failed statement until the sync, a statement's first
    prepare included, but psycopg counts the one it sent as prepared: the next run of that
    statement then failed with "prepared statement ... does not exist" (measured: a group
    whose commands run without a sync each, after a neighbour's error)."""
    prepared = getattr(conn, "_prepared", None)
    clear = getattr(prepared, "clear", None)
    if clear is not None:
        clear()


class _ReadAhead:
    """The rows a combiner's read ahead locked (`jobs_table.send_locked`), read on first use:
    each is given once, to the first command that loads its job, and forgotten as soon as
    anything of this transaction writes that job (or the transaction rolls back past it)."""

    __slots__ = ("_cursor", "_rows", "savepoint")

    def __init__(self, cursor: Any, savepoint: int) -> None:
        self._cursor: Any = cursor
        self._rows: dict[str, JobState] = {}
        self.savepoint = savepoint  # the command savepoint it was sent in (0: none)

    def take(self, job_id: str) -> JobState | None:
        """The job's row as read ahead and still current; None: load it as ever (it was not
        asked for, is held by another transaction, does not exist, or was written since)."""
        cursor = self._cursor
        if cursor is not None:
            self._cursor = None
            self._rows = {state.id: state for state in map(jobs.to_state, cursor.fetchall())}
        return self._rows.pop(job_id, None)

    def forget(self, job_ids: Sequence[str]) -> None:
        rows = self._rows
        for job_id in job_ids:
            rows.pop(job_id, None)


class PostgresTransaction(PostgresSnapshot):
    """The write half, at READ COMMITTED; the row locks named in the module docstring make what
    it decided on stay true until it commits.

    The writer connection stays in psycopg's pipeline mode (see `PostgresBackend._writer`): a
    statement whose result nobody fetches (an insert, an update, BEGIN itself) goes out with
    the next one that is fetched, or with the COMMIT, instead of costing a round trip of its
    own; and a job's events and its row go as one statement (`combined`). So a lone create
    (without an idempotency key) is one statement and one round trip, a lone command that reads
    first (a log_event locks its job's row) two: BEGIN with the read, then one statement with
    the COMMIT, or one where this backend wrote the row last (the row from memory, locked by
    the guard that goes out with BEGIN: `load_job`); and from the first append on (when this
    transaction holds the log's head and every other appender waits) a lone command has no
    round trip to this process left before its COMMIT (a command that joins a shared
    transaction waits once more, for its own sync)."""

    __slots__ = (
        "_in_subtree",
        "_later",
        "_locked_reads",
        "_now",
        "_placeholder",
        "_queued",
        "_script",
        "_to_head",
        "_transactions",
        "_unhashed",
    )

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        script: Callable[[str], None],
        transactions: _Transactions,
    ) -> None:
        self._now = _Now(conn, transactions)
        self._later = self._now.later
        self._transactions = transactions
        self._queued: set[str] = set()  # jobs the queued writes (`_Later`) write
        super().__init__(self._now)  # type: ignore[arg-type]  # a psycopg.Connection to its users
        self._placeholder = -1  # the next stand-in position (see `append`)
        self._unhashed = False  # an event was imported without its hash (see `insert_exact`)
        self._script = script  # runs a multi-statement text (not allowed in pipeline mode)
        # Job rows this transaction just locked and read (`claimable`'s, a cascade's subtree, a
        # batch's parents), each for the first `load_job` of it after: no second round trip.
        # A row is dropped when it is written.
        self._locked_reads: dict[str, JobState] = {}
        self._in_subtree: set[str] = set()  # the jobs `lock_subtree` locked
        # The checkpoints to set to the log's head at the COMMIT (`_Transactions.commit`), once
        # for all the commands of a shared transaction.
        self._to_head = transactions.to_head

    def send(self) -> None:
        """Send the writes kept for the end (`_Later`); the COMMIT follows them."""
        self._now.send()

    def load_job(self, job_id: str) -> JobState | None:
        """The job's row, locked. Sent ahead of this transaction's queued writes unless they
        write this job: the others (events that take the log's counter) then wait for the
        COMMIT, and this lock is never waited for while this command holds the counter (a
        charge locking a parent that another process's command holds, waiting for the counter
        at its COMMIT, was a deadlock).

        A lone caller's command on a job this process wrote last (`_Transactions.known`) takes
        the row from memory instead, without a round trip: the transaction's first statement
        (`_Transactions.guard`) then locks the row, still at the version and xmin this process
        wrote, or fails with a serialization failure, and the command runs again on the row
        as it is (`PostgresBackend.write`). A command that ends without writing has the guard
        confirm the row before its answer stands."""
        locked = self._locked_reads.pop(job_id, None)
        if locked is not None:
            return locked  # locked by a query that read it (a claim's): no second round trip
        transactions = self._transactions
        if transactions.may_guess() and not self._later.queue and not self._queued:
            kept = transactions.known.get(job_id)
            if kept is not None:  # as this process wrote it last: locked by the guard
                transactions.guard = jobs.guard_params(
                    job_id, kept.state.version, kept.xmin, kept.xid, kept.started
                )
                transactions.guessed = True
                return kept.state
        ahead = transactions.ahead
        if ahead is not None:
            state = ahead.take(job_id)
            if state is not None:
                return state  # locked and read with other commands' (a combiner's read ahead)
        queued = self._queued
        conn: Any = self.conn
        if not self._later.queue:
            queued.clear()
        elif job_id not in queued:
            conn = self._now.ahead()
        return self._lock_or_step_back(jobs.load, conn, job_id)  # another job (a rescue's): kept

    def lock_subtree(self, job_id: str) -> None:
        """The job and the jobs below it locked in the lock order, in one statement
        (`WriteTransaction.lock_subtree`), their rows kept for the `load_job`s that follow."""
        states = self._lock_or_step_back(jobs.lock_subtree, self._now.ahead(), job_id)
        self._in_subtree.update(state.id for state in states)
        self._keep_locked(states)

    def lock_found_below(self, job_ids: Sequence[str]) -> None:
        """`WriteTransaction.lock_found_below`: ``NOWAIT``; a held row is a `LockedOutOfOrder`,
        which `PostgresBackend.write` runs again as it runs a transaction PostgreSQL aborted
        (in a shared transaction whose earlier commands hold the log: a `StepBack` first)."""
        taken = self._in_subtree
        late = [job_id for job_id in job_ids if job_id not in taken]
        if not late:
            return
        taken.update(late)
        lock = self._lock_or_step_back
        self._keep_locked(lock(jobs.lock_jobs, self._now.ahead(), late, out_of_order=True))

    def lock_jobs(self, job_ids: Sequence[str], *, ancestors: bool = False) -> None:
        """The jobs (and their ancestors) locked in the lock order, in one statement
        (`WriteTransaction.lock_jobs`), their rows kept for the `load_job`s that follow."""
        if not ancestors and len(job_ids) < 2:
            return  # one is locked by its `load_job`, as ever
        lock = functools.partial(jobs.lock_jobs, ancestors=ancestors)
        self._keep_locked(self._lock_or_step_back(lock, self._now.ahead(), job_ids))

    def _keep_locked(self, states: list[JobState]) -> None:
        """Keep rows just locked, ahead of this transaction's queued writes (so the locks wait
        before this command holds the log's counter, and, in a shared transaction whose earlier
        commands hold it, do not wait at all), for `load_job`: all but those of jobs the queued
        writes write. Those rows are as they were before this transaction's writes, so their
        `load_job` reads them again after the writes (the lock is this transaction's already)."""
        queued = self._queued if self._later.queue else ()
        reads = self._locked_reads
        for state in states:
            if state.id not in queued:
                reads[state.id] = state

    def _lock_or_step_back(
        self, load: Callable[..., _T], conn: Any, key: Any, *, out_of_order: bool = False
    ) -> _T:
        """``load(conn, key, lock=True)``; in a shared transaction whose earlier commands hold
        the log's rows, without waiting: a row another transaction holds makes this command
        step back (`ledger.backends.group.StepBack`) and run first in the next transaction.
        ``out_of_order``: rows this command takes after rows that come after them in the lock
        order, never waited for either: one another transaction holds is a `LockedOutOfOrder`
        (the transaction runs again, and takes it in order)."""
        earlier = self._transactions.earlier
        if not earlier and not out_of_order:
            return load(conn, key, lock=True)
        try:
            return load(conn, key, lock=True, nowait=True)
        except pg_errors.LockNotAvailable as e:
            if earlier:
                raise StepBack(
                    f"a row this command locks is held by another transaction: {e}"
                ) from e
            raise LockedOutOfOrder(
                f"a row this command takes out of the lock order is held: {e}"
            ) from e

    def checkpoint(self, name: str) -> tuple[int, int] | None:
        """Locked: no command commits while this transaction holds it (see events_table)."""
        self._transactions.holds_log = True
        return events.read_checkpoint(self.conn, name, lock=True)

    def append(
        self, job_id: str, expected_version: int, new: Sequence[ev.Event], at: datetime
    ) -> list[StoredEvent]:
        """The events with stand-in positions below zero: the trigger hands out the real ones
        (and the chain hashes) as the rows arrive with the COMMIT, so this transaction holds the
        log's head only while the server runs the rest of it, never across a round trip to this
        process. The fold folds the stand-ins; `save_jobs` and `advance_checkpoint` write them
        as the real positions in SQL. A taken version is found at the COMMIT
        (`PostgresBackend.write`)."""
        self._transactions.holds_log = True
        self._queued.add(job_id)
        stored = events.append(self._later, job_id, expected_version, new, at, self._placeholder)
        self._placeholder -= len(stored)
        return stored

    def save_jobs(
        self, new: Sequence[JobState], changed: Sequence[tuple[JobState, tuple[str, ...]]]
    ) -> None:
        """The rows after the events: one statement with them where one job's row follows its
        own events (`combined`), else as `jobs.save` writes them."""
        reads = self._locked_reads
        new = new if isinstance(new, list) else list(new)
        changed = changed if isinstance(changed, list) else list(changed)
        queued = self._queued
        written = [state.id for state in new]
        written += [state.id for state, _ in changed]
        queued.update(written)
        known = self._transactions.known
        if known:  # written again: kept anew only from the COMMIT's answer (`_Transactions`)
            for job_id in written:
                known.pop(job_id, None)
        if reads:  # rows change: what was read of them is no longer theirs to give
            for job_id in written:
                reads.pop(job_id, None)
        ahead = self._transactions.ahead
        if ahead is not None:
            ahead.forget(written)  # a later command on one of them reads what this one wrote
        if not combine(self._later.queue, new, changed):
            jobs.save(self._later, new, changed)

    def held_back(self) -> Combined | None:
        """The command's last write, taken from the queue if it is a `Combined` statement: a
        lone caller's COMMIT may fold the checkpoint into it (`_Transactions.commit`)."""
        queue = self._later.queue
        if queue and queue[-1][1] is None and isinstance(queue[-1][0], Combined):
            combined: Combined = queue.pop()[0]
            return combined
        return None

    def advance_checkpoint(self, name: str, position: int) -> None:
        """A stand-in position (this transaction's own appends) is the log's head as this
        transaction leaves it: the counter row, which it holds, read by the one UPDATE the
        COMMIT sends (`_Transactions.commit`)."""
        if position < 0:
            self._to_head.add(name)
        else:
            events.advance_checkpoint(self._later, name, position)

    def write_checkpoint(self, name: str, schema_version: int, position: int) -> None:
        self._transactions.holds_log = True  # the checkpoint row, until the COMMIT
        self._to_head.discard(name)  # it may be left behind the head: not moved at COMMIT
        events.write_checkpoint(self.conn, name, schema_version, position)

    def claimable(self, now: datetime, queues: Sequence[str] | None) -> str | None:
        """The best claimable job. Once this transaction has appended it holds the log's
        counter, which a claimer holding its chat's budget row waits for at its COMMIT: a
        budget row locked by another transaction is then passed over, not waited for (waiting
        deadlocked: a rescuing claim against a plain one of the same chat)."""
        wait = not self._transactions.holds_log
        found = jobs.claimable(self.conn, now, queues, wait_for_budgets=wait)
        if found is None:
            return None
        self._locked_reads[found.id] = found
        return found.id

    def load_queue(self, queue: str) -> QueueState | None:
        return self._lock_or_step_back(queues_table.load, self.conn, queue)

    def save_queues(self, states: Sequence[QueueState]) -> None:
        queues_table.save(self._later, states)

    def reset_queues(self) -> None:
        queues_table.reset(self.conn)

    def load_budget(self, chat_id: int) -> BudgetState | None:
        """A chat's budget, locked: claims and charges of the chat wait until this commits."""
        return self._lock_or_step_back(budgets_table.load, self.conn, chat_id)

    def save_budgets(self, states: Sequence[BudgetState]) -> None:
        budgets_table.save(self._later, states)

    def reset_budgets(self) -> None:
        budgets_table.reset(self.conn)

    def held_by(self, host: str, holder: tuple[Any, Any, Any]) -> list[str]:
        """Locked as found, skipping those another transaction holds (another claimer rescuing
        the same gone process, which may be waiting for the counter this claim holds)."""
        return jobs.held_by(self.conn, host, holder, lock=True)

    def expired_leases(self, now: datetime, limit: int | None) -> list[str]:
        return jobs.expired(self.conn, now, limit)

    def before_claim(
        self,
        now: datetime,
        limit: int,
        holder: tuple[str, str, int, int] | None,
        queues: Sequence[str] | None,
    ) -> ClaimLooks:
        """The three queries sent together (pipeline mode), then read: one round trip. The
        claim query locks its row (``FOR UPDATE SKIP LOCKED``), as a claim that rescues
        nothing always did before it appends; when the claim rescues something and asks
        again, a row locked here and not chosen then stays locked (skipped by other claimers)
        until the transaction holding it ends (a shared one's, in a group).

        A budget row is locked here only when nothing can be rescued (no expired lease, no
        holder on this host but this process): a rescue appends, which takes the log's
        counter, and a claim that locked its chat's budget before that could deadlock with a
        rescuing claimer that holds the counter and checks the same budget (measured:
        PostgreSQL broke it after its 1 s deadlock_timeout). Otherwise the look is not
        settled and the claim asks again after its rescue, locking the budget after the
        counter as every claim that rescues does."""
        conn = self.conn
        expired_cursor = jobs.send_expired(conn, now, limit)
        held = None if holder is None else jobs.send_held_on(conn, holder[0])
        first = jobs.send_claim(conn, now, queues)
        expired = jobs.expired_ids(expired_cursor)
        holders: list[tuple[str, int, int]] = [] if held is None else held.fetchall()
        # Nothing to rescue (no lease over, no holder but this process): budget rows may be
        # locked now.
        me = None if holder is None else tuple(holder[1:])
        quiet = not expired and all(tuple(h) == me for h in holders)
        wait = not self._transactions.holds_log  # (see `claimable`)
        found = jobs.claimable(conn, now, queues, first, check_budgets=quiet, wait_for_budgets=wait)
        settled = found is not jobs.UNCHECKED
        job_id = None
        if settled and found is not None:
            self._locked_reads[found.id] = found
            job_id = found.id
        return ClaimLooks(expired, holders, job_id, settled)

    def job_with_key(self, idempotency_key: str) -> str | None:
        """Read ahead of this command's queued writes (its own keys are the service's to know):
        a later spec's parent, locked next, then goes ahead of them too."""
        return jobs.with_key(self._now.ahead(), idempotency_key)

    def descendants(self, job_id: str) -> list[JobState]:
        """Read ahead of this command's queued writes: a cascade's passes read the subtree
        without sending the cancels before, so it locks the jobs it finds (a child created
        meanwhile, in the next pass) before it holds the log's counter."""
        return jobs.descendants(self._now.ahead(), job_id)

    def reset_jobs(self) -> None:
        """Empty the table (TRUNCATE is transactional here, and keeps the indexes and the NOTIFY
        triggers); a table that is gone is made again from ``schema.sql``."""
        self._transactions.ahead = None  # every row read ahead is gone
        self._transactions.known.clear()  # and every row kept in memory
        if jobs.exists(self.conn):
            self.conn.execute(jobs.truncate_statement)
        else:
            self.ensure_jobs()

    def ensure_jobs(self) -> None:
        if not jobs.exists(self.conn):
            self._now.send()
            self._script(schema_text())

    def finish_jobs(self) -> None:
        return None  # the indexes stay in place through a TRUNCATE

    def insert_exact(
        self,
        position: int,
        job_id: str,
        version: int,
        event_type: str,
        data: str,
        recorded_at: datetime,
        digest: str | None = None,
    ) -> None:
        self._unhashed = self._unhashed or digest is None
        self._transactions.holds_log = True  # the counter (the insert trigger moves it)
        events.insert_exact(
            self.conn, position, job_id, version, event_type, data, recorded_at, digest
        )


class _Transactions:
    """`ledger.backends.group.Transactions` on the backend's writer connection, which stays in
    pipeline mode: BEGIN, SAVEPOINT and RELEASE go out with the next statement whose answer is
    awaited, and a statement's error arrives with the next sync. ``unsynced``: the server holds
    statements of this transaction whose errors nobody has seen yet (a lone caller's command
    leaves them for its COMMIT; `flush` syncs them before another command joins).

    BEGIN itself waits until the transaction first sends something (`open`), and a lone
    caller's last write waits for its COMMIT (``held``, a `Combined` statement): the COMMIT
    folds the checkpoint into it, and where that one statement is the whole transaction it is
    sent alone, outside a transaction block, which makes it one (a lone create: one statement
    where it was five). A transaction that sent nothing commits nothing."""

    error = psycopg.Error

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend
        self.unsynced = False
        # The checkpoints the open transaction's commands moved to the head: one UPDATE each
        # at the COMMIT, not one per command (``saved``: as they were at the last savepoint).
        self.to_head: set[str] = set()
        self._saved: set[str] = set()
        self.committing = False
        # The open transaction holds a row every appender needs at its COMMIT (the log's
        # counter, from its first append on; a projection checkpoint it locked), or will once
        # its queued writes are sent: a lock another transaction holds must then not be waited
        # for (that one may be waiting for this one's row). ``earlier``: so do the earlier
        # commands of a shared transaction (`PostgresTransaction._lock_or_step_back`).
        self.holds_log = False
        self.earlier = False
        self._saved_holds_log = False
        self._mark: tuple[set[str], bool] = (set(), False)  # to_head, holds_log at `mark`
        self.ahead: _ReadAhead | None = None  # rows read ahead (`GroupCommit.ahead`)
        # The open command savepoint (numbered from 1 in each transaction; 0: none open), so a
        # command rolled back drops a read ahead only if its own savepoint held those locks.
        self.in_savepoint = 0
        self._savepoints = 0
        self.unopened = False  # begun, its BEGIN not sent yet (nothing of it was)
        self.held: Combined | None = None  # a lone caller's last write, sent with the COMMIT
        # Job rows as this backend's last commits wrote them, with each row version's xmin
        # (the writing transaction's id): a lone caller's command decides on such a row without
        # reading it (`PostgresTransaction.load_job`), and ``guard`` (its parameters), sent
        # first after BEGIN, locks it and checks it is still that version of the row. Any other
        # writer, a replay included, makes a new row version with another xmin; 2^31
        # transactions since (the 32-bit xmin wraps around) or another run of the server
        # fail the guard too (schema.sql). A server that lost acknowledged commits (a crash at
        # synchronous_commit off, a failover, a restore) hands their ids out again: each is
        # another run (another start, or the UNLOGGED run token emptied), and a crash also
        # ends the writer's connection, so a reconnect forgets every row too (`_writer`).
        self.known: dict[str, _Kept] = {}
        # `forget_known` asked (from a thread not holding the lock): done at the next `begin`
        self._forget_all = False
        self._forget_jobs: list[str] = []
        self.guard: tuple[Any, ...] | None = None
        self.guessed = False  # a command of this transaction took a row from memory
        self._returning: psycopg.Cursor[Any] | None = None  # the held write's answer (xmin)

    def begin(self, doing: str) -> None:
        try:  # a closed Ledger, or a lost connection: said now, as before
            self._backend._writer()
        except psycopg.Error as e:
            raise wrap_error(e, doing) from e
        self.unopened = True
        self.unsynced = True
        self.to_head = set()
        self.held = None
        self.guard = None
        self.guessed = False
        if self._forget_all:
            self._forget_all = False
            self.known.clear()
        while self._forget_jobs:
            self.known.pop(self._forget_jobs.pop(), None)
        self.ahead = None
        self.in_savepoint = self._savepoints = 0
        self.holds_log = self.earlier = False

    def open(self) -> None:
        """Send the BEGIN kept back, and the write held for the COMMIT (another statement of
        the transaction is about to follow them)."""
        if self.unopened:
            self.unopened = False
            self.put().execute("BEGIN")  # (on the connection `begin` checked)
            guard = self.guard
            if guard is not None:  # before anything else: the row is locked first, as ever
                self.guard = None
                self.put().execute(jobs.guard_statement, guard)
        held = self.held
        if held is not None:
            self.held = None
            self.put().execute(*held.statement())

    def forget_known(self, job_id: str | None = None) -> None:
        """Keep no row from before (``job_id``: none of that job's): a command runs again
        after a serialization failure, a guard's or another, or hit a taken version, or the
        writer reconnected. Called by a caller's thread outside the write lock, so it is done
        when the next transaction begins."""
        if job_id is None:
            self._forget_all = True
        else:
            self._forget_jobs.append(job_id)

    def may_guess(self) -> bool:
        """A lone caller's command with nothing sent yet and no row taken from memory: it may
        take a job's row from ``known`` (`PostgresTransaction.load_job`)."""
        return (
            self.unopened
            and self.guard is None
            and not self.earlier
            and self._backend._writes.deferring
            and bool(self.known)
        )

    def confirm_guess(self) -> None:
        """A command that decided on a row from memory ended with an error of its own: the
        guard goes now if it has not, and its answer is waited for, so a row that changed
        raises its serialization failure instead (the command runs again on the row as it
        is). Only a lone caller's command guesses: what the sync answers is its own."""
        if self.guessed and self._backend._writes.deferring:  # (a joiner's error: not ours)
            self.guessed = False
            self.open()
            self.sync()

    def _remember(self, cursor: psycopg.Cursor[Any], state: JobState) -> None:
        """After the COMMIT: keep the row ``state`` the committed statement wrote, with the
        xmin and created_position it returned on ``cursor``."""
        row = cursor.fetchone()
        if row is None or row[0] is None:
            return
        xmin, position, xid, started = row
        if state.created_position != position:  # a new job: its stand-in position
            state = msgspec.structs.replace(state, created_position=position)
        known = self.known
        known.pop(state.id, None)
        known[state.id] = _Kept(state, xmin, xid, started)
        if len(known) > KNOWN_JOBS:
            del known[next(iter(known))]  # the oldest

    def returning(self) -> psycopg.Cursor[Any]:
        """The writer's cursor for the held write, whose answer (`_remember`) is read after
        the COMMIT (`put` gets every other answer, and keeps only the last)."""
        self._returning = _kept_cursor(self._backend._conn, self._returning)
        return self._returning

    def put(self) -> psycopg.Cursor[Any]:
        """The writer's cursor for the statements whose results nobody reads (BEGIN, the
        writes, COMMIT): one kept for the connection, not one made per statement as
        ``Connection.execute`` does (~15 us of psycopg's Python each). In pipeline mode each
        result lands on it as it arrives and an error is raised at the sync, as before."""
        backend = self._backend
        backend._put = _kept_cursor(backend._conn, backend._put)
        return backend._put

    def savepoint(self) -> None:
        self.open()
        self._saved = set(self.to_head)
        self._saved_holds_log = self.earlier = self.holds_log
        self._savepoints += 1
        self.in_savepoint = self._savepoints
        self.put().execute("SAVEPOINT command")

    def release(self) -> None:
        self.put().execute("RELEASE command")  # (may raise first: still inside it then)
        self.in_savepoint = 0

    def rollback_to(self) -> None:
        """A failed statement leaves the pipeline aborted until a sync: sync first (the error
        there is the failed command's, already being reported), then roll back to the
        savepoint, and see that it did."""
        self._still_open("the failed command")
        conn = self._backend._conn
        conn.execute("ROLLBACK TO command")
        conn.execute("RELEASE command")
        ahead = self.ahead
        if ahead is not None and ahead.savepoint == self.in_savepoint:
            self.ahead = None  # sent inside the command: its locks went with it
        self.in_savepoint = 0
        self.to_head = self._saved
        self.holds_log = self._saved_holds_log  # its row locks went with the savepoint
        self.sync()

    def flush(self) -> None:
        self.open()
        if self.unsynced:
            self.sync()

    def _settled_status(self) -> TransactionStatus:
        """Sync, ignoring the errors it reports, until the server's answers are all in and the
        transaction's state can be read: a sync whose pipeline held an error result raises
        before it reads its own answer, leaving the state ACTIVE (measured: 152 of 200). Where
        a statement failed, psycopg's prepared statements are forgotten (`forget_prepared`)."""
        conn = self._backend._conn
        for _ in range(3):
            with contextlib.suppress(psycopg.Error):
                self.sync()
            if conn.closed or conn.broken:
                return TransactionStatus.UNKNOWN
            status = conn.info.transaction_status
            if status != TransactionStatus.ACTIVE:
                break
        if status != TransactionStatus.INTRANS:  # a statement failed: maybe a skipped prepare
            forget_prepared(conn)
        return status

    def _still_open(self, after: str) -> None:
        """`_settled_status`, and the transaction still open (failed or not), else raise."""
        if self._settled_status() not in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            raise psycopg.OperationalError(f"the transaction ended with {after}")

    def mark(self) -> None:
        self.open()
        self._mark = (set(self.to_head), self.holds_log)
        self.put().execute("SAVEPOINT unsynced")

    def recover(self) -> None:
        """Sync (the error there is one of the commands after the mark: they all run again),
        then back to the mark."""
        self._still_open("a failed command")
        conn = self._backend._conn
        conn.execute("ROLLBACK TO unsynced")
        conn.execute("RELEASE unsynced")
        self.ahead = None
        self.in_savepoint = 0
        to_head, self.holds_log = self._mark
        self.to_head = set(to_head)
        self.held = None
        self.sync()

    def clean(self) -> bool:
        return self._settled_status() == TransactionStatus.INTRANS

    def may_read_ahead(self) -> bool:
        return self.holds_log and not self.unopened

    def commit_skipped(self) -> bool:
        """Still inside the failed transaction block (its COMMIT, sent after the failed
        statement, was skipped by the server)."""
        return self._settled_status() == TransactionStatus.INERROR

    def sync(self) -> None:
        self.unsynced = False
        pipeline = self._backend._pipeline
        if pipeline is not None:
            pipeline.sync()

    def in_transaction(self) -> bool:
        if self.unopened:
            return True  # nothing of it was sent: nothing of it can have ended
        conn = self._backend._conn
        if conn.closed or conn.broken:
            return False
        return conn.info.transaction_status in (
            TransactionStatus.INTRANS,
            TransactionStatus.INERROR,
            TransactionStatus.ACTIVE,  # answers still to come, inside the transaction
        )

    def commit(self) -> None:
        put = self.put()
        held, self.held = self.held, None
        names = sorted(self.to_head)
        self.to_head = set()
        guard = self.guard if self.unopened else None  # a row from memory, not locked yet
        alone = self.unopened and guard is None  # nothing sent: ``held`` is all there is
        if self.unopened and held is None and not names:
            self.unopened = self.unsynced = False
            if guard is not None:  # it wrote nothing: the guard alone confirms what it read
                self.guard = None
                self._send_last(put, jobs.guard_statement, guard)
            return  # it wrote nothing
        kept = None if held is None else held.state  # its answer is the row's xmin, to keep
        cursor = put if kept is None else self.returning()
        if held is not None:
            folded = len(names) <= 1  # the checkpoint in the same statement
            statement, params = held.statement(
                names.pop() if folded and names else None, returning=kept is not None
            )
            if folded and alone:  # the whole transaction: sent as one, no BEGIN, no COMMIT
                self.unopened = False
                self._send_last(cursor, statement, params)
                if kept is not None:
                    self._remember(cursor, kept)
                return
            self.open()
            cursor.execute(statement, params)
        else:
            self.open()
        for name in names:
            events.advance_checkpoint_to_head(put, name)
        self._send_last(put, "COMMIT", None)
        if kept is not None:
            self._remember(cursor, kept)

    def _send_last(self, put: psycopg.Cursor[Any], statement: str, params: Any) -> None:
        """The statement that commits (COMMIT, or a transaction's one statement), with
        whatever the pipeline still holds, then waited for once."""
        self.committing = True  # from here an interrupt cannot tell whether it committed
        try:
            put.execute(statement, params)
            self.sync()
        except psycopg.Error:
            self.committing = False  # the server's answer, or the connection's end: known
            raise
        self.committing = False  # (an interrupt leaves it set, for `interrupted_commit`)
        if statement == "COMMIT" and put.statusmessage == "ROLLBACK":
            # A COMMIT of a transaction in its failed state ends it as a ROLLBACK, without an
            # error: nothing of it was written, and its callers must hear so.
            raise pg_errors.InFailedSqlTransaction(
                "the transaction was in a failed state: its COMMIT rolled it back"
            )

    def rollback(self) -> None:
        self.unsynced = False
        self.to_head = set()
        self.held = None
        if self.unopened:  # nothing was sent: nothing to roll back
            self.unopened = False
            return
        self._backend._rollback(self._backend._conn)

    def aborted(self, reason: str) -> Exception:
        return psycopg.Error(reason)  # `wrap` words it as it is

    def uncertain(self, error: Exception) -> bool:
        """The server refused it (its error has a SQLSTATE): not committed. Anything else (the
        connection broke while the COMMIT or its answer was on the way) may have committed."""
        return getattr(error, "sqlstate", None) is None

    def interrupted_commit(self) -> bool | None:
        conn = self._backend._conn
        sent, self.committing = self.committing, False
        if not sent and not conn.closed and not conn.broken:
            return False  # the COMMIT was not sent: `rollback` ends the transaction
        # Sent, its answer not read: waiting for it could hang on a dead server, so the
        # connection is closed as it is (the next write reconnects) and nobody is told it
        # committed, or that it did not.
        backend = self._backend
        backend._pipeline = backend._pipeline_block = None
        with contextlib.suppress(Exception):
            conn.close()
        return None

    def wrap(self, error: Exception, doing: str) -> LedgerError:
        assert isinstance(error, psycopg.Error)
        if type(error) is psycopg.Error:  # one of `aborted`'s
            return StorageError(f"{doing}: {error}")
        return wrap_error(error, doing)


def _kept_cursor(
    conn: psycopg.Connection[Any], cursor: psycopg.Cursor[Any] | None
) -> psycopg.Cursor[Any]:
    """``cursor`` if it is one of ``conn``'s, else a new one (the writer reconnected)."""
    return cursor if cursor is not None and cursor.connection is conn else conn.cursor()


class PostgresBackend:
    """A ledger in a PostgreSQL database (or in the schema its URL's ``search_path`` names).

    ``durability="full"`` (default): a commit returns once its WAL is on disk
    (``synchronous_commit = on``). ``"normal"``: ``synchronous_commit = off``, so a commit returns
    before that; a server crash or power loss may lose the last commits (at most about three
    times ``wal_writer_delay``, 0.6 s by default), never corrupt the database or split a
    transaction. ``busy_timeout_ms`` is the ``lock_timeout``: how long a statement waits for a
    row or table lock before `LedgerBusy`."""

    name = "postgres"

    def __init__(
        self,
        target: str,
        *,
        readonly: bool = False,
        durability: str = "full",
        busy_timeout_ms: int = 30_000,
    ) -> None:
        self.target = redact(target)
        self.readonly = readonly
        self._url = target
        self._statements = session_statements(durability, busy_timeout_ms, readonly)
        self._lock = threading.RLock()
        self._listen_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        self._pipeline: Any = None  # the writer's psycopg Pipeline, entered by `_writer`
        self._pipeline_block: Any = None  # the context manager that entered it
        self._put: psycopg.Cursor[Any] | None = None  # the writer's cursor (`_Transactions.put`)
        self._closed = False
        self._transactions = _Transactions(self)
        self._writes = GroupCommit(self._transactions, self._lock, enabled=not readonly)
        doing = f"opening {self.target}"
        self._conn = connect(target, self._statements + WRITER_STATEMENTS, doing)
        try:
            if readonly:
                check_schema(self._conn)
            else:
                create_schema(self._conn)
                events.seed_head(self._conn)  # a counter from before it held the head's hash
                self._conn.commit()
        except psycopg.Error as e:
            self._conn.close()
            raise wrap_error(e, doing) from e
        except BaseException:
            self._conn.close()
            raise
        self._pool = ConnectionPool(
            target,
            min_size=1,
            max_size=READERS,
            kwargs={"connect_timeout": 10},
            configure=self._configure_reader,
            check=check_reader,
            open=False,
            name="ledger-readers",
        )
        self._pool.open(wait=False)

    def _configure_reader(self, conn: psycopg.Connection[Any]) -> None:
        configure(conn, self._statements)
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True

    # -- the protocol --------------------------------------------------------------------------

    def write(
        self, doing: str, work: Callable[[PostgresTransaction], _T], *, job: str | None = None
    ) -> _T:
        """One command's write transaction, shared with the commands of other threads that
        arrive meanwhile (`ledger.backends.group`: group commit); returns once its COMMIT is
        durable. A command PostgreSQL aborted (a deadlock, a lost race for an idempotency key)
        runs again; a taken version is a `ConcurrencyError`. ``job``: the job ``work`` loads
        first, if known; a combiner reads it ahead with those of the commands queued behind
        it, in one statement (`GroupCommit.ahead`)."""
        attempt = 0
        while True:
            try:
                return self._writes.run(doing, lambda: self._command(work), job)
            except LedgerError as e:
                cause = e.__cause__
                if isinstance(cause, pg_errors.UniqueViolation):
                    stale = _stale_from(cause)  # a deferred (pipelined) insert of a taken version
                    if stale is not None:
                        self._transactions.forget_known(stale.job_id)
                        actual = self._actual_version(stale.job_id, doing)
                        raise ConcurrencyError(stale.job_id, stale.expected, actual) from cause
                if isinstance(cause, psycopg.Error) and is_retryable(cause) and attempt < RETRIES:
                    attempt += 1
                    guarded = _GUARD_FAILED.search(cause.diag.message_primary or "")
                    if guarded is not None:  # a row from memory was behind: read it this time
                        self._transactions.forget_known(guarded.group("job"))
                        log.debug("%s: %s; running it again", doing, cause.diag.message_primary)
                        continue  # nothing to wait out (no lock was in the way)
                    self._transactions.forget_known()  # a row taken from memory was behind?
                    log.info(
                        "%s: PostgreSQL aborted the transaction (%s: %s%s); running it again "
                        "(%d of %d)",
                        doing,
                        cause.sqlstate,
                        str(cause).splitlines()[0] if str(cause) else type(cause).__name__,
                        f"; {cause.diag.context.strip().splitlines()[0]}"
                        if cause.diag.context
                        else "",
                        attempt,
                        RETRIES,
                    )
                    if self._writes.holding():  # inside `held` (AsyncLedger): the open
                        self._writes.settle()  # transaction keeps locks the deadlock was about
                    time.sleep(0.001 * attempt)
                    continue
                raise

    def held_writes(
        self, ahead: Sequence[str] = (), *, unsynced: bool = False
    ) -> contextlib.AbstractContextManager[list[Group]]:
        """`GroupCommit.held`: one thread's many commands in shared transactions (``ahead``:
        the jobs they load first, read together; ``unsynced``: without a sync each)."""
        return self._writes.held(ahead, unsynced=unsynced)

    def _command(self, work: Callable[[PostgresTransaction], _T]) -> _T:
        """The command in the transaction `GroupCommit` opened (the writer is in autocommit
        mode and sends its own BEGIN, with the transaction's first statement: psycopg, left to
        open transactions, waits for each BEGIN's answer in pipeline mode, a round trip of its
        own). Its writes go out at the end; a lone caller's with the COMMIT (one wait; its last
        write held for it, `_Transactions.held`), any other's with a sync of its own, so its
        errors are its own and a savepoint can undo it alone."""
        transactions = self._transactions
        tx = PostgresTransaction(self._conn, self._script, transactions)
        writes = self._writes
        if writes.ahead and transactions.earlier:  # its own row and the queued commands', in
            # one statement; only where its own locks do not wait (`may_read_ahead`)
            keys, writes.ahead = writes.ahead, []
            cursor = jobs.send_locked(tx.conn, keys)
            transactions.ahead = _ReadAhead(cursor, transactions.in_savepoint)
        try:
            result = work(tx)
        except LedgerError:  # decided on a row from memory: the row confirms the error first
            transactions.confirm_guess()
            raise
        deferring = self._writes.deferring
        held = tx.held_back() if deferring and not tx._unhashed else None
        tx.send()
        if tx._unhashed:
            events.seed_head(tx.conn)  # appends after this import chain onto its last event
        if deferring:
            transactions.held = held  # after the rest: `open` sends it after what went before
            transactions.unsynced = True
        elif self._writes.unsynced:  # a combiner's: its errors come with what follows
            transactions.unsynced = True
        elif not transactions.unopened:  # (nothing sent: nothing to wait for)
            transactions.sync()
        return result

    def _rollback(self, conn: psycopg.Connection[Any]) -> None:
        """End a failed transaction. In pipeline mode the statements queued after the one that
        failed report errors of their own; the one that got us here is the one raised."""
        if conn.closed:
            return
        try:
            with contextlib.suppress(psycopg.Error):
                if self._pipeline is not None:
                    self._pipeline.sync()
            forget_prepared(conn)
            conn.rollback()
        except psycopg.Error:
            self._drop_writer()  # broken: the next write reconnects

    def _writer(self) -> psycopg.Connection[Any]:
        """The write connection, in autocommit and pipeline mode for good (entered once per
        connection, after the schema's own transaction at open)."""
        if self._closed:
            raise StorageError("writing to the ledger: this Ledger was closed; open a new one")
        if not still_open(self._conn):  # idle here: found before anything of a command is sent
            self._drop_writer()
            self._transactions.forget_known()  # a server that went away may have lost commits
            doing = f"reconnecting to {self.target}"
            self._conn = connect(self._url, self._statements + WRITER_STATEMENTS, doing)
        if self._pipeline is None:
            if not self._conn.autocommit:  # idle here: `_Transactions` sends BEGIN and COMMIT
                self._conn.autocommit = True
            self._enter_pipeline()
        return self._conn

    def _enter_pipeline(self) -> None:
        self._pipeline_block = self._conn.pipeline()
        self._pipeline = self._pipeline_block.__enter__()

    def _leave_pipeline(self) -> None:
        """Sync (raising what a queued statement hit) and leave pipeline mode."""
        block, self._pipeline, self._pipeline_block = self._pipeline_block, None, None
        if block is not None:
            block.__exit__(None, None, None)

    def _drop_writer(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._leave_pipeline()
        self._conn.close()

    def _script(self, text: str) -> None:
        """Run a text of several statements inside the current transaction: only the simple
        query protocol takes those, so the pipeline is left for it and entered again."""
        self._leave_pipeline()  # the transaction stays open
        self._conn.execute(text.encode())
        self._enter_pipeline()

    def _actual_version(self, job_id: str, doing: str) -> int:
        """What the job's version is now (read as committed: the writer may be inside another
        caller's transaction)."""
        return self.read(doing, lambda snapshot: events.job_version(snapshot.conn, job_id))

    def read(
        self, doing: str, work: Callable[[PostgresSnapshot], _T], *, single: bool = False
    ) -> _T:
        """``single`` (the work runs one statement) changes nothing here: a pooled connection
        reads in its own transaction either way."""
        if self._closed:
            raise StorageError(f"{doing}: this Ledger was closed; open a new one")
        try:
            with self._pool.connection(timeout=30) as conn:
                try:
                    return work(PostgresSnapshot(conn))
                finally:
                    conn.rollback()  # read only: nothing to commit, and ends the snapshot
        except LedgerError:
            raise
        except PoolTimeout as e:
            raise StorageUnavailable(
                f"{doing}: no connection to the PostgreSQL server ({e}); check that it is up"
            ) from e
        except psycopg.Error as e:
            raise wrap_error(e, doing) from e

    # -- wake-ups ------------------------------------------------------------------------------

    def wait_for_change(self, timeout: float) -> bool:
        """Wait until a ``NOTIFY`` on the ledger's channels (an event appended, a job became
        claimable) or ``timeout`` seconds; True when woken. The first call starts listening and
        returns at once (True): what committed before it began listening is for the caller's
        re-check to find. A wake-up is a hint; callers re-read what they wait for."""
        if not self._listen_lock.acquire(timeout=max(timeout, 0)):
            return False
        try:
            if self._listener is None or self._listener.closed or self._listener.broken:
                self._listener = self._listen()
                return True
            woke = False
            for _ in self._listener.notifies(timeout=max(timeout, 0), stop_after=1):
                woke = True
            if woke:  # drain what else is queued: one wake-up for a burst
                for _ in self._listener.notifies(timeout=0):
                    pass
            return woke
        except psycopg.Error as e:
            lost = self._listener is not None and (self._listener.closed or self._listener.broken)
            if self._listener is not None:
                self._listener.close()
            self._listener = None
            if lost:  # the server went away (a restart): a wake-up, and the next call listens
                return True  # again; what was notified meanwhile is for the caller's re-check
            raise wrap_error(e, "waiting for changes") from e
        finally:
            self._listen_lock.release()

    def _listen(self) -> psycopg.Connection[Any]:
        conn = connect(self._url, self._statements, "listening for changes", autocommit=True)
        for channel in _CHANNELS:
            conn.execute(f"LISTEN {channel}")
        return conn

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pool.close()
            self._drop_writer()
            with self._listen_lock:
                if self._listener is not None:
                    self._listener.close()


def _conforms(
    backend: PostgresBackend, tx: PostgresTransaction
) -> tuple[Backend, WriteTransaction]:
    """Never called: mypy checks here that the classes above keep the storage protocol."""
    return backend, tx
