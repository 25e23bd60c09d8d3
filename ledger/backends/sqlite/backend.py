"""`SqliteBackend`: the storage protocol (`ledger.backends.protocol`) on one SQLite file, via APSW.

One write connection, used under a lock: every write transaction is ``BEGIN IMMEDIATE`` on it
(see `connection`), which is also what makes a claim exclusive across threads and processes.
Reads of a file run on a connection of their own per thread, each read in one read transaction
(WAL lets readers and the writer proceed together, and APSW releases the GIL while SQLite
works), so readers in several threads never queue behind one lock. A ``:memory:`` database exists
only on its one connection, so there reads share the write connection and its lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from itertools import islice
from typing import Any, ClassVar, TypeVar

import apsw

from projections.budgets import BudgetState
from projections.queues import QueueState

from ...domain import events as ev
from ...domain.chain import ChainRow
from ...domain.events import StoredEvent
from ...domain.model import JobEvent
from ...domain.state import JobState
from ...errors import ConcurrencyError, StorageError
from ..protocol import Backend, ClaimLooks, JobFilter, WriteTransaction
from ..table_reads import TableReads
from . import budgets_table, checkpoints, queues_table
from . import events_table as events
from . import jobs_table as jobs
from .connection import (
    Durability,
    configure_writer,
    connect,
    read_snapshot,
    run_write,
    wrap_sqlite_error,
)
from .group import Group, GroupCommit, SqliteTransactions
from .timecodec import to_text

_T = TypeVar("_T")
WATCH_INTERVAL = 0.01  # seconds between looks at PRAGMA data_version while waiting for a change


class SqliteSnapshot(TableReads):
    """Reads on one connection, inside the read (or write) transaction that holds it.
    The reads alike on every backend are `TableReads`'; here are the ones that differ."""

    __slots__ = ("conn",)
    _jobs: ClassVar[Any] = jobs
    _events: ClassVar[Any] = events
    _budgets: ClassVar[Any] = budgets_table

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    # jobs
    def count_jobs(self, where: JobFilter) -> int:
        try:
            return jobs.count(self.conn, where)
        except apsw.Error as e:
            raise wrap_sqlite_error(e, "counting jobs") from e

    def finished_since(self, since: datetime) -> dict[str, int]:
        return jobs.finished_since(self.conn, to_text(since))

    # the log
    def decoded_events_after(self, after: int, limit: int | None) -> list[JobEvent]:
        """`events_after` as `JobEvent`s, decoded straight from the cursor (optional in the
        protocol: `LedgerReads.read_all` decodes `events_after` when a backend has no such
        method)."""
        return events.job_events_after(self.conn, after, limit)

    def export_rows(self, after: int, limit: int) -> list[ChainRow]:
        """Rows exactly as stored, for export: the time stays the text it is stored as."""
        return events.raw_rows_after(self.conn, after, limit)

    def chain_rows(self, after: int = 0) -> Iterator[ChainRow]:
        try:
            yield from events.chain_rows(self.conn, after)
        except apsw.Error as e:
            raise wrap_sqlite_error(e, "reading the log") from e

    def head(self) -> tuple[int, str]:
        position, digest = events.read_head(self.conn)
        return position, digest.hex()

    # replay and verify
    def iter_events(self, after: int = 0) -> Iterator[StoredEvent]:
        # no generator of its own around the scan (one more resume per event of a replay):
        # `iter_after` reports SQLite's errors as the ledger's itself
        return events.iter_after(self.conn, after)

    def version_at(self, job_id: str, position: int) -> int:
        return events.job_version_at(self.conn, job_id, position)

    def dump_jobs(self) -> list[tuple[str, dict[str, Any]]]:
        try:
            return list(jobs.dump(self.conn))
        except apsw.Error as e:
            raise wrap_sqlite_error(e, "reading the jobs projection") from e

    # queues (the queues projection)
    def queue_states(self) -> list[QueueState]:
        try:
            return queues_table.states(self.conn)
        except apsw.SQLError:  # a file no writable open has upgraded yet: no queue acted on
            return []

    def paused_queues(self) -> list[str]:
        try:
            return queues_table.paused(self.conn)
        except apsw.SQLError:
            return []


