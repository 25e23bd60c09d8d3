"""Group commit: concurrent writers of one process share one transaction and one fsync.

Why: at durability ``full`` every COMMIT waits for an fsync of the WAL, which costs far more
than a command's own work; commands arriving together can share one. The obvious design (one
writer thread draining a queue, each caller waiting on an event) hands every command to another
thread and back, and under the GIL that costs about as much as the fsync it saves. A scheme
where each caller runs its own command and only the commit is shared (MySQL's binlog group
commit) still moves the write lock from thread to thread once per command. So this is *flat
combining* (Hendler, Incze, Shavit and Tzafrir, 2010):

- A caller publishes its command (a `_Call`) on a queue and tries the write lock without
  waiting. The caller that gets it is the *combiner*: it runs every published command back to
  back on the write connection, its own first, in one transaction (a ``SAVEPOINT`` for each
  after the first, so a command that fails rolls back alone and never its neighbours), and
  commits once nothing more is queued (or the group is full). Then it wakes the callers of the
  group: each wakes once, with its result, its error, or the error that lost the COMMIT.
- A caller that finds the lock taken sleeps until a combiner has settled its command. Nothing
  is acknowledged before the COMMIT holding it has returned; if that COMMIT fails, every caller
  in the group gets the error, and none of their events is in the log.
- A combiner serves a few groups at most (``MAX_ROUNDS``), then hands the queue to the first
  waiting caller, so no caller's own return waits behind an unbounded stream of others.
- Whoever lets the lock go with commands still queued and no one handed the queue looks once
  more, so no command is stranded; a waiter that hears nothing for ``FOLLOWER_CHECK`` seconds
  tries the lock itself (a safety net, not the mechanism).

A lone caller finds the lock free and nothing queued: it runs its command at once, as with group
commit off (no published call, no savepoint, no wait), and only looks at the queue before its
COMMIT, to take in whatever others queued meanwhile. `held` is the explicit form, for one thread
that runs many callers' commands back to back (`AsyncLedger`): its commands share a transaction
until it lets go.

The core is the same for every backend; what a backend's write connection does to begin, nest,
commit and undo a transaction is its `Transactions` (SQLite: ``BEGIN IMMEDIATE`` and
savepoints on an APSW connection; PostgreSQL: the same statements in psycopg's pipeline, where
a statement's error arrives with the next sync, so a command that shares a transaction reports
its errors before it returns, and `_first`'s lone command may defer them to its COMMIT).
"""

from __future__ import annotations

import logging
import threading
from _thread import allocate_lock
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Protocol, TypeVar, runtime_checkable

from ..errors import LedgerError, StorageError

_T = TypeVar("_T")
log = logging.getLogger(__name__)
MAX_GROUP = 256  # commands in one transaction at most (bounds a follower's wait)
MAX_ROUNDS = 4  # groups one combiner commits before it hands the queue to a waiting caller
FOLLOWER_CHECK = 0.1  # seconds a waiter sleeps before it looks at the write lock itself
QUEUED, LEAD, DONE = 0, 1, 2  # a _Call's states


class StepBack(Exception):
    """Raised by a command of a shared transaction that would have to wait for a lock which
    the transaction's earlier commands make unsafe to wait for (PostgreSQL: they appended, and
    hold the log's counter, which the lock's holder may be waiting for at its COMMIT). The
    command is rolled back to its savepoint, what came before it commits, and it runs again
    first in a new transaction, where it may wait. Never raised by a transaction's first
    command."""


class Redo(LedgerError):
    """Raised to a command inside `GroupCommit.held` without a sync each when its transaction
    was rolled back because an error among its commands was not known to be whose: the
    holder runs the commands of that transaction again, each with its own sync, and answers
    them from that run (`ledger.aio_thread`). Never reaches a caller."""


