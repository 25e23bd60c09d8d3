"""The append-only event table (its schema, the append, the reads) and the projections' checkpoints.

The database itself refuses UPDATE and DELETE on ``events`` (triggers), so no code path, tool or
hand-typed SQL can rewrite history. ``position`` (INTEGER PRIMARY KEY) is the global order;
``UNIQUE(job_id, version)`` is the per-job order and the optimistic-concurrency guard.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import apsw

from ...domain import chain
from ...domain import events as ev
from ...domain.events import StoredEvent
from ...domain.model import JobEvent
from ...domain.reading import FAILURES, fast_decoders, to_job_events
from ...errors import ConcurrencyError, CorruptEvent, SchemaError, UnfoldableEvent
from ..protocol import EventRow
from .connection import wrap_sqlite_error
from .timecodec import from_canonical, from_text, to_text

_fromiso = datetime.fromisoformat

# Identifies a ledger file (PRAGMA application_id) and the event-store format (PRAGMA user_version).
APPLICATION_ID = 0x4A4C4752  # "JLGR"
# 1: release 0.1; 2: events carry their chain hash (`domain.chain`; upgrade: `_upgrade_to_2`).
STORE_SCHEMA_VERSION = 2

schema_statements = (
    """CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        hash TEXT,
        UNIQUE (job_id, version)
    )""",
    """CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE is not allowed'); END""",
    """CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE is not allowed'); END""",
)

insert_exact_statement = (
    "INSERT INTO events (position, job_id, version, type, data, recorded_at, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# The position is given: the chain hash covers it, so it is known before the insert (the write
# lock of BEGIN IMMEDIATE keeps it the next one; INTEGER PRIMARY KEY would pick max + 1 too).
insert_statement = insert_exact_statement
head_statement = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
_select_chain = (
    "SELECT position, job_id, version, type, CAST(data AS BLOB), recorded_at, hash FROM events"
)
chain_after_statement = f"{_select_chain} WHERE position > ? ORDER BY position"
chain_upto_statement = f"{_select_chain} WHERE position <= ? ORDER BY position"
# ``data`` is read as its bytes: msgspec decodes them directly, and bytes that are not UTF-8
# (written around the ledger) become a `CorruptEvent` at their position, not an error of the
# driver that names no event.
_select_events = (
    "SELECT position, job_id, version, type, CAST(data AS BLOB), recorded_at FROM events"
)
select_after_statement = f"{_select_events} WHERE position > ? ORDER BY position"
# For a fold: also whether the time has the canonical shape (`timeutil.parse_text`), checked by
# SQLite in the scan as a GLOB that fixes the width, every separator and the offset (``?`` is
# one character). The digits are left to ``fromisoformat``, which the fast way parses with: with
# each separator in its place it refuses anything but an ASCII digit in every other place (tested
# place by place), and a ``[0-9]`` class per digit made this GLOB 60% of the scan's SQLite time.
_CANONICAL_GLOB = "'????-??-??T??:??:??.??????+00:00'"
fold_after_statement = (
    "SELECT position, job_id, version, type, CAST(data AS BLOB), recorded_at, "
    f"recorded_at GLOB {_CANONICAL_GLOB} FROM events WHERE position > ? ORDER BY position"
)
last_position_statement = "SELECT coalesce(max(position), 0) FROM events"
job_version_statement = "SELECT coalesce(max(version), 0) FROM events WHERE job_id = ?"
_job_version_at_statement = (
    "SELECT coalesce(max(version), 0) FROM events WHERE job_id = ? AND position <= ?"
)


def job_version_at(conn: apsw.Connection, job_id: str, position: int) -> int:
    """A job's version as of ``position`` (0: no events of it up to there)."""
    return int(conn.execute(_job_version_at_statement, (job_id, position)).get)


# One statement, so one read snapshot: read as separate statements, another process could
# commit its initialisation between them (no marker yet, but tables already), which looked like
# "another app's file" to a ledger opened at the same moment.
_markers_statement = (
    "SELECT a.application_id, u.user_version, (SELECT count(*) FROM sqlite_schema) "
    "FROM pragma_application_id AS a, pragma_user_version AS u"
)


def _markers(conn: apsw.Connection) -> tuple[int, int, int]:
    """(application_id, user_version, tables): which app wrote the file, in which store format,
    and how many schema objects it holds, all from one snapshot."""
    row: tuple[int, int, int] = conn.execute(_markers_statement).fetchall()[0]  # type: ignore[assignment]
    return row


def _refuse_newer(user_version: int) -> None:
    if user_version > STORE_SCHEMA_VERSION:
        raise SchemaError(
            f"this ledger was written by a newer release (store schema {user_version}, this code "
            f"knows up to {STORE_SCHEMA_VERSION}); upgrade the jobledger package"
        )


REPLACED_ID = 0x4A4C4758  # "JLGX": set by `ledger archive` on the file it replaced (segments)


def _refuse_replaced(app_id: int) -> None:
    if app_id == REPLACED_ID:
        raise SchemaError(
            "this ledger file was replaced by `ledger archive` while it was being opened; "
            "open the ledger again"
        )


def check_openable(conn: apsw.Connection) -> tuple[int, int]:
    """Refuse, before anything is written, a file that is another app's database or a ledger
    from a newer release. An empty file (a new ledger) passes. Returns (application_id,
    user_version)."""
    app_id, user_version, objects = _markers(conn)
    _refuse_replaced(app_id)
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and objects > 0):
        raise SchemaError(
            "this SQLite file is not a ledger (it has other tables and no ledger marker); "
            "point --db / Ledger(path) at a ledger file or a new path"
        )
    _refuse_newer(user_version)
    return app_id, user_version


