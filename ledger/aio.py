"""`AsyncLedger`: every `Ledger` call as an awaitable that never blocks the event loop.

The choice: one domain and one service, not an async copy of them. An `AsyncLedger` owns a
`Ledger` and a thread of its own (`ledger.aio_thread.LedgerThread`); every call runs the sync
method there and the caller awaits its result. So the rules, the transactions and the backends
are exactly those of `Ledger` (nothing to keep in step), calls made by one task run in the order
they were made, and the event loop only ever waits on a future. Many tasks calling at once do
not queue for one fsync each: the thread runs the write commands waiting at that moment in one
shared transaction (a savepoint each) and answers them all after its one COMMIT (group commit;
see `ledger.aio_thread`). A read queued behind a write waits for it, which is the price of the
simplicity: open several `AsyncLedger`s (or use `Ledger` from threads) for reads in parallel.

`wait` does not hold that thread while it waits: one watcher thread per `AsyncLedger` waits on
the backend's wake-up (`Backend.wait_for_change`: SQLite ``data_version``, PostgreSQL NOTIFY) and
wakes every waiting task, so any number of ``await lg.wait(...)`` cost one thread.

Iterators (`iter_events`, `follow`, `export_events`) become async iterators: each page or item is
fetched on the ledger's thread.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, TypeVar

from .aio_thread import GROUPED, LedgerThread
from .api import Ledger, _wait_timeout
from .domain import validate as check
from .domain.commands import MAX_LOG_EVENTS
from .domain.model import Job
from .errors import JobNotFound, LedgerError, StorageUnavailable, WaitTimeout

_T = TypeVar("_T")
log = logging.getLogger("ledger.aio")
_WATCH_SLICE = 0.25  # the longest one backend wait lasts in the watcher (so close is prompt)
_WAIT_SLICE = 1.0  # a waiting task re-reads its job at least this often (a safety net)
_DONE = object()
# The grouped `Ledger` methods whose first argument is the job they load first.
_ON_A_JOB = frozenset(
    {"heartbeat", "complete", "fail", "cancel", "release", "charge", "log_event", "log_events"}
)


def _job_key(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The job a grouped command loads first, if it names one (a text; anything else is for the
    method itself to refuse, in words)."""
    if method not in _ON_A_JOB:
        return None
    key = args[0] if args else kwargs.get("job_id")
    return key if type(key) is str else None


def _listed(items: Any, most: int | None = None) -> Any:
    """A one-shot iterator argument (a generator of specs or events) drawn here, on the event
    loop, into a list: the ledger's thread may run a grouped call twice (a shared transaction
    that had to be redone), and a second run must see the same items, not an exhausted
    iterator. Anything else goes as it is, for the method to take or refuse. ``most``: the
    method takes no more than that many, so one more is drawn and no further (a long or
    endless generator is refused by the method, not drawn whole into memory first)."""
    if not isinstance(items, Iterator):
        return items
    return list(items if most is None else itertools.islice(items, most + 1))


