"""What archiving needs from an SQLite file: sole access, a seal, a manifest, an atomic swap.

`Exclusive` takes a ledger file for itself: it leaves WAL mode (SQLite refuses that while any
other connection has the file open, which is how "no other process uses this ledger" is
checked) and holds ``BEGIN EXCLUSIVE`` while the archive and the new segment are written from
it. `seal` adds a trigger that refuses every new event (an archive is read-only, and the old
file that a late process may still hold can take no write); `write_manifest` records what a
file holds. No row of any events table is ever updated or deleted: files are only created,
sealed and renamed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import apsw

from ...errors import LedgerBusy, StorageError
from .backend import SqliteSnapshot
from .connection import connect, wrap_sqlite_error
from .events_table import REPLACED_ID
from .timecodec import to_text

SEAL_MESSAGE = "this ledger file is sealed (an archive, or a file replaced by `ledger archive`)"
seal_statement = (
    "CREATE TRIGGER IF NOT EXISTS events_sealed BEFORE INSERT ON events "
    f"BEGIN SELECT RAISE(ABORT, '{SEAL_MESSAGE}'); END"
)
manifest_statement = """CREATE TABLE IF NOT EXISTS ledger_segment (
    role TEXT NOT NULL CHECK (role IN ('archive', 'live')),
    source TEXT NOT NULL,
    cut TEXT NOT NULL,
    made_at TEXT NOT NULL,
    source_head_position INTEGER NOT NULL,
    source_head_hash TEXT,
    events INTEGER NOT NULL,
    jobs INTEGER NOT NULL
)"""
insert_manifest_statement = "INSERT INTO ledger_segment VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
select_manifest_statement = "SELECT * FROM ledger_segment ORDER BY made_at"


def is_seal(error: BaseException | None) -> bool:
    """Whether an SQLite error is the seal trigger refusing an event."""
    return isinstance(error, apsw.ConstraintError) and SEAL_MESSAGE in str(error)


def sealed_error(target: str) -> StorageError:
    return StorageError(
        f"appending to {target}: {SEAL_MESSAGE}; it takes no new events. If it is the ledger "
        "you work with, it was archived while this process had it open: reopen the ledger"
    )


class Exclusive:
    """Sole access to one ledger file, for as long as the `with` block runs."""

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self.path = path
        self.conn = connect(path, readonly=False, busy_timeout_ms=busy_timeout_ms)
        try:
            self._leave_wal()
            # Locks are kept after COMMIT until the connection closes: the file stays ours from
            # the seal to the rename (see `seal_and_commit`).
            self.conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
            self.conn.execute("BEGIN EXCLUSIVE")
        except BaseException:
            self.conn.close()
            raise

    def _leave_wal(self) -> None:
        try:
            self.conn.execute("PRAGMA journal_mode=DELETE").fetchall()
        except (apsw.BusyError, apsw.LockedError) as e:
            raise LedgerBusy(
                f"archiving {self.path}: another process has this ledger open (a worker, a "
                "follower, a dashboard); stop them first, then archive (nothing was written)"
            ) from e

    def snapshot(self) -> SqliteSnapshot:
        return SqliteSnapshot(self.conn)

    def seal_and_commit(self) -> None:
        """Seal this (old) file and mark it replaced, then end the exclusive transaction while
        keeping the lock: a process that opened the path meanwhile waits for this connection,
        then finds the replaced marker and refuses the file before it touches a WAL (whose name
        the new file at the same path shares)."""
        try:
            self.conn.execute(seal_statement)
            self.conn.execute(f"PRAGMA application_id={REPLACED_ID}")
            self.conn.execute("COMMIT")
        except apsw.Error as e:
            raise wrap_sqlite_error(e, f"sealing {self.path}") from e

    def close(self) -> None:
        if not self.conn.get_autocommit():
            self.conn.execute("ROLLBACK")
        self.conn.close()


def finish_file(
    path: str,
    *,
    role: str,
    source: str,
    cut: datetime,
    made_at: datetime,
    source_head: tuple[int, str | None],
    events: int,
    jobs: int,
    busy_timeout_ms: int,
) -> None:
    """Record the manifest of a new file (what it holds and where it came from); an archive is
    sealed too. The file leaves WAL mode, so it is one self-contained file (no -wal beside it)
    that can be renamed safely."""
    conn = connect(path, readonly=False, busy_timeout_ms=busy_timeout_ms)
    try:
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(manifest_statement)
        conn.execute(
            insert_manifest_statement,
            (
                role,
                source,
                to_text(cut),
                to_text(made_at),
                source_head[0],
                source_head[1],
                events,
                jobs,
            ),
        )
        if role == "archive":
            conn.execute(seal_statement)
        conn.execute("COMMIT")
    except apsw.Error as e:
        raise wrap_sqlite_error(e, f"finishing {path}") from e
    finally:
        conn.close()


def manifest(conn: apsw.Connection) -> list[dict[str, Any]]:
    """The manifest rows of a file (none for a ledger never archived)."""
    try:
        cursor = conn.execute(select_manifest_statement)
        names = [d[0] for d in cursor.getdescription()]
        return [dict(zip(names, row, strict=True)) for row in cursor]
    except apsw.SQLError:
        return []


def replace(source: str, target: str) -> None:
    """Rename ``source`` over ``target`` atomically, and make the rename durable."""
    os.replace(source, target)
    directory = os.path.dirname(os.path.abspath(target))
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def leftovers(path: str) -> Iterator[str]:
    """The side files SQLite may leave next to a database."""
    for suffix in ("-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            yield path + suffix