def initialize_schema(conn: apsw.Connection) -> None:
    """Create the store's tables if needed; call inside a write transaction."""
    app_id, user_version = check_openable(conn)
    for statement in schema_statements:
        conn.execute(statement)
    if app_id == 0:
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    if 0 < user_version < 2:
        _upgrade_to_2(conn)
    if user_version < STORE_SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version={STORE_SCHEMA_VERSION}")


def _upgrade_to_2(conn: apsw.Connection) -> None:
    """Store schema 1 -> 2: the ``hash`` column. Old events keep NULL (rows are never updated);
    the chain covers them from the first append on (`domain.chain`)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    if "hash" not in columns:
        conn.execute("ALTER TABLE events ADD COLUMN hash TEXT")


def check_schema(conn: apsw.Connection) -> None:
    """Check, without writing, that an existing file is a ledger this code can read."""
    app_id, user_version, _ = _markers(conn)
    _refuse_replaced(app_id)
    if app_id != APPLICATION_ID:
        raise SchemaError("this file is not a ledger (no ledger marker); check the --db path")
    _refuse_newer(user_version)


def _unhashed(conn: apsw.Connection, statement: str) -> str:
    """``statement`` as it reads a file opened read-only at store schema 1 (no ``hash``
    column yet: the upgrade adds it at the first read-write open), where every hash is NULL."""
    if conn.execute("PRAGMA user_version").get >= 2:
        return statement
    return statement.replace(", hash FROM", ", NULL FROM")


def read_head(conn: apsw.Connection) -> tuple[int, bytes]:
    """(last position, its chain hash): stored, or computed over the whole log when the last
    event has none (a log from before the chain, not yet appended to since the upgrade)."""
    row = conn.execute(_unhashed(conn, head_statement)).fetchone()
    if row is None:
        return 0, chain.GENESIS
    position, stored = row
    if stored is not None:
        return int(position), bytes.fromhex(stored)
    rows = conn.execute(_unhashed(conn, chain_upto_statement), (position,))
    return int(position), chain.hash_of(rows)


def chain_rows(conn: apsw.Connection, after: int) -> Iterator[chain.ChainRow]:
    """The log as the chain hashes it (data as stored bytes, time as its text, stored hash)."""
    yield from conn.execute(_unhashed(conn, chain_after_statement), (after,))


def append(
    conn: apsw.Connection,
    job_id: str,
    expected_version: int,
    new_events: Sequence[ev.Event],
    recorded_at: datetime,
    head: tuple[int, bytes],
) -> tuple[list[StoredEvent], tuple[int, bytes]]:
    """Append events to one job's stream after ``expected_version``, chained after ``head``
    (the log's last position and hash, `read_head`); inside a write transaction. Returns the
    stored events and the new head."""
    stored: list[StoredEvent] = []
    version = expected_version
    at = to_text(recorded_at)
    execute = conn.execute
    link = chain.link
    tags, encode = ev.TAGS, ev.encode_bytes  # `tag_of` and `encode_text`, without their calls
    position, previous = head
    for event in new_events:
        version += 1
        position += 1
        tag = tags[type(event)]
        data = encode(event)  # hashed as these bytes, stored as their text
        previous = link(previous, position, job_id, version, tag, data, at)
        try:
            execute(
                insert_statement,
                (position, job_id, version, tag, data.decode(), at, previous.hex()),
            )
        except apsw.ConstraintError as e:
            if not stored and last_position(conn) != head[0]:
                raise StaleHead from e  # another connection appended since ``head`` was read
            actual = conn.execute(job_version_statement, (job_id,)).get
            raise ConcurrencyError(job_id, expected_version, actual) from e
        stored.append(StoredEvent(position, job_id, version, recorded_at, event))
    return stored, (position, previous)


class StaleHead(Exception):
    """The head an append chained onto is no longer the log's last event (a cached head, and
    another connection appended since): read the head again and append again. Only the first
    insert can meet it: positions are gap-free, so once one insert took ``head + 1`` the head
    was the last event."""


def insert_exact(
    conn: apsw.Connection,
    position: int,
    job_id: str,
    version: int,
    event_type: str,
    data: str,
    recorded_at: datetime,
    digest: str | None = None,
) -> None:
    """One event with its position and chain hash, as an import carries them (checked by the
    import); inside a write transaction."""
    conn.execute(
        insert_exact_statement,
        (position, job_id, version, event_type, data, to_text(recorded_at), digest),
    )


def stored_time(position: int, event_type: str, text: object) -> datetime:
    """An event's ``recorded_at`` as the ledger stores it (`timecodec`: fixed-width ISO-8601
    UTC with microseconds, so comparing the text compares the instants), or `UnfoldableEvent`."""
    if type(text) is str and (moment := from_canonical(text)) is not None:
        return moment
    why = (
        f"its recorded_at {text!r} is not a time in the ledger's format "
        "(like 2026-01-31T12:00:00.000000+00:00, UTC)"
    )
    raise UnfoldableEvent(position, str(event_type), why)


def decode_row(row: tuple[int, str, int, str, str, str]) -> StoredEvent:
    """A stored event for a fold: decoded, its time checked strictly."""
    position, job_id, version, event_type, data, recorded_at = row
    event = ev.decode(position, event_type, data)
    return StoredEvent(
        position, job_id, version, stored_time(position, event_type, recorded_at), event
    )


def iter_after(conn: apsw.Connection, after: int = 0) -> Iterator[StoredEvent]:
    """The log after ``after`` for a fold, each event as `decode_row` decodes it; the ones the
    ledger wrote take a fast way: `reading.fast_decoders`, and the time's shape checked by
    SQLite in the scan (`fold_after_statement`) instead of `from_canonical` (whose memo misses
    on a log, where times are nearly all distinct)."""
    decoders = fast_decoders()
    failures = FAILURES
    try:
        for position, job_id, version, tag, data, at, canonical in conn.execute(
            fold_after_statement, (after,)
        ):
            decode = decoders.get(tag)
            if canonical and decode is not None:
                try:
                    yield StoredEvent(position, job_id, version, _fromiso(at), decode(data))
                    continue
                except failures:
                    pass
            # the careful way: it decodes alike or raises what is wrong with the event
            yield decode_row((position, job_id, version, tag, data, at))
    except apsw.Error as e:  # the table is gone or reshaped: say so as the ledger's error
        raise wrap_sqlite_error(e, "reading the log") from e


def _event_rows(rows: Iterable[tuple[int, str, int, str, str, str]]) -> list[EventRow]:
    """Rows for reads: the time as a datetime (the data is decoded by the reader)."""
    out: list[EventRow] = []
    for position, job_id, version, event_type, data, recorded_at in rows:
        try:
            at = from_text(recorded_at)
        except (TypeError, ValueError) as e:
            why = f"its recorded_at {recorded_at!r}: {e}"
            raise CorruptEvent(position, str(event_type), why) from e
        out.append((position, job_id, version, event_type, data, at))
    return out


def rows_after(conn: apsw.Connection, after: int, limit: int | None) -> list[EventRow]:
    if limit is None:
        return _event_rows(conn.execute(select_after_statement, (after,)))
    return _event_rows(conn.execute(select_after_statement + " LIMIT ?", (after, limit)))


def _read_time(position: int, event_type: str, text: object) -> datetime:
    """`from_text` for `reading.to_job_events`' careful way: a `CorruptEvent` naming the event."""
    try:
        return from_text(text)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        why = f"its recorded_at {text!r}: {e}"
        raise CorruptEvent(position, str(event_type), why) from e