class Transactions(Protocol):
    """What one backend's write connection does for `GroupCommit` (under its lock). ``error``
    is the driver's own exception class (`apsw.Error`, `psycopg.Error`); the methods that say
    so raise it, and `wrap` turns it into the ledger's error for a caller."""

    @property
    def error(self) -> type[Exception]: ...

    def begin(self, doing: str) -> object:
        """Open a write transaction (a driver may keep its BEGIN back until the transaction's
        first statement); raises a `LedgerError` (already wrapped)."""

    def savepoint(self) -> object:
        """A savepoint for the next command of an open transaction."""

    def release(self) -> object:
        """The command after the savepoint succeeded."""

    def rollback_to(self) -> None:
        """Undo the command after the savepoint (the transaction stays open)."""

    def flush(self) -> None:
        """Make the open transaction's commands report their errors now (before another joins
        them); SQLite's already have."""

    def in_transaction(self) -> bool:
        """Whether a transaction is still open (a failure may have ended it)."""

    def commit(self) -> object: ...

    def rollback(self) -> object:
        """End the open transaction, if any; never raises."""

    def aborted(self, reason: str) -> Exception:
        """An error of the driver's kind for a transaction this process gave up."""

    def uncertain(self, error: Exception) -> bool:
        """Whether a COMMIT that raised ``error`` may have committed all the same (its answer
        was lost with the connection): the callers must not be told nothing was written."""

    def interrupted_commit(self) -> bool | None:
        """After an interrupt (KeyboardInterrupt, SystemExit) inside `commit`: True when the
        COMMIT went through, False when it did not run, None when nobody can tell."""

    def wrap(self, error: Exception, doing: str) -> LedgerError: ...


@runtime_checkable
class DeferredErrors(Protocol):
    """What a `Transactions` adds whose statements report their errors later (PostgreSQL's
    pipeline: at the next sync). A combiner then runs the commands after a transaction's first
    without a sync each (`GroupCommit.unsynced`): their statements go out with the next
    command's read or with the COMMIT, and an error among them is not known to be whose. So
    before the first such command it sets a mark, and on any error among them (or a COMMIT
    that did not run for one) it goes back to the mark and runs them again, each with a sync
    of its own, so that each learns its own outcome; nobody is told anything before."""

    def mark(self) -> None:
        """A savepoint before the commands whose errors are not known yet."""

    def recover(self) -> None:
        """Undo everything after the mark (the transaction stays open); raises the driver's
        error when the transaction ended instead."""

    def commit_skipped(self) -> bool:
        """After `Transactions.commit` raised: whether the COMMIT never ran because a
        statement before it failed (the transaction is open, failed, and can go back to the
        mark), not because it failed itself."""

    def clean(self) -> bool:
        """After a command raised: sync, and tell whether no statement of the transaction
        failed (then the error is the command's own, raised in Python, and every statement
        before it succeeded)."""

    def may_read_ahead(self) -> bool:
        """Whether the next command of the open transaction takes its locks without waiting
        (earlier commands hold the log): rows read ahead for others are then never held while
        it waits for one (which could deadlock with a session holding that row and wanting one
        of them)."""


class Group:
    """One shared write transaction: how many commands it holds and, once its COMMIT has
    run, the error that lost it (``failure``; None: committed, durable)."""

    __slots__ = ("_wrap", "failure", "redo", "size", "unknown")

    def __init__(self, wrap: Callable[[Exception, str], LedgerError]) -> None:
        self.failure: Exception | None = None
        self.size = 0
        self.unknown = False  # its COMMIT's outcome is not known (the answer was lost)
        # Rolled back so that its commands run again (`held` without a sync each: an error
        # among them was not known to be whose); nothing of it was written.
        self.redo = False
        self._wrap = wrap

    def error(self, doing: str) -> LedgerError | None:
        """The ledger's error for a lost group (None: it committed), its cause the driver's."""
        if self.failure is None:
            return None
        error = self.lost(doing)
        error.__cause__ = self.failure
        return error

    def lost(self, doing: str) -> LedgerError:
        """What each caller of a lost group is told: the database's reason, and whether
        anything of its command was written (the database's own words, such as "constraint
        failed" for a vetoed COMMIT, say neither). Nothing was, unless the COMMIT's answer was
        lost (``unknown``): then it may have committed, and a blind retry could write it twice."""
        assert self.failure is not None
        error = self._wrap(self.failure, doing)
        others = self.size - 1
        shared = f" (shared with {others} other command{'s' * (others > 1)})" if others else ""
        if self.unknown:
            uncertain = type(error)(
                f"{error}; the connection failed while the transaction holding this command"
                f"{shared} was committing: it may have committed or not; look (get_job, "
                "job_events) before running it again"
            )
            if isinstance(uncertain, StorageError):
                uncertain.maybe_committed = True
            return uncertain
        if others:
            return type(error)(
                f"{error}; the transaction holding this command{shared} did not commit: "
                "nothing of it was written; retry it (the failure may be another command's)"
            )
        return type(error)(f"{error}; its transaction did not commit: nothing of it was written")