class SqliteTransaction(SqliteSnapshot):
    """The write half, inside ``BEGIN IMMEDIATE``: the write lock is held from the first
    statement, so what `load_job` and `claimable` read stays true until the commit."""

    __slots__ = ("_found", "_head", "_known", "_put", "_settled")

    def __init__(
        self,
        conn: apsw.Connection,
        head: tuple[int, bytes] | None = None,
        settled: set[str] | None = None,
        put: apsw.Cursor | None = None,
        known: KnownJobs | None = None,
    ) -> None:
        super().__init__(conn)
        self._known = known  # job rows as committed, to skip reading them back (`KnownJobs`)
        # Where the command's INSERTs and UPDATEs go: a cursor the backend keeps for them
        # (`Connection.execute` builds a cursor object per statement, 3k instructions). The
        # table functions only call ``execute``/``executemany`` on it, and no statement run
        # there returns rows anyone reads later, so reusing it never cuts a read short.
        self._put: Any = conn if put is None else put
        # Checkpoints an earlier command of this same transaction (a group) already advanced
        # to LIVE: advancing them again is an UPDATE that changes nothing (`SqliteBackend`).
        self._settled: set[str] = set() if settled is None else settled
        self._found: JobState | None = None  # read by `claimable`, for the `load_job` after it
        # The log's head: read once per transaction, or the one this backend's last commit
        # left (another connection's append since then makes the first insert fail: StaleHead).
        self._head: tuple[int, bytes] | None = head

    def load_job(self, job_id: str) -> JobState | None:
        found = self._found
        if found is not None:  # the job `claimable` just read: no second lookup
            self._found = None
            if found.id == job_id:
                return found
        known = self._known
        if known is not None:
            state = known.committed.get(job_id)
            if state is not None:
                return state
        return jobs.load(self.conn, job_id)

    def lock_subtree(self, job_id: str) -> None:
        """Nothing to lock: the write lock, held since ``BEGIN IMMEDIATE``, keeps every row."""

    def lock_found_below(self, job_ids: Sequence[str]) -> None:
        """Nothing to lock (as `lock_subtree`)."""

    def lock_jobs(self, job_ids: Sequence[str], *, ancestors: bool = False) -> None:
        """Nothing to lock (as `lock_subtree`)."""

    def append(
        self, job_id: str, expected_version: int, new: Sequence[ev.Event], at: datetime
    ) -> list[StoredEvent]:
        head = self._head or events.read_head(self.conn)
        self._head = None  # until this append succeeds (a failed one may have inserted some)
        try:
            try:
                stored, self._head = events.append(
                    self._put, job_id, expected_version, new, at, head
                )
            except events.StaleHead:
                head = events.read_head(self.conn)
                stored, self._head = events.append(
                    self._put, job_id, expected_version, new, at, head
                )
        except ConcurrencyError as e:
            from . import segments  # (it imports this module)

            if segments.is_seal(e.__cause__):  # the seal trigger, not a stale version
                raise segments.sealed_error(self.conn.filename) from e
            raise
        return stored

    def save_jobs(
        self, new: Sequence[JobState], changed: Sequence[tuple[JobState, tuple[str, ...]]]
    ) -> None:
        self._found = None  # rows change: what `claimable` read is no longer theirs to give
        if self._known is not None:
            changed = changed if isinstance(changed, list | tuple) else list(changed)
            self._known.saving(new, changed)
        jobs.save(self._put, new, changed)

    def advance_checkpoint(self, name: str, position: int) -> None:
        settled = self._settled
        if name not in settled:
            events.advance_checkpoint(self._put, name, position)
            settled.add(name)

    def write_checkpoint(self, name: str, schema_version: int, position: int) -> None:
        self._settled.discard(name)  # it may be left behind the head: no longer LIVE
        events.write_checkpoint(self.conn, name, schema_version, position)

    def claimable(self, now: datetime, queues: Sequence[str] | None) -> str | None:
        found = self._found = jobs.claimable(self.conn, to_text(now), queues)
        return None if found is None else found.id

    def load_queue(self, queue: str) -> QueueState | None:
        return queues_table.load(self.conn, queue)

    def save_queues(self, states: Sequence[QueueState]) -> None:
        queues_table.save(self.conn, states)

    def reset_queues(self) -> None:
        queues_table.reset(self.conn)

    def load_budget(self, chat_id: int) -> BudgetState | None:
        """A chat's budget, to decide on (the write lock already keeps it until the commit)."""
        return budgets_table.load(self.conn, chat_id)

    def save_budgets(self, states: Sequence[BudgetState]) -> None:
        budgets_table.save(self.conn, states)

    def reset_budgets(self) -> None:
        budgets_table.reset(self.conn)

    def expired_leases(self, now: datetime, limit: int | None) -> list[str]:
        return jobs.expired(self.conn, to_text(now), limit)

    def before_claim(
        self,
        now: datetime,
        limit: int,
        holder: tuple[str, str, int, int] | None,
        queues: Sequence[str] | None,
    ) -> ClaimLooks:
        """The three looks one after the other: in a file they cost no round trips (and the
        write lock is the only lock)."""
        expired = self.expired_leases(now, limit)
        holders = [] if holder is None else self.held_on(holder[0])
        return ClaimLooks(expired, holders, self.claimable(now, queues), True)

    def job_with_key(self, idempotency_key: str) -> str | None:
        return jobs.with_key(self.conn, idempotency_key)

    def reset_jobs(self) -> None:
        """Drop the jobs table and create it bare (indexes come after a bulk load)."""
        if self._known is not None:
            self._known.forget()
        self.conn.execute(jobs.drop_statement)
        jobs.create(self.conn, indexes=False)

    def ensure_jobs(self) -> None:
        jobs.create(self.conn)

    def finish_jobs(self) -> None:
        jobs.create_indexes(self.conn)

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
        self._head = None
        events.insert_exact(
            self.conn, position, job_id, version, event_type, data, recorded_at, digest
        )