def job_events_after(conn: apsw.Connection, after: int, limit: int | None) -> list[JobEvent]:
    """`rows_after` decoded straight from the cursor into `JobEvent`s (a full read of the log
    builds no other object per row)."""
    if limit is None:
        rows = conn.execute(select_after_statement, (after,))
    else:
        rows = conn.execute(select_after_statement + " LIMIT ?", (after, limit))
    return to_job_events(rows, _fromiso, _read_time)


def last_position(conn: apsw.Connection) -> int:
    return int(conn.execute(last_position_statement).get)


def _type_filter(types: Iterable[str] | None) -> tuple[str, tuple[str, ...]]:
    if types is None:
        return "", ()
    names = tuple(types)
    return f" AND type IN ({', '.join('?' * len(names))})", names


def job_rows(conn: apsw.Connection, job_id: str, types: Iterable[str] | None) -> list[EventRow]:
    where, names = _type_filter(types)
    return _event_rows(
        conn.execute(f"{_select_events} WHERE job_id = ?{where} ORDER BY version", (job_id, *names))
    )


def chat_rows(
    conn: apsw.Connection,
    chat_id: int,
    limit: int,
    types: Iterable[str] | None,
    exclude: Iterable[str] = (),
) -> list[EventRow]:
    """A chat's events, newest first: the chat's jobs come from the jobs projection."""
    where, names = _type_filter(types)
    excluded = tuple(exclude)
    if excluded:
        where += f" AND type NOT IN ({', '.join('?' * len(excluded))})"
    return _event_rows(
        conn.execute(
            f"{_select_events} WHERE job_id IN (SELECT id FROM jobs WHERE chat_id = ?){where} "
            "ORDER BY position DESC LIMIT ?",
            (chat_id, *names, *excluded, limit),
        )
    )