class _Call:
    """One caller's command, published for whoever combines. ``wake`` is a lock taken at
    birth: the combiner releases it once the call is settled (``DONE``) or handed the queue
    (``LEAD``), which wakes the caller sleeping on it. A bare lock, not an `Event`: it is made
    for every call, also a lone caller's, and costs a tenth as much."""

    __slots__ = ("command", "doing", "error", "group", "key", "ran", "result", "state", "wake")

    def __init__(self, doing: str, command: Callable[[], object], key: str | None = None) -> None:
        self.doing = doing
        self.command = command
        self.key = key  # the job it loads first, if known (`GroupCommit.ahead`)
        self.result: object = None
        self.error: BaseException | None = None
        self.group: Group | None = None
        self.ran = False
        self.state = QUEUED
        self.wake = allocate_lock()
        self.wake.acquire()

    def outcome(self) -> object:
        """Its result, or the error it raised, or the error that lost its group's COMMIT."""
        if self.error is not None:
            raise self.error
        group = self.group
        if group is not None and group.failure is not None:
            raise group.lost(self.doing) from group.failure
        return self.result


def _wake(call: _Call) -> None:
    """Wake ``call``'s caller (under the write lock, where every wake is released). Its lock
    is already open when the call was handed the queue and its caller, having timed out
    before that, took the write lock itself and ran it: nobody sleeps on it then."""
    if call.wake.locked():
        call.wake.release()


def _interrupted(call: _Call, error: BaseException) -> StorageError:
    return StorageError(
        f"{call.doing}: interrupted ({type(error).__name__}) in the thread that was running "
        "this command for several callers; nothing of it was written, retry it"
    )


def _nested(doing: str) -> LedgerError:
    return StorageError(
        f"{doing}: this write was started from inside another write's command (a ledger "
        "method called while the ledger runs a command), which would run it into the middle "
        "of that command's transaction; nothing of it was written: call it after that write "
        "returns"
    )


def _wrapped(tx: Transactions, error: Exception, doing: str) -> LedgerError:
    """The caller's error for a command's own failure, the driver's error as its cause (the
    backend reads it: PostgreSQL retries a deadlock, and names a stale version)."""
    wrapped = tx.wrap(error, doing)
    wrapped.__cause__ = error
    return wrapped


