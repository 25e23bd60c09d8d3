"""`LedgerThread`: the one thread an `AsyncLedger`'s calls run on, and how it shares commits.

Why a thread of our own rather than a ``ThreadPoolExecutor(1)``: when many tasks call at once,
their calls are all queued by the time the thread looks, and the thread can see them together.
It takes every call waiting (up to `MAX_BATCH`) and runs the commands among them (`GROUPED`:
the calls that are one write transaction and read nothing after it) back to back inside the
backend's ``held_writes()``: one transaction, a savepoint per command after the first, one
COMMIT (one fsync) for all. Only after that COMMIT returned is any of them answered, so a task
never sees its call succeed before its events are durable; a command that fails fails alone
(its savepoint); if the COMMIT fails, every command in it gets the error. A call that is not
such a command (a read, an iterator, replay) runs on its own, in order, between groups.

Answers go back to the event loop in one ``call_soon_threadsafe`` per batch, not one per call:
waking the loop costs as much as a small command does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

MAX_BATCH = 256  # calls taken off the queue at once
# The `Ledger` methods that are exactly one write transaction: safe to answer after a shared
# commit (each returns what it computed inside its transaction, and reads nothing after it).
GROUPED = frozenset(
    {
        "create_job",
        "create_jobs",
        "claim",
        "heartbeat",
        "complete",
        "fail",
        "cancel",
        "release",
        "charge",
        "log_event",
        "log_events",
    }
)
# The backend's shared-transaction block for a run of calls, given the jobs they load first
# (read ahead together where the backend can) and whether its commands may go without a sync
# each (`GroupCommit.held`); None: it has none.
HeldWrites = Callable[[list[str], bool], AbstractContextManager[list[Any]] | None]


class _Call:
    """One call: ``fn(*args, **kwargs)``, and the future its answer goes to (of ``loop``; None:
    a ``concurrent.futures.Future``). No ``functools.partial`` or lambda: one object a call."""

    __slots__ = ("args", "fn", "future", "grouped", "key", "kwargs", "loop")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
        loop: asyncio.AbstractEventLoop | None,
        grouped: bool,
        key: str | None = None,
    ) -> None:
        self.key = key  # the job a grouped command loads first, if known
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future = future
        self.loop = loop
        self.grouped = grouped


Outcome = tuple[_Call, Any, BaseException | None]


class LedgerThread(concurrent.futures.Executor):
    """A single worker thread (an ``Executor``, for ``run_in_executor``) that runs the queued
    commands of many tasks in shared transactions. ``held_writes`` gives the backend's
    ``held_writes()`` context (None: the ledger is not open, or its backend has none)."""

    def __init__(self, name: str, held_writes: HeldWrites) -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._held_writes = held_writes
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._started = False
        self._start_lock = threading.Lock()
        self._stopped = False

    # -- submitting ------------------------------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put(_Call(fn, args, kwargs, future, None, False))
        return future

    def call(
        self, grouped: bool, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> asyncio.Future[Any]:
        """Run ``fn(*args, **kwargs)`` on the thread; its answer as a future of the running
        loop. ``grouped``: ``fn`` is one write command, which may share a commit with its
        neighbours."""
        return self.call_on(grouped, None, fn, args, kwargs)

    def call_on(
        self,
        grouped: bool,
        key: str | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> asyncio.Future[Any]:
        """`call`, for a command that loads the job ``key`` first (read ahead with its
        neighbours', where the backend can)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        call = _Call(fn, args, kwargs, future, loop, grouped, key)
        if self._started and not self._stopped:  # the usual case: straight onto the queue
            self._queue.put(call)
        else:
            self._put(call)
        return future

    def _put(self, call: _Call) -> None:
        if self._stopped:
            raise RuntimeError("cannot schedule new calls after shutdown")
        if not self._started:
            with self._start_lock:
                if not self._started:
                    self._thread.start()
                    self._started = True
        self._queue.put(call)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._stopped = True
        if self._started:
            self._queue.put(None)
            if wait and threading.current_thread() is not self._thread:
                self._thread.join()

    # -- the thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._run(batch)
            except BaseException as e:  # never leave a caller waiting on a dead thread
                _answer([(call, None, e) for call in batch])
            if stop:
                return

    def _run(self, batch: list[_Call]) -> None:
        """Runs of grouped commands share transactions; any other call runs alone."""
        start = 0
        while start < len(batch):
            end = start
            while end < len(batch) and batch[end].grouped:
                end += 1
            held = None
            if end - start > 1:
                keys = [call.key for call in batch[start:end] if call.key is not None]
                held = self._held_writes(keys, True)
            if held is not None:
                _answer(_run_held(batch[start:end], held, self._held_writes))
                start = end
            else:
                _answer([_run_one(batch[start])])
                start += 1


def _run_one(call: _Call) -> Outcome:
    try:
        return call, call.fn(*call.args, **call.kwargs), None
    except BaseException as e:  # handed to the caller, whatever it is
        return call, None, e


def _run_held(
    calls: list[_Call], held: AbstractContextManager[list[Any]], held_writes: HeldWrites
) -> list[Outcome]:
    """Run ``calls`` in shared transactions (``held``, its commands without a sync each); the
    calls of a transaction rolled back to run again (``redo``: an error among them was not
    known to be whose) run again in a block with a sync each, and are answered from there. A
    call whose transaction was lost gets the error that lost it, in place of its result."""
    outcomes, last = _held_pass(calls, held)
    again = [i for i, group in enumerate(last) if group is not None and group.redo]
    if again:
        calls_again = [calls[i] for i in again]
        keys = [call.key for call in calls_again if call.key is not None]
        careful = held_writes(keys, False)
        if careful is not None:
            redone, redone_last = _held_pass(calls_again, careful)
            for i, outcome, group in zip(again, redone, redone_last, strict=True):
                outcomes[i], last[i] = outcome, group
    doing = "committing the ledger's shared transaction"
    for i, ((call, _, error), group) in enumerate(zip(outcomes, last, strict=True)):
        if error is None and group is not None:
            lost = group.error(doing)  # each caller its own error object, as `GroupCommit`'s
            if lost is not None:
                outcomes[i] = (call, None, lost)
    return outcomes


def _held_pass(
    calls: list[_Call], held: AbstractContextManager[list[Any]]
) -> tuple[list[Outcome], list[Any]]:
    """Each call's outcome and the transaction its command last ran in (None: it reached no
    write; an earlier try of it, rolled back to its savepoint and run again, wrote nothing)."""
    outcomes: list[Outcome] = []
    last: list[Any] = []
    with held as joined:
        for call in calls:
            first = len(joined)
            outcomes.append(_run_one(call))
            last.append(joined[-1] if len(joined) > first else None)
    return outcomes, last


def _answer(outcomes: list[Outcome]) -> None:
    """Hand each outcome to its caller: one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        call = outcome[0]
        if call.loop is None:
            _settle(outcome)
        else:
            by_loop.setdefault(call.loop, []).append(outcome)
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        _settle(outcome)


def _settle(outcome: Outcome) -> None:
    call, result, error = outcome
    future = call.future
    if future.done():  # cancelled by the caller meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