KNOWN_JOBS = 1024  # job rows `KnownJobs` keeps at most


class KnownJobs:
    """The job rows as this backend's last commits left them, so a command on a job one of them
    wrote does not read its row back (a SELECT and a row decoded: about a tenth of a grouped
    log_event). Trusted only while nothing else writes: a transaction that begins after another
    connection committed (or this one, around the ledger) finds ``data_version`` moved and
    forgets everything. Within a transaction a saved job is dropped at once (later commands read
    the row the transaction holds) and its new state waits in ``staged`` until the COMMIT;
    a command rolled back to its savepoint, a lost transaction and a rebuild forget the staged
    states (and, the last two, everything). The states are immutable (`JobState` is frozen)."""

    __slots__ = ("_conn", "_overflow", "_version", "committed", "staged")

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn
        self.committed: dict[str, JobState] = {}
        self.staged: dict[str, JobState] = {}
        self._overflow = False  # more saved in the open transaction than are kept
        self._version: int | None = None  # data_version after this backend's last commit

    def begun(self) -> None:
        """A write transaction began: anyone else's commit since ours voids what is known."""
        self.staged.clear()
        self._overflow = False
        if self._conn.data_version() != self._version:
            self.committed.clear()

    def saving(
        self, new: Sequence[JobState], changed: Sequence[tuple[JobState, tuple[str, ...]]]
    ) -> None:
        committed, staged = self.committed, self.staged
        for state in new:
            committed.pop(state.id, None)
            staged[state.id] = state
        for state, _ in changed:
            committed.pop(state.id, None)
            staged[state.id] = state
        if len(staged) > KNOWN_JOBS:  # a rebuild, a big batch: not worth keeping
            staged.clear()
            self._overflow = True

    def undone(self) -> None:
        """A command was rolled back to its savepoint: its saves (and, to be simple, those of
        the commands before it in the transaction) are not kept."""
        self.staged.clear()

    def committed_now(self) -> None:
        committed = self.committed
        if self._overflow:
            committed.clear()
            self._overflow = False
        committed.update(self.staged)
        self.staged.clear()
        excess = len(committed) - KNOWN_JOBS
        if excess > 0:  # the oldest first (dicts keep insertion order); only as many as over:
            # a copy of all the keys made every commit of a create loop cost ~10 us a create
            for job_id in list(islice(committed, excess)):
                del committed[job_id]
        self._version = self._conn.data_version()

    def forget(self) -> None:
        self.committed.clear()
        self.staged.clear()
        self._version = None