class GroupCommit:
    """The write path of one write connection (``tx``), guarded by the backend's write lock.

    ``on_commit`` runs after every commit (under the lock); ``on_lost`` after a transaction
    was lost (its COMMIT failed, or SQLite rolled it back under a failing command);
    ``on_begin`` once a transaction has begun, before its first command; ``on_undo`` after a
    command of a shared transaction was rolled back to its savepoint. ``deferring`` is True
    while `_first` runs a lone caller's command, which may leave its errors for the COMMIT (or
    `Transactions.flush`); any other command must report its errors before it returns."""

    def __init__(
        self,
        tx: Transactions,
        lock: threading.RLock,
        on_commit: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
        *,
        enabled: bool,
        on_begin: Callable[[], None] = lambda: None,
        on_undo: Callable[[], None] = lambda: None,
    ) -> None:
        self._tx = tx
        self._wrap = tx.wrap  # one bound method for every Group
        self.deferring = False
        self._lock = lock
        self._on_commit = on_commit
        self._on_lost = on_lost
        self._on_begin = on_begin
        self._on_undo = on_undo
        self.enabled = enabled
        self._pending: deque[_Call] = deque()  # published commands nobody has taken yet
        self._open: Group | None = None  # the transaction open on the connection, if any
        self._combiner: int | None = None  # the thread running others' commands
        self._holder: int | None = None  # the thread inside `held`
        self._joined: list[Group] | None = None  # the groups `held`'s commands wrote into
        self._running: int | None = None  # the thread running a command now (see `_command`)
        # Commands run without a sync of their own (`unsynced`) since the mark of the open
        # group (``_marked``), in order: each may have failed without knowing it yet.
        self._defers = tx if isinstance(tx, DeferredErrors) else None
        self.unsynced = False  # the command running now may leave its errors for later
        self._marked: Group | None = None
        self._unconfirmed: list[_Call] = []
        self._tainted = False  # the command just run failed where the error may be another's
        self._held_unsynced = False  # `held(unsynced=True)`: its commands without a sync each
        self._held_unconfirmed = 0  # of those, run in the open group and not yet confirmed
        # The jobs the next command and the commands queued behind it load first (their
        # ``key``s), for a backend whose reads wait for a round trip (`DeferredErrors`) to read
        # and lock in one statement: the command's first, taken by the backend when it runs.
        self.ahead: list[str] = []
        self._served: list[_Call] = []  # the calls the running `_combine` took, in order

    def run(self, doing: str, command: Callable[[], _T], key: str | None = None) -> _T:
        """Run ``command`` as one write: alone, or in a group; return once durable. ``key``:
        the job it loads first, if known (a combiner may read it ahead with others')."""
        me = threading.get_ident()
        if me == self._running or me == self._combiner:  # from inside a command
            raise _nested(doing)
        if me == self._holder:  # inside `held`: into its open transaction
            return self._inline(doing, command, me)
        if not self.enabled:
            return self._alone(doing, command)
        if not self._pending and self._lock.acquire(blocking=False):
            return self._first(doing, command, me)
        call = _Call(doing, command, key)
        self._pending.append(call)
        if self._lock.acquire(blocking=False):
            self._lead(None)
        else:
            self._await(call)
        return call.outcome()  # type: ignore[return-value]

    def _first(self, doing: str, command: Callable[[], _T], me: int) -> _T:
        """The lock was free and nothing queued (a lone caller, mostly): run the command as
        is, no published call; then commit, together with whatever others queued meanwhile."""
        self._combiner = me
        self.deferring = True
        try:
            group, result, _ = self._run(doing, command)  # a failing first command raises
        except BaseException:
            self.deferring = False
            self._combiner = None
            self._let_go()
            raise
        self.deferring = False
        self._combiner = None
        if self._pending:  # callers queued while it ran: into its transaction, then commit
            try:
                self._flush(group)
            except BaseException:  # interrupted while waiting for the server: nothing commits
                if self._open is not None:
                    self._lose(self._open, self._tx.aborted("interrupted"))
                self._let_go()
                raise
            self._lead(None)
        else:
            try:
                self._commit(group)  # type: ignore[arg-type]
            finally:
                self._let_go()
        if group is not None and group.failure is not None:
            raise group.lost(doing) from group.failure
        return result  # type: ignore[return-value]

    def _flush(self, group: Group | None) -> None:
        """Before others' commands join a lone caller's: its deferred errors, if any, now (a
        failure loses its transaction, which holds nothing else, and the caller is told)."""
        if group is None or group is not self._open:
            return
        try:
            self._tx.flush()
        except self._tx.error as e:
            self._lose(group, e)

    def _inline(self, doing: str, command: Callable[[], _T], me: int) -> _T:
        """A command of the thread inside `held`: into its open transaction (after its first
        command, without a sync of its own when `held` was asked so: an error that may be an
        earlier command's rolls the transaction back for all of them to run again, `Redo`)."""
        with self._lock:
            group = self._open
            unsynced = self._held_unsynced and group is not None
            self._tainted = False
            ran_in, result, error = self._run(doing, command, unsynced=unsynced)
            if self._tainted and group is not None:
                self._tainted = False
                self._redo(group)
                ran_in, error = group, Redo(f"{doing}: to run again, each with its own sync")
            elif unsynced and error is None and ran_in is group and self._open is group:
                self._held_unconfirmed += 1
            if ran_in is not None and self._holder == me and self._joined is not None:
                self._joined.append(ran_in)  # committed when `held` lets go
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def _redo(self, group: Group) -> None:
        """Roll ``group`` back for its commands to run again (`Redo`): nothing of it commits.
        The rest of the `held` block then runs with a sync each (a run with failures tends to
        have more: measured, a second unsynced group was mostly redone too)."""
        self._held_unconfirmed = 0
        self._held_unsynced = False
        if self._marked is group:
            self._marked, self._unconfirmed = None, []
        self._open = None
        group.redo = True
        group.failure = self._tx.aborted("rolled back for its commands to run again")
        self._tx.rollback()
        self._on_lost()

    def _alone(self, doing: str, command: Callable[[], _T]) -> _T:
        """Group commit off: the command in a transaction of its own."""
        with self._lock:
            group, result, error = self._run(doing, command)
            if group is not None and self._open is group:
                self._commit(group)
        if error is not None:
            raise error
        if group is not None and group.failure is not None:
            raise group.lost(doing) from group.failure
        return result  # type: ignore[return-value]

    def _await(self, call: _Call) -> None:
        """Sleep until a combiner settles ``call`` or hands it the queue (then combine)."""
        while True:
            try:
                woke = call.wake.acquire(timeout=FOLLOWER_CHECK)
            except BaseException:
                self._abandon(call)
                raise
            if woke:
                if call.state == LEAD:
                    self._lock.acquire()
                    self._lead(call)
                return
            if call.state == DONE:
                continue  # settled just now: its wake is released, the next look returns
            if self._lock.acquire(blocking=False):  # nobody answered: combine, it may be us
                self._lead(call if call.state == LEAD else None)
                return

    def _abandon(self, call: _Call) -> None:
        """The caller was interrupted while waiting: withdraw its command if nobody took it
        (then nothing of it is written); else it runs, and its outcome goes unreported."""
        with suppress(ValueError):
            self._pending.remove(call)

    def _let_go(self) -> None:
        """Release the lock taken outside `_combine` (no queue handed on), and look once more:
        a command queued while it was held is run now, not left to the safety net."""
        self._lock.release()
        if self._pending and self._lock.acquire(blocking=False):
            self._lead(None)

    def _lead(self, first: _Call | None) -> None:
        """Combine, holding the lock (``first``: a call handed the queue, run first); let the
        lock go, and look once more for commands published while it was being let go."""
        while True:
            handed = self._combine(first)  # releases the lock
            if handed or not self._pending or not self._lock.acquire(blocking=False):
                return
            first = None

    def _combine(self, first: _Call | None) -> bool:
        """Under the lock: run the queued commands in groups and commit each; hand the queue
        to a waiting caller after ``MAX_ROUNDS`` groups. Releases the lock; returns whether it
        handed the queue on (then that caller looks after what is queued)."""
        self._combiner = threading.get_ident()
        served: list[_Call] = []
        self._served = served
        interrupt: BaseException | None = None
        handed = False
        try:
            for _ in range(MAX_ROUNDS):
                start = len(served)
                while interrupt is None:
                    if first is not None:
                        call, first = first, None
                    else:
                        group = self._open
                        if group is not None and group.size >= MAX_GROUP:
                            break
                        try:
                            call = self._pending.popleft()
                        except IndexError:
                            break
                    served.append(call)
                    interrupt = self._serve(call)
                if self._open is not None:
                    self._commit(self._open)
                for call in served[start:]:
                    call.state = DONE
                    _wake(call)
                if interrupt is not None or not self._pending:
                    break
        finally:
            if self._open is not None:  # interrupted between a command and its COMMIT
                self._lose(self._open, self._tx.aborted("interrupted before COMMIT"))
            for call in served:
                if call.state != DONE:
                    if not call.ran:
                        call.error = _interrupted(call, self._tx.aborted("interrupted"))
                    call.state = DONE
                    _wake(call)
            self._combiner = None
            try:
                lead = self._pending.popleft()  # `_abandon` may empty it without the lock
            except IndexError:
                pass
            else:
                lead.state = LEAD
                lead.wake.release()
                handed = True
            self._lock.release()
        if interrupt is not None:
            raise interrupt
        return handed

    def _serve(self, call: _Call) -> BaseException | None:
        """Run one published command in the open group or a new one; returns an interrupt
        (KeyboardInterrupt, SystemExit) to raise in this thread once the group is settled."""
        try:
            defers = self._defers
            if defers is not None and self._open is not None:
                if call.key is not None and defers.may_read_ahead():
                    self._read_ahead(call)
                call.group, call.result, call.error = self._run_unsynced(call)
            else:
                call.group, call.result, call.error = self._run(call.doing, call.command)
        except BaseException as e:
            call.group, call.error = None, e
        self.ahead = []  # (its command may not have run to take it)
        call.ran = True
        error = call.error
        if error is None or isinstance(error, Exception):
            return None
        call.error = _interrupted(call, error)  # its command was rolled back
        return error

    def _read_ahead(self, call: _Call) -> None:
        """``call``'s job and those of the calls queued behind it, for its first statement to
        read at once (each call is looked at once: the queue behind one not yet read ahead
        arrived after it, and none of it was either)."""
        assert call.key is not None
        keys = [call.key]
        for queued in tuple(self._pending):  # (appended to by other threads meanwhile)
            if queued.key is not None:
                keys.append(queued.key)
                queued.key = None
        call.key = None
        self.ahead = keys

    def _run_unsynced(self, call: _Call) -> tuple[Group | None, object, BaseException | None]:
        """A published command into the open group without a sync of its own (`DeferredErrors`):
        its writes go out with what follows. If it fails while earlier such commands are
        unconfirmed and a statement of the transaction failed, the error may be theirs: all of
        them go back to the mark and run again, each with its own sync (`_rerun`); an interrupt
        is not run again (its command reads as interrupted)."""
        group = self._open
        tx = self._tx
        assert group is not None and self._defers is not None
        if self._marked is not group:
            try:
                self._defers.mark()
            except tx.error as e:
                return group, None, _wrapped(tx, e, call.doing)
            self._marked, self._unconfirmed = group, []
        self._tainted = False
        outcome = self._run(call.doing, call.command, unsynced=True)
        if not self._tainted:
            if outcome[0] is group and self._open is group and outcome[2] is None:
                self._unconfirmed.append(call)
            return outcome  # done, its own error, stepped back, or lost: settled
        self._tainted = False
        error = outcome[2]
        if isinstance(error, Exception):
            self._rerun(group, [*self._unconfirmed, call], len(self._unconfirmed))
            return call.group, call.result, call.error
        self._rerun(group, list(self._unconfirmed), len(self._unconfirmed))
        return None, None, error  # an interrupt: raised once the group is settled

    def _rerun(self, group: Group, calls: list[_Call], counted: int) -> None:
        """Back to the mark, and ``calls`` again, each with its own sync, so each gets its own
        outcome (``counted``: how many of them ``group.size`` counts). Until a call has run
        again it reads as interrupted (what it wrote was undone), so an interrupt meanwhile
        tells the rest the truth."""
        assert self._defers is not None
        self._marked, self._unconfirmed = None, []
        for call in calls:
            call.group, call.result = None, None
            call.error = _interrupted(call, self._tx.aborted("interrupted"))
        try:
            self._defers.recover()
        except BaseException as e:
            for call in calls:
                call.group = group  # told that the group was lost
                call.error = None
            if not isinstance(e, self._tx.error):  # interrupted: none of it commits
                self._lose(group, self._tx.aborted("interrupted while going back to the mark"))
                raise
            self._lose(group, e)
            return
        group.size -= counted
        self._open = group
        for call in calls:
            try:
                ran_in, result, error = self._run(call.doing, call.command)
            except Exception as e:  # a failing first command of a new transaction
                call.error = e
                continue
            if error is not None and not isinstance(error, Exception):
                raise error  # an interrupt: its call reads as interrupted
            call.group, call.result, call.error = ran_in, result, error

    def _run(
        self, doing: str, command: Callable[[], _T], *, unsynced: bool = False
    ) -> tuple[Group | None, _T | None, BaseException | None]:
        """Under the lock: run ``command`` in the open group (a savepoint) or a new one.
        Returns the group it is in (None: it failed alone and nothing is open), its result,
        and the error it raised (to be raised once the group is settled)."""
        tx = self._tx
        group = self._open
        if group is None:  # the first command of a transaction: nobody else is in it
            tx.begin(doing)
            self._held_unconfirmed = 0
            self._on_begin()
            try:
                result = self._command(command)
            except tx.error as e:
                tx.rollback()
                raise _wrapped(tx, e, doing) from e
            except BaseException:
                tx.rollback()
                raise
            group = self._open = Group(self._wrap)
            group.size = 1
            return group, result, None
        try:
            tx.savepoint()
        except tx.error as e:  # (in pipeline mode, maybe an earlier statement's error)
            if self._maybe_theirs(unsynced):
                return group, None, e
            return group, None, _wrapped(tx, e, doing)
        self.unsynced = unsynced
        try:
            result = self._command(command)
        except BaseException as e:
            self.unsynced = False
            if self._maybe_theirs(unsynced):
                return group, None, e
            if not isinstance(e, StepBack):
                return group, None, self._undo(doing, group, e)
            log.debug("%s: stepped back to run first in the next transaction (%s)", doing, e)
            self._undo(doing, group, e)
            if self._open is group:
                self._commit(group)  # the earlier commands'
                self._wake_committed(group)
            return self._run(doing, command)  # first in the next transaction: it may wait
        self.unsynced = False
        try:
            tx.release()
        except tx.error as e:
            if self._maybe_theirs(unsynced):
                return group, None, e
            return group, None, self._undo(doing, group, e)
        group.size += 1
        return group, result, None

    def _maybe_theirs(self, unsynced: bool) -> bool:
        """A command run without a sync failed: whether the error may be an earlier unsynced
        command's (some statement of the transaction failed while they are unconfirmed); then
        ``_tainted`` is set and `_run_unsynced` runs them all again. Any statement sent in
        pipeline mode may raise the error of one sent before it."""
        if unsynced and (self._unconfirmed or self._held_unconfirmed) and not self._confirmed():
            self._tainted = True
            return True
        return False

    def _confirmed(self) -> bool:
        """After an unsynced command raised: whether every statement so far succeeded (the
        error is its own; the unconfirmed commands before it are confirmed)."""
        assert self._defers is not None
        try:
            clean = self._defers.clean()
        except self._tx.error:
            return False
        if clean:  # confirmed: the next unsynced command sets a mark of its own (going back
            self._marked, self._unconfirmed = None, []  # to this one would undo them)
            self._held_unconfirmed = 0
        return clean

    def _wake_committed(self, group: Group) -> None:
        """Wake the callers of a group committed before a command that stepped back: their
        answers are settled, and that command may now wait for a lock."""
        for call in self._served:
            if call.group is group and call.state != DONE:
                call.state = DONE
                _wake(call)

    def _command(self, command: Callable[[], _T]) -> _T:
        """Run ``command``, marking this thread as inside one: a write it starts itself (a
        ledger method called from inside a write's command) is refused (`_nested`), never
        run into the middle of this one's transaction."""
        self._running = threading.get_ident()
        try:
            return command()
        finally:
            self._running = None

    def _undo(self, doing: str, group: Group, error: BaseException) -> BaseException:
        """Roll back one failed command of ``group`` to its savepoint; if SQLite already
        rolled the whole transaction back (a full disk, an I/O error), the group is lost."""
        tx = self._tx
        self._on_undo()
        if tx.in_transaction():
            try:
                tx.rollback_to()
            except tx.error as e:
                self._lose(group, e)
            except BaseException:  # interrupted: not known how far it got, so none of it
                self._lose(group, tx.aborted("interrupted while undoing a command"))
                raise
        if not tx.in_transaction() and self._open is group:
            self._lose(group, error if isinstance(error, tx.error) else tx.aborted("rolled back"))
        if isinstance(error, tx.error):
            return _wrapped(tx, error, doing)
        return error

    def _commit(self, group: Group) -> None:
        self._open = None
        tx = self._tx
        unconfirmed: list[_Call] = []
        if group is self._marked:
            unconfirmed, self._marked, self._unconfirmed = self._unconfirmed, None, []
        held_unconfirmed, self._held_unconfirmed = self._held_unconfirmed, 0
        try:
            tx.commit()
        except tx.error as e:
            defers = self._defers
            if (unconfirmed or held_unconfirmed) and defers is not None:
                self._open = group  # until settled (an interrupt meanwhile loses it)
                if defers.commit_skipped():  # one of the commands run without a sync failed
                    if held_unconfirmed:
                        self._redo(group)  # `held`'s: its holder runs them again
                        return
                    self._rerun(group, unconfirmed, len(unconfirmed))  # each again, then COMMIT
                    if self._open is not None:
                        self._commit(self._open)
                    return
                self._open = None
            group.failure = e
            group.unknown = tx.uncertain(e)
            tx.rollback()
            self._on_lost()
        except BaseException:  # an interrupt: its callers learn what became of the COMMIT
            went = tx.interrupted_commit()
            if went:
                self._on_commit()
            else:
                with suppress(Exception):
                    tx.rollback()
                group.failure = tx.aborted("interrupted while committing")
                group.unknown = went is None
                self._on_lost()
            raise
        else:
            self._on_commit()

    def _lose(self, group: Group, error: Exception) -> None:
        self._open = None
        self._held_unconfirmed = 0
        if group is self._marked:
            self._marked, self._unconfirmed = None, []
        self._tx.rollback()
        group.failure = error
        self._on_lost()

    def holding(self) -> bool:
        """Whether this thread is inside `held`, its commands in a transaction left open."""
        return self._holder == threading.get_ident()

    def settle(self) -> None:
        """Run what is queued and commit the open group now, before anything that must run
        outside a transaction (closing, archiving) touches the connection."""
        with self._lock:
            if self._open is not None:
                self._commit(self._open)
            if self._pending and self._combiner is None:
                self._lock.acquire()  # _combine lets one level go
                self._combine(None)

    @contextmanager
    def held(self, ahead: Sequence[str] = (), *, unsynced: bool = False) -> Iterator[list[Group]]:
        """Hold the write lock while one thread runs many commands: they share transactions
        (each a savepoint after the first) and nothing commits until the block ends (except
        before a command that steps back, `StepBack`: what came before it commits). Yields
        the list of groups the commands ran in, in order (one entry per command that reached
        the write path, failed or not); after the block each group's ``failure`` says whether
        what committed in it is durable. ``ahead``: the jobs the commands load first, read
        (`DeferredErrors`) by the first command's first statement. ``unsynced``: the commands
        after a transaction's first go without a sync each (`DeferredErrors`); a group whose
        error was not known to be whose comes back with ``redo`` set, nothing of it written,
        for the holder to run its commands again in a block without ``unsynced``."""
        joined: list[Group] = []
        self._lock.acquire()
        if self._holder is not None or not self.enabled:  # nested, or each commits alone
            try:
                yield joined
            finally:
                self._lock.release()
            return
        self._holder, self._joined = threading.get_ident(), joined
        if self._defers is not None:
            self.ahead = list(ahead)
            self._held_unsynced = unsynced
        try:
            yield joined
        finally:
            self._holder, self._joined = None, None
            self.ahead = []
            self._held_unsynced = False
            try:
                if self._open is not None:
                    self._commit(self._open)
            finally:
                self._let_go()  # and run what callers of other threads queued meanwhile