def raw_rows_after(conn: apsw.Connection, after: int, limit: int) -> list[chain.ChainRow]:
    """Rows exactly as stored (the time as its text, the chain hash), for export."""
    rows: list[chain.ChainRow] = conn.execute(
        _unhashed(conn, chain_after_statement) + " LIMIT ?", (after, limit)
    ).fetchall()  # type: ignore[assignment]
    return rows


# -- projection checkpoints -------------------------------------------------------------------

checkpoint_schema_statement = """CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name TEXT PRIMARY KEY,
    schema_version INTEGER NOT NULL,
    position INTEGER NOT NULL
)"""
checkpoint_select_statement = (
    "SELECT schema_version, position FROM projection_checkpoints WHERE name = ?"
)
checkpoint_upsert_statement = (
    "INSERT INTO projection_checkpoints (name, schema_version, position) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET schema_version = excluded.schema_version, "
    "position = excluded.position"
)
# A live command folds everything it appends, under the write lock, so after it the projection
# is in step with the whole log: the row then says so once (LIVE) instead of naming the head,
# and commands that find it saying so write nothing to it. Rewriting the head's position into
# that row was one more page in every commit's WAL frames (about 13% of a log_event's CPU).
LIVE = -1
checkpoint_advance_statement = (
    f"UPDATE projection_checkpoints SET position = {LIVE} WHERE name = ? AND position != {LIVE}"
)
_newest_first_statement = "SELECT position, job_id, version FROM events ORDER BY position DESC"
_VERSION_OF_STREAM = (  # where each kind of stream's projected version is kept
    ("queue:", "SELECT version FROM queues WHERE queue = ?", str),
    ("chat:", "SELECT version FROM budgets WHERE chat_id = ?", int),
)
_job_version_statement = "SELECT version FROM jobs WHERE id = ?"