class SqliteBackend:
    """A ledger in one SQLite file (or ``:memory:``). See the module docstring."""

    name = "sqlite"

    def __init__(
        self,
        target: str,
        *,
        readonly: bool = False,
        durability: Durability = "full",
        busy_timeout_ms: int,
    ) -> None:
        self.target = target
        self.readonly = readonly
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()
        self._head: tuple[int, bytes] | None = None  # the log's head after this backend's commit
        # Not NOMUTEX, nor the read connections (replay 4.6% fewer instructions, a log_event
        # 1.2%, a full read ~6%): the backend's lock guards every call it makes, but a
        # statement left open by a failed command or read (a cursor or a suspended scan held by
        # the error's traceback) is finalized by whichever thread drops that error (an
        # AsyncLedger's event loop, a group's caller), outside the lock, while another thread
        # may be using the connection: SQLite's own mutex keeps that safe (reviewer's finding).
        self._conn = connect(target, readonly=readonly, busy_timeout_ms=busy_timeout_ms)
        self._put = self._conn.cursor()  # the write transactions' INSERTs and UPDATEs
        self._known = KnownJobs(self._conn)
        # What a command of the open transaction already made true in it, for the commands
        # after it to skip (`SqliteTransaction.advance_checkpoint`: the checkpoints already
        # LIVE). Forgotten, with `KnownJobs`' staged states, when a transaction begins and
        # whenever a command is rolled back (`_begun`, `_undone`).
        self._settled: set[str] = set()
        self._shared_reads = target in ("", ":memory:") or "mode=memory" in target
        self._local = threading.local()
        self._readers: list[apsw.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._changed = threading.Condition()  # notified after each commit of this backend
        self._commits = 0
        self._waiting = 0  # threads inside wait_for_change
        self._watcher: apsw.Connection | None = None
        self._seen_version: int | None = None
        self._checkpoints: checkpoints.Checkpointer | None = None  # a writable file's
        self._writes = GroupCommit(
            SqliteTransactions(self._conn),
            self._lock,
            self._committed,
            self._lost,
            enabled=not (readonly or self._shared_reads),
            on_begin=self._begun,
            on_undo=self._undone,
        )
        try:
            if readonly:
                self._read_on_writer("opening the ledger", events.check_schema)
            else:
                # Check (one snapshot), switch to WAL, then check again and create the tables
                # inside the write transaction: another process may be initialising the file.
                self._read_on_writer("opening the ledger", events.check_openable)
                self._read_on_writer(
                    "opening the ledger",
                    lambda conn: configure_writer(conn, durability, busy_timeout_ms),
                )
                run_write(self._conn, f"opening {target}", self._initialize)
                if not self._shared_reads:  # a WAL to checkpoint (not a memory database)
                    self._checkpoints = checkpoints.attach(self._conn, target, busy_timeout_ms)
        except BaseException:
            self._conn.close()
            raise

    def _initialize(self) -> None:
        events.initialize_schema(self._conn)
        self._conn.execute(events.checkpoint_schema_statement)
        queues_table.create(self._conn)
        budgets_table.create(self._conn)
        jobs.upgrade_indexes(self._conn)

    def _read_on_writer(self, doing: str, query: Callable[[apsw.Connection], _T]) -> _T:
        with self._lock:
            try:
                return query(self._conn)
            except apsw.Error as e:
                raise wrap_sqlite_error(e, doing) from e

    # -- the protocol --------------------------------------------------------------------------

    def write(
        self, doing: str, work: Callable[[SqliteTransaction], _T], *, job: str | None = None
    ) -> _T:
        """One command's write transaction, shared with the commands of other threads that
        arrive meanwhile (`group`: group commit); returns once its COMMIT is durable. ``job``
        (the job ``work`` loads first) is not needed here: a read of the file costs no round
        trip to read ahead of."""

        def command() -> _T:
            tx = SqliteTransaction(self._conn, self._head, self._settled, self._put, self._known)
            try:
                result = work(tx)
            except BaseException:
                self._head = None  # rolled back: the head it appended, if any, is not the log's
                raise
            self._head = tx._head  # the head it appended (None: not known)
            return result

        return self._writes.run(doing, command)

    def held_writes(
        self, ahead: Sequence[str] = (), *, unsynced: bool = False
    ) -> AbstractContextManager[list[Group]]:
        """`GroupCommit.held`: one thread's many commands in shared transactions (``ahead``,
        the jobs they load first, is for a backend whose reads cost a round trip)."""
        return self._writes.held(ahead, unsynced=unsynced)

    def _committed(self) -> None:
        # Only the thread holding the write lock counts, so no lock is needed for it; the
        # condition is taken only when someone waits (the common case: nobody).
        self._known.committed_now()
        self._commits += 1
        if self._waiting:
            with self._changed:
                self._changed.notify_all()

    def _begun(self) -> None:
        self._settled.clear()
        self._known.begun()

    def _undone(self) -> None:
        self._settled.clear()  # the command may have been the one that settled something
        self._known.undone()
        self._head = None  # it may have appended (and returned, its RELEASE failing)

    def _lost(self) -> None:
        self._head = None  # the transaction that knew it rolled back
        self._known.forget()
        self._committed()

    def read(self, doing: str, work: Callable[[SqliteSnapshot], _T], *, single: bool = False) -> _T:
        if self._shared_reads:
            with self._lock:
                return self._snapshot(self._conn, doing, work, single)
        conn = self._reader()
        try:
            return self._snapshot(conn, doing, work, single)
        finally:
            if self._closed:  # `close` ran during this read and left this connection to us
                self._drop_reader(conn)

    def _drop_reader(self, conn: apsw.Connection) -> None:
        """Close this thread's read connection once its read is over (after `close`)."""
        with self._readers_lock:
            if conn in self._readers:
                self._readers.remove(conn)
        self._local.conn = None
        conn.close()

    def _snapshot(
        self,
        conn: apsw.Connection,
        doing: str,
        work: Callable[[SqliteSnapshot], _T],
        single: bool,
    ) -> _T:
        try:
            if single:  # one statement reads one snapshot by itself: no BEGIN/COMMIT round trip
                return work(SqliteSnapshot(conn))
            return read_snapshot(conn, lambda: work(SqliteSnapshot(conn)))
        except apsw.Error as e:
            raise wrap_sqlite_error(e, doing) from e

    def _reader(self) -> apsw.Connection:
        """This thread's read connection, opened on first use."""
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StorageError("reading the ledger: this Ledger was closed; open a new one")
            conn = connect(self.target, readonly=True, busy_timeout_ms=self._busy_timeout_ms)
            with self._readers_lock:  # not the write lock: a read must never wait for a write
                if self._closed:
                    conn.close()
                    raise StorageError("reading the ledger: this Ledger was closed; open a new one")
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    def data_version(self) -> int:
        """Changes when another connection commits (SQLite's ``PRAGMA data_version``)."""
        return self._read_on_writer(
            "watching the ledger", lambda conn: int(conn.execute("PRAGMA data_version").get)
        )

    def wait_for_change(self, timeout: float) -> bool:
        """Wait for a commit: this backend's own wake the waiter at once; another process's
        (or another `Ledger`'s) are seen by polling ``PRAGMA data_version`` on a connection of
        the watcher's own every `WATCH_INTERVAL` (it changes when any other connection commits).
        The first call starts watching and returns True at once: the caller re-checks, and from
        then on no commit goes unseen."""
        with self._changed:
            self._waiting += 1
        try:
            return self._wait(time.monotonic() + max(timeout, 0.0))
        finally:
            with self._changed:
                self._waiting -= 1

    def _wait(self, deadline: float) -> bool:
        with self._changed:
            commits = self._commits
        # The first look answers too: a commit of another process that landed since the last
        # look (between two waits) moved data_version, and this look is the one that sees it.
        if not self._shared_reads and self._watch_version() is not False:
            return True
        while True:
            left = deadline - time.monotonic()
            with self._changed:
                if self._commits != commits:
                    return True
                if left <= 0:
                    return False
                self._changed.wait(min(left, WATCH_INTERVAL))
                if self._commits != commits:
                    return True
            if not self._shared_reads and self._watch_version():
                return True

    def _watch_version(self) -> bool | None:
        """Whether ``data_version`` moved since the last look (None: the first look)."""
        with self._changed:
            if self._closed:
                raise StorageError("watching the ledger: this Ledger was closed; open a new one")
            if self._watcher is None:
                self._watcher = connect(
                    self.target, readonly=True, busy_timeout_ms=self._busy_timeout_ms
                )
            try:
                version = int(self._watcher.execute("PRAGMA data_version").get)
            except apsw.Error as e:
                raise wrap_sqlite_error(e, "watching the ledger") from e
            before, self._seen_version = self._seen_version, version
        return None if before is None else before != version

    def close(self) -> None:
        with self._changed:
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
        with self._readers_lock:
            self._closed = True
            busy = []
            for conn in self._readers:
                try:
                    conn.close()
                except apsw.ThreadingViolationError:
                    # a read in another thread is running on it: that thread closes it when its
                    # read ends (`read`), and close goes on to close the write connection
                    busy.append(conn)
            self._readers[:] = busy
        with self._lock:
            self._writes.settle()
            if self._checkpoints is not None:
                self._checkpoints.close()  # before the write connection's close checkpoints
            self._conn.close()


def _conforms(backend: SqliteBackend, tx: SqliteTransaction) -> tuple[Backend, WriteTransaction]:
    """Never called: mypy checks here that the classes above keep the storage protocol."""
    return backend, tx
