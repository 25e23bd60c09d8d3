"""Group commit: concurrent writers of one process share one transaction and one fsync.

Why: at durability ``full`` every COMMIT waits for an fsync of the WAL, which costs far more
than a command's own work; commands arriving together can share one. The obvious design (one
writer thread draining a queue, each caller waiting on an event) hands every command from
thread to thread under the GIL, and that costs about as much as the fsync it saves. So there is
no writer thread: each caller runs its own command on the write connection, as a lone caller
does, and only the *commit* is shared (the leader/follower scheme of MySQL's binlog group
commit; PostgreSQL's ``commit_delay`` without the delay):

- A caller whose command is done, and who sees another caller waiting for the write lock,
  leaves the transaction open, lets the lock go and waits for the commit (a follower).
- The caller that gets the lock next joins the open transaction. Its command runs inside a
  ``SAVEPOINT``, so a command that fails rolls back alone and never its neighbours.
- The caller that sees nobody waiting (or a full group) commits for the whole group and wakes
  the followers. Every caller returns only once the COMMIT holding its events has returned:
  nothing is acknowledged before it is durable; if that COMMIT fails, every caller in the group
  gets the error, and none of their events is in the log.

A lone caller never sees anyone waiting: it pays one uncontended lock to be counted, no
savepoint and no wait. `held` is the explicit form, for one thread that runs many callers'
commands back to back (`AsyncLedger`): its commands share a transaction until it lets go.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import apsw

from ...errors import LedgerError
from .connection import begin_immediate, rollback, wrap_sqlite_error

_T = TypeVar("_T")
MAX_GROUP = 256  # commands in one transaction at most (bounds a follower's wait)
FOLLOWER_CHECK = 0.1  # seconds between a follower's looks at a group nobody committed


class Group:
    """One shared write transaction: how many commands it holds and, once its COMMIT is
    settled (`settle`), the error that lost it (``failure``; None: committed, durable)."""

    __slots__ = ("_done", "failure", "size")

    def __init__(self) -> None:
        self._done: threading.Event | None = None  # made by the first follower, under the lock
        self.failure: apsw.Error | None = None
        self.size = 0

    def waiter(self) -> threading.Event:
        """The event a follower waits on (call under the write lock): a group nobody waits
        for (a lone caller's) never makes one."""
        if self._done is None:
            self._done = threading.Event()
        return self._done

    def settle(self) -> None:
        """Mark it committed or lost (under the write lock): wake its followers."""
        if self._done is not None:
            self._done.set()

    def error(self, doing: str) -> LedgerError | None:
        """The ledger's error for a lost group (None: it committed)."""
        return None if self.failure is None else lost_error(self.failure, doing)


def lost_error(failure: apsw.Error, doing: str) -> LedgerError:
    """What each caller of a lost group is told: SQLite's reason, and that nothing of its
    command was written (SQLite's own words, such as "constraint failed" for a vetoed COMMIT,
    say neither), so the caller knows a retry cannot write it twice."""
    error = wrap_sqlite_error(failure, doing)
    return type(error)(
        f"{error}; the transaction holding this command (shared with other callers' commands) "
        "did not commit: nothing of it was written, retry it"
    )


class GroupCommit:
    """The write path of one SQLite write connection, guarded by the backend's write lock.

    ``on_commit`` runs after every commit (under the lock); ``on_lost`` after a transaction
    was lost (its COMMIT failed, or SQLite rolled it back under a failing command)."""

    def __init__(
        self,
        conn: apsw.Connection,
        lock: threading.RLock,
        on_commit: Callable[[], None],
        on_lost: Callable[[], None],
        *,
        enabled: bool,
    ) -> None:
        self._conn = conn
        self._lock = lock
        self._on_commit = on_commit
        self._on_lost = on_lost
        self.enabled = enabled
        self._counting = threading.Lock()
        self._queued = 0  # callers waiting for the write lock
        self._open: Group | None = None  # the transaction open on the connection, if any
        self._holder: int | None = None  # the thread inside `held`
        self._joined: list[Group] | None = None  # the groups `held`'s commands wrote into

    def run(self, doing: str, command: Callable[[], _T]) -> _T:
        """Run ``command`` as one write: alone, or in the open group; return once durable."""
        with self._counting:
            self._queued += 1
        try:
            self._lock.acquire()
        finally:
            with self._counting:
                self._queued -= 1
        try:
            group, result, error = self._run(doing, command)
        except BaseException:
            self._lock.release()
            raise
        self._finish(doing, group)  # releases the lock
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def _run(
        self, doing: str, command: Callable[[], _T]
    ) -> tuple[Group | None, _T | None, BaseException | None]:
        """Under the lock: run ``command`` in the open group (a savepoint) or a new one.
        Returns the group it is in (None: it failed alone and nothing is open), its result,
        and the error it raised (to be raised once the group is settled)."""
        group = self._open
        if group is None:  # the first command of a transaction: nobody else is in it
            begin_immediate(self._conn, doing)
            try:
                result = command()
            except apsw.Error as e:
                rollback(self._conn)
                raise wrap_sqlite_error(e, doing) from e
            except BaseException:
                rollback(self._conn)
                raise
            group = self._open = Group()
            group.size = 1
            return group, result, None
        try:
            self._conn.execute("SAVEPOINT command")
        except apsw.Error as e:
            return group, None, wrap_sqlite_error(e, doing)
        try:
            result = command()
        except BaseException as e:
            return group, None, self._undo(doing, group, e)
        try:
            self._conn.execute("RELEASE command")
        except apsw.Error as e:
            return group, None, self._undo(doing, group, e)
        group.size += 1
        return group, result, None

    def _undo(self, doing: str, group: Group, error: BaseException) -> BaseException:
        """Roll back one failed command of ``group`` to its savepoint; if SQLite already
        rolled the whole transaction back (a full disk, an I/O error), the group is lost."""
        if not self._conn.get_autocommit():
            try:
                self._conn.execute("ROLLBACK TO command")
                self._conn.execute("RELEASE command")
            except apsw.Error as e:
                self._lose(group, e)
        if self._conn.get_autocommit() and self._open is group:
            self._lose(group, error if isinstance(error, apsw.Error) else apsw.AbortError())
        if isinstance(error, apsw.Error):
            return wrap_sqlite_error(error, doing)
        return error

    def _finish(self, doing: str, group: Group | None) -> None:
        """Commit ``group`` or leave it to the next caller; then let the lock go and, as a
        follower, wait for the commit. Raises the group's failure."""
        me = threading.get_ident()
        if group is not None and self._joined is not None and self._holder == me:
            self._joined.append(group)  # inside `held`: committed when it lets go
            self._lock.release()
            return
        if group is None or self._open is not group:  # failed alone, or already lost
            self._lock.release()
        elif self.enabled and self._queued and group.size < MAX_GROUP and self._holder is None:
            done = group.waiter()
            self._lock.release()  # a follower: the caller waiting for the lock commits
            self._follow(group, done)
        else:
            try:
                self._commit(group)
            finally:
                self._lock.release()
        if group is not None and group.failure is not None:
            raise lost_error(group.failure, doing) from group.failure

    def _follow(self, group: Group, done: threading.Event) -> None:
        """Wait for ``group``'s commit. A safety net, not the mechanism: should the caller
        counted as waiting never take the lock (interrupted inside ``acquire``), the follower
        finds the group still open and the lock free, and commits it itself."""
        while not done.wait(FOLLOWER_CHECK):
            if self._lock.acquire(blocking=False):
                try:
                    if self._open is group:
                        self._commit(group)
                finally:
                    self._lock.release()

    def _commit(self, group: Group) -> None:
        self._open = None
        try:
            self._conn.execute("COMMIT")
        except apsw.Error as e:
            rollback(self._conn)
            group.failure = e
            self._on_lost()
        else:
            self._on_commit()
        finally:
            group.settle()

    def _lose(self, group: Group, error: apsw.Error) -> None:
        self._open = None
        rollback(self._conn)
        group.failure = error
        group.settle()
        self._on_lost()

    def settle(self) -> None:
        """Commit the open group now (under the lock), before anything that must run outside
        a transaction (closing, archiving) touches the connection."""
        with self._lock:
            if self._open is not None:
                self._commit(self._open)

    @contextmanager
    def held(self) -> Iterator[list[Group]]:
        """Hold the write lock while one thread runs many commands: they share transactions
        (each a savepoint after the first) and nothing commits until the block ends. Yields
        the list of groups the commands ran in, in order (one entry per command that reached
        the write path, failed or not); after the block each group's ``failure`` says whether
        what committed in it is durable."""
        joined: list[Group] = []
        with self._lock:
            if self._holder is not None or not self.enabled:  # nested, or each commits alone
                yield joined
                return
            self._holder, self._joined = threading.get_ident(), joined
            try:
                yield joined
            finally:
                self._holder, self._joined = None, None
                if self._open is not None:
                    self._commit(self._open)
