"""Opening SQLite connections and running write transactions, the APSW way.

Pragmas are applied per connection here and nowhere else. Write transactions always start with
``BEGIN IMMEDIATE``: APSW's ``with connection:`` is a SAVEPOINT, which outside a transaction starts
a *deferred* one whose later upgrade to a writer can fail at once with BUSY in WAL mode (the
classic "database is locked" of SQLite job queues); IMMEDIATE takes the write lock up front,
where the busy timeout can wait for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import apsw

from ...errors import LedgerBusy, LedgerError, SchemaError, StorageError

Durability = Literal["full", "normal"]
DURABILITY_LEVELS: dict[str, str] = {"full": "FULL", "normal": "NORMAL"}
DEFAULT_BUSY_TIMEOUT_MS = 30_000
_T = TypeVar("_T")


def wrap_sqlite_error(e: apsw.Error, doing: str) -> LedgerError:
    """Turn an APSW error into the ledger's own, with a hint on what to do."""
    if isinstance(e, apsw.ConnectionClosedError):
        return StorageError(f"{doing}: this Ledger was closed; open a new one")
    if isinstance(e, apsw.BusyError):
        return LedgerBusy(
            f"{doing}: another connection holds the database lock ({e}) and SQLite stopped "
            "waiting for it (the busy timeout ran out, or this lock cannot be waited for); retry, "
            "or pass a longer busy_timeout"
        )
    if isinstance(e, apsw.FullError):
        return StorageError(f"{doing}: the disk or database is full ({e}); free space and retry")
    if isinstance(e, apsw.ReadOnlyError):
        return StorageError(f"{doing}: the database is read-only ({e}); check file permissions")
    if isinstance(e, apsw.NotADBError):
        return SchemaError(f"{doing}: the file is not an SQLite database ({e})")
    if isinstance(e, apsw.CantOpenError):
        return StorageError(f"{doing}: cannot open the database file ({e}); check the path")
    return StorageError(f"{doing}: SQLite error {type(e).__name__}: {e}")


def refuse_hard_links(path: str) -> None:
    """Refuse a file that has more than one name (hard links).

    SQLite keys its locks and its ``-wal``/``-shm`` files on the name a file was opened by, so two
    processes opening one file by two names do not see each other's locks or WAL, and their
    writes can corrupt it. ``:memory:``, the temporary ``""`` and URIs (``file:...``, which may
    name no file) are left to SQLite; a file that does not exist yet has no links."""
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    try:
        links = os.stat(path).st_nlink
    except OSError:
        return  # missing (a new ledger) or unreadable: opening it reports what is wrong
    if links > 1:
        raise StorageError(
            f"{path} has {links} hard links (names): SQLite's locks and WAL follow the file's "
            "name, so writers using different names would not see each other and could "
            "corrupt it; remove the extra links (keep one name, or use a symbolic link) and "
            "open it again"
        )


def connect(
    path: str,
    *,
    readonly: bool = False,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    create: bool = True,
) -> apsw.Connection:
    """A connection with the ledger's pragmas; ``create=False`` refuses a missing file."""
    if readonly:
        flags = apsw.SQLITE_OPEN_READONLY
    else:
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    flags |= apsw.SQLITE_OPEN_URI
    refuse_hard_links(path)
    try:
        conn = apsw.Connection(path, flags=flags)
    except apsw.Error as e:
        raise wrap_sqlite_error(e, f"opening {path}") from e
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        conn.execute("PRAGMA foreign_keys=ON")
    except apsw.Error as e:
        conn.close()
        raise wrap_sqlite_error(e, f"opening {path}") from e
    return conn


def configure_writer(
    conn: apsw.Connection, durability: Durability, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> None:
    """WAL and the durability level. Separate from `connect` because switching to WAL rewrites
    the file header: it must only happen once the file is known to be a ledger (or empty)."""
    # Readers never block the writer and vice versa; ":memory:" answers "memory", which is fine.
    _switch_to_wal(conn, busy_timeout_ms)
    conn.execute(f"PRAGMA synchronous={DURABILITY_LEVELS[durability]}")


_WAL_RETRY_FIRST, _WAL_RETRY_MAX = 0.001, 0.05  # seconds between tries, doubling


def _switch_to_wal(conn: apsw.Connection, busy_timeout_ms: int) -> None:
    """``PRAGMA journal_mode=WAL``, retried until the busy timeout runs out.

    The switch needs the file to itself, and SQLite answers BUSY at once (without calling the busy
    handler) while another connection holds any lock on it: several processes opening a new file
    together (workers started at the same moment) would otherwise fail instantly."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = _WAL_RETRY_FIRST
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except apsw.BusyError as e:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LedgerBusy(
                    "switching the ledger to WAL mode: other connections kept the file locked "
                    f"for the whole busy timeout ({busy_timeout_ms / 1000:g} s); retry, or pass "
                    "a longer busy_timeout"
                ) from e
            time.sleep(min(delay, left))
            delay = min(delay * 2, _WAL_RETRY_MAX)


def read_snapshot(conn: apsw.Connection, query: Callable[[], _T]) -> _T:
    """Run ``query`` in one read transaction, so all its statements see the same committed
    state (a reader made of several SELECTs would otherwise mix states when a writer commits
    between them). Inside a transaction already, that one is the snapshot."""
    if not conn.get_autocommit():
        return query()
    conn.execute("BEGIN")
    try:
        result = query()
    except BaseException:
        rollback(conn)
        raise
    conn.execute("COMMIT")
    return result


def rollback(conn: apsw.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so."""
    if not conn.get_autocommit():
        conn.execute("ROLLBACK")


def begin_immediate(conn: apsw.Connection, doing: str, retries: int = 3) -> None:
    """``BEGIN IMMEDIATE``, retried when SQLite reports BUSY before the write lock was won (the
    busy timeout waits; this is the bounded retry on top for the rare BUSY that the busy handler
    does not cover, such as WAL recovery by another process)."""
    attempt = 0
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except apsw.BusyError as e:
            if attempt == retries:
                raise wrap_sqlite_error(e, doing) from e
            attempt += 1
        except apsw.Error as e:
            raise wrap_sqlite_error(e, doing) from e


def run_write(
    conn: apsw.Connection, doing: str, work: Callable[..., _T], *args: Any, retries: int = 3
) -> _T:
    """Run ``work`` in a write transaction of its own (`begin_immediate`). Any exception in
    ``work`` rolls everything back."""
    begin_immediate(conn, doing, retries)
    try:
        result = work(*args)
        conn.execute("COMMIT")
        return result
    except apsw.Error as e:
        rollback(conn)
        raise wrap_sqlite_error(e, doing) from e
    except BaseException:
        rollback(conn)
        raise