def read_checkpoint(conn: apsw.Connection, name: str) -> tuple[int, int] | None:
    """(schema version, position folded up to); a LIVE checkpoint is at the log's head."""
    try:
        row = conn.execute(checkpoint_select_statement, (name,)).fetchone()
    except apsw.SQLError:  # no checkpoint table yet: nothing was ever applied
        return None
    if row is None:
        return None
    position = int(row[1])
    if position == LIVE:
        position = _live_position(conn)
    return int(row[0]), position


def _live_position(conn: apsw.Connection) -> int:
    """The position a LIVE projection is folded up to: the head, unless events were appended
    around the ledger (another tool writing the file) since the last command. Those are the
    newest events whose stream's projected version is behind them: walk back past them, so
    catching up folds them (and refuses them if they are damaged), as it would after a concrete
    checkpoint."""
    for position, stream, version in conn.execute(_newest_first_statement):
        if _projected(conn, stream, version):
            return int(position)
    return 0


def _projected(conn: apsw.Connection, stream: Any, version: Any) -> bool:
    statement, key = _job_version_statement, stream
    if isinstance(stream, str):
        for prefix, select, kind in _VERSION_OF_STREAM:
            if stream.startswith(prefix):
                try:
                    statement, key = select, kind(stream[len(prefix) :])
                except ValueError:
                    return True  # not a stream any projection folds: nothing to compare
                break
    try:
        seen = conn.execute(statement, (key,)).get
    except apsw.SQLError:  # the projection's table is not there: nothing is folded
        return False
    return isinstance(seen, int) and isinstance(version, int) and seen >= version


def write_checkpoint(conn: apsw.Connection, name: str, schema_version: int, position: int) -> None:
    """A projection folded up to the head is stored as LIVE, as live commands leave it, so a
    replay leaves the same rows as the commands did. (`chain.START` is a position, not a
    projection: stored as given.)"""
    if name != chain.START and position == last_position(conn):
        position = LIVE
    conn.execute(checkpoint_upsert_statement, (name, schema_version, position))


def advance_checkpoint(conn: apsw.Connection, name: str, position: int) -> None:
    """After a live command: ``position`` is the head it appended, so the checkpoint is LIVE."""
    conn.execute(checkpoint_advance_statement, (name,))


type_counts_statement = "SELECT type, count(*) FROM events GROUP BY type ORDER BY 1"


def type_counts(conn: apsw.Connection) -> dict[str, int]:
    """How many events of each type the log holds (the metrics' counters)."""
    return {str(t): int(n) for t, n in conn.execute(type_counts_statement)}