class AsyncLedger:
    """A `Ledger` for asyncio code: ``async with AsyncLedger("ledger.db") as lg:``.

    Takes `Ledger`'s arguments (a path, ``":memory:"`` or a ``postgresql://`` URL, and the same
    keywords), or an open `Ledger` to wrap (which it then does not close). The ledger is opened
    on the ledger's thread at ``async with`` (or at the first call). Every public `Ledger` method
    is an ``async`` method here with the same arguments and results."""

    def __init__(self, target: str | os.PathLike[str] | Ledger = "ledger.db", **kwargs: Any):
        self._target = target
        self._kwargs = kwargs
        self._owned = not isinstance(target, Ledger)
        self._ledger: Ledger | None = None if self._owned else target  # type: ignore[assignment]
        self._executor = LedgerThread("ledger-aio", self._held_writes)
        self._opening: asyncio.Future[Ledger] | None = None
        self._watcher: threading.Thread | None = None
        self._watching = threading.Event()
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncLedger:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> Ledger:
        """Open the ledger (once); the `Ledger` it runs on."""
        if self._closed:
            raise LedgerError("this AsyncLedger was closed; open a new one")
        if self._ledger is not None:
            return self._ledger
        if self._opening is None:
            loop = asyncio.get_running_loop()
            factory = functools.partial(Ledger, self._target, **self._kwargs)  # type: ignore[arg-type]
            self._opening = asyncio.ensure_future(loop.run_in_executor(self._executor, factory))
        try:
            ledger = await asyncio.shield(self._opening)
        except BaseException:
            self._opening = None
            raise
        self._ledger = ledger
        if self._closed:  # closed while it opened: `close` closes what it opened
            raise LedgerError("this AsyncLedger was closed; open a new one")
        return ledger

    async def close(self) -> None:
        """Stop the watcher, close the ledger (if this object opened it), end the thread."""
        if self._closed:
            return
        self._closed = True
        self._watching.set()
        watcher = self._watcher
        ledger = self._ledger
        if ledger is None and self._opening is not None:  # a first call is opening it now
            try:
                ledger = await asyncio.shield(self._opening)
            except BaseException:  # it did not open: nothing to close (the call says why)
                ledger = None
        loop = asyncio.get_running_loop()

        def shut() -> None:
            if watcher is not None:
                watcher.join()
            if ledger is not None and self._owned:
                ledger.close()

        try:
            await loop.run_in_executor(self._executor, shut)
        finally:
            self._executor.shutdown(wait=False)
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.cancel()

    @property
    def ledger(self) -> Ledger:
        """The sync `Ledger` underneath (for a `Worker`, or code that runs in a thread)."""
        if self._ledger is None:
            raise LedgerError("the AsyncLedger is not open yet: use `async with` or `await open()`")
        return self._ledger

    # -- every call ----------------------------------------------------------------------------

    def _held_writes(
        self, ahead: list[str], unsynced: bool
    ) -> AbstractContextManager[list[Any]] | None:
        """The backend's shared-transaction block (see `ledger.aio_thread`), if it has one;
        ``ahead``: the jobs its commands load first; ``unsynced``: without a sync each."""
        ledger = self._ledger
        held = None if ledger is None else getattr(ledger._backend, "held_writes", None)
        return None if held is None else held(ahead, unsynced=unsynced)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        ledger = self._ledger
        if ledger is None or self._closed:  # not open yet (or closed: open() says so)
            ledger = await self.open()
        grouped = method in GROUPED
        key = _job_key(method, args, kwargs) if grouped else None
        fn = getattr(ledger, method)
        result = await self._executor.call_on(grouped, key, fn, args, kwargs)
        if not grouped and isinstance(result, Iterator):  # lazy: pull it on the ledger's thread
            return self._pull(result)
        return result

    def _command(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """A write command (`GROUPED`, never an iterator): once open, the thread's future
        itself, without a coroutine of `_call` around it (the per-call path of many tasks)."""
        ledger = self._ledger
        if ledger is None or self._closed:
            return self._call(method, *args, **kwargs)
        key = _job_key(method, args, kwargs)
        return self._executor.call_on(True, key, getattr(ledger, method), args, kwargs)

    async def _pull(self, iterator: Iterator[_T]) -> AsyncIterator[_T]:
        loop = asyncio.get_running_loop()
        while True:
            item = await loop.run_in_executor(self._executor, next, iterator, _DONE)
            if item is _DONE:
                return
            yield item  # type: ignore[misc]

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """Every other public method of `Ledger`, as a coroutine function."""
        if name.startswith("_") or not hasattr(Ledger, name):
            raise AttributeError(f"AsyncLedger has no attribute {name!r}")
        if not callable(getattr(Ledger, name)):  # an attribute such as ``path``: as it is
            return getattr(self.ledger, name)

        if name in GROUPED:

            async def method(*args: Any, **kwargs: Any) -> Any:
                return await self._command(name, args, kwargs)

        else:

            async def method(*args: Any, **kwargs: Any) -> Any:
                return await self._call(name, *args, **kwargs)

        method.__name__ = name
        method.__doc__ = getattr(Ledger, name).__doc__
        self.__dict__[name] = method  # found there from now on: __getattr__ runs once a name
        return method

    # The most used calls, spelled out (for readers and type checkers); the rest via __getattr__.

    async def create_job(self, chat_id: int, config: Any, **kwargs: Any) -> str:
        result: str = await self._command("create_job", (chat_id, config), kwargs)
        return result

    async def get_job(self, job_id: str) -> Job | None:
        result: Job | None = await self._call("get_job", job_id)
        return result

    async def claim(self, worker_id: str, **kwargs: Any) -> Job | None:
        result: Job | None = await self._command("claim", (worker_id,), kwargs)
        return result

    async def complete(self, job_id: str, summary: str, *args: Any, **kwargs: Any) -> None:
        await self._command("complete", (job_id, summary, *args), kwargs)

    async def fail(self, job_id: str, error: str, **kwargs: Any) -> None:
        await self._command("fail", (job_id, error), kwargs)

    async def cancel(self, job_id: str, **kwargs: Any) -> bool:
        result: bool = await self._command("cancel", (job_id,), kwargs)
        return result

    async def create_jobs(self, specs: Any) -> list[str]:
        result: list[str] = await self._command("create_jobs", (_listed(specs),), {})
        return result

    async def log_events(self, job_id: str, events: Any, **kwargs: Any) -> int:
        listed = _listed(events, MAX_LOG_EVENTS)
        result: int = await self._command("log_events", (job_id, listed), kwargs)
        return result

    async def iter_events(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """`Ledger.iter_events` as an async iterator."""
        iterator = await self._call("iter_events", *args, **kwargs)
        async for item in iterator:
            yield item

    async def follow(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """`Ledger.follow` as an async iterator (each wait for new events on the ledger's
        thread: give it a ``stop`` event, or break out of the loop, to end it)."""
        iterator = await self._call("follow", *args, **kwargs)
        async for item in iterator:
            yield item

    async def export_events(self, after: int = 0) -> AsyncIterator[bytes]:
        iterator = await self._call("export_events", after)
        async for item in iterator:
            yield item

    # -- wait ----------------------------------------------------------------------------------

    async def wait(self, job_id: str, timeout: float | timedelta | None = None) -> Job:
        """The job once it is final, woken by the database (see the module docstring);
        `WaitTimeout` (also a ``TimeoutError``) after ``timeout`` seconds (None: no limit)."""
        check.text("job_id", job_id)
        limit = None if timeout is None else _wait_timeout(timeout)
        ledger = await self.open()
        self._start_watcher()
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            changed = loop.create_future()  # registered before the read: no change is missed
            self._waiters.add(changed)
            try:
                job = await loop.run_in_executor(self._executor, ledger.get_job, job_id)
                if job is None:
                    raise JobNotFound(job_id)
                if job.status.is_final:
                    return job
                left = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(job_id, limit or 0.0, job.status.value)
                await asyncio.wait([changed], timeout=min(left, _WAIT_SLICE))
            finally:
                self._waiters.discard(changed)

    def _start_watcher(self) -> None:
        if self._watcher is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._watcher = threading.Thread(target=self._watch, name="ledger-aio-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """The watcher thread: every change the backend reports wakes every waiting task."""
        backend = self.ledger._backend
        loop = self._loop
        assert loop is not None
        while not self._watching.is_set():
            try:
                changed = backend.wait_for_change(_WATCH_SLICE)
            except StorageUnavailable as e:  # the server is down or restarting: listen again
                log.debug("watching for changes: %s; trying again in %gs", e, _WATCH_SLICE)
                if self._watching.wait(_WATCH_SLICE):
                    return
                continue
            except LedgerError:  # closed under us: the waiters fall back to their slices
                return
            if changed and not self._watching.is_set():
                try:
                    loop.call_soon_threadsafe(self._wake_all)
                except RuntimeError:  # the loop is closed
                    return

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


__all__ = ["AsyncLedger"]
