"""The append-only ``events`` table and the projections' checkpoints, as PostgreSQL holds them.

The schema (``schema.sql``) makes the database enforce the log's laws: triggers refuse UPDATE,
DELETE and TRUNCATE; the insert trigger takes each position from the one ``event_counter`` row,
whose row lock keeps appenders in commit order (gap-free positions a follower can trust); and
``UNIQUE (job_id, version)`` refuses a stale version (`ConcurrencyError`, raised by the backend).
``data`` is ``json`` (its exact text; loaded as text), ``recorded_at`` a ``timestamptz``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from ...domain import chain
from ...domain import events as ev
from ...domain.events import StoredEvent
from ...domain.timeutil import to_text
from ..protocol import EventRow

Conn = Any  # psycopg.Connection; Any keeps the row types simple for mypy

_COLUMNS = "position, job_id, version, type, data, recorded_at"
_SELECT = f"SELECT {_COLUMNS} FROM events"
insert_statement = (
    "INSERT INTO events (job_id, version, type, data, recorded_at) "
    "VALUES (%s, %s, %s, %s, %s) RETURNING position"
)
insert_exact_statement = (
    "INSERT INTO events (position, job_id, version, type, data, recorded_at) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)
# A live append names neither position nor hash: the insert trigger hands out both, from the
# counter row (see `append`).
insert_deferred_statement = (
    "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES (%s, %s, %s, %s, %s)"
)
INSERT_INTO, INSERT_ROW = insert_deferred_statement.split(" VALUES ")  # its two halves
# Chained appends name their position (the chain hash covers it): the counter row, locked by
# `read_head` for the rest of the transaction, says which is next, and the insert trigger
# checks it is the one it hands out.
insert_chained_statement = (
    "INSERT INTO events (position, job_id, version, type, data, recorded_at, hash) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
# The head from the counter row alone (schema.sql says why not a join with events).
head_statement = "SELECT last_position, last_hash FROM event_counter FOR UPDATE"
head_read_statement = "SELECT last_position, last_hash FROM event_counter"
# A counter without the hash (from before its column, or after an unhashed import): its event's,
# read by a statement of its own, so at READ COMMITTED it sees what committed before the lock.
hash_at_statement = "SELECT hash FROM events WHERE position = %s"
_SELECT_CHAIN = "SELECT position, job_id, version, type, data, recorded_at, hash FROM events"
chain_after_statement = f"{_SELECT_CHAIN} WHERE position > %s ORDER BY position LIMIT %s"
after_statement = f"{_SELECT} WHERE position > %s ORDER BY position"
after_limit_statement = after_statement + " LIMIT %s"
# The counter is the log's head (the same number as max(position), read in one row).
last_position_statement = "SELECT last_position FROM event_counter"
job_version_statement = "SELECT coalesce(max(version), 0) FROM events WHERE job_id = %s"
version_at_statement = (
    "SELECT coalesce(max(version), 0) FROM events WHERE job_id = %s AND position <= %s"
)
_ITER_BATCH = 5_000


def read_head(conn: Conn, *, lock: bool = True) -> tuple[int, bytes]:
    """(last position, its chain hash). ``lock``: hold the counter row until the transaction
    ends, so no other appender moves the head this transaction chains onto. A last event
    without a stored hash (a log from before the chain) gets its hash computed over the log."""
    row = conn.execute(head_statement if lock else head_read_statement).fetchone()
    position, stored = (0, None) if row is None else (int(row[0]), row[1])
    if position == 0:
        return 0, chain.GENESIS
    if stored is None:
        found = conn.execute(hash_at_statement, (position,)).fetchone()
        stored = None if found is None else found[0]
    if stored is not None:
        return position, bytes.fromhex(stored)
    rows = (row for row in chain_rows(conn, 0) if row[0] <= position)
    return position, chain.hash_of(rows)


def chain_rows(conn: Conn, after: int) -> Iterator[chain.ChainRow]:
    """The log as the chain hashes it (data as its text's bytes, time as its canonical text),
    read in pages by position."""
    while True:
        rows = conn.execute(chain_after_statement, (after, _ITER_BATCH)).fetchall()
        for position, job_id, version, event_type, data, recorded_at, digest in rows:
            at = to_text(recorded_at) if isinstance(recorded_at, datetime) else recorded_at
            raw = data.encode() if isinstance(data, str) else data
            yield position, job_id, version, event_type, raw, at, digest
        if len(rows) < _ITER_BATCH:
            return
        after = rows[-1][0]


def append(
    conn: Conn,
    job_id: str,
    expected_version: int,
    new: Sequence[ev.Event],
    at: datetime,
    placeholder: int,
) -> list[StoredEvent]:
    """Insert the events after ``expected_version``; the trigger gives each its position and
    chain hash. Nothing is fetched, so the rows go out with the COMMIT (pipeline mode), and the
    events come back with stand-in positions, ``placeholder``, ``placeholder - 1``, ... (below
    zero: no real position is). The backend writes a stand-in as the real one in SQL."""
    stored = []
    version = expected_version
    execute = conn.execute
    position = placeholder
    rows = []
    for event in new:
        version += 1
        rows.append((job_id, version, ev.tag_of(event), ev.encode_text(event), at))
        stored.append(StoredEvent(position, job_id, version, at, event))
        position -= 1
    start = 0
    for size in _pieces(len(rows)):
        statement = insert_rows_statement(size)
        execute(statement, [value for row in rows[start : start + size] for value in row])
        start += size
    for row in rows[start:]:  # the short tail: combined with the job's row (`combined`)
        execute(insert_deferred_statement, row)
    return stored


# A long batch (`log_events`) goes as multi-row INSERTs, the largest pieces first, each row's
# trigger seeing the rows before it (they are inserted in order): every statement costs about as
# much again as the row it writes (~30 us of psycopg on the client, ~25 us on the server).
# Pieces are powers of two, so a few statement texts serve every batch; the tail shorter than
# the smallest piece goes one row a statement, as a short append always did.
_PIECE_SIZES = (128, 64, 32, 16)
_rows_cache: dict[int, str] = {}


def _pieces(count: int) -> list[int]:
    sizes = []
    for size in _PIECE_SIZES:
        while count >= size:
            sizes.append(size)
            count -= size
    return sizes


def insert_rows_statement(count: int) -> str:
    """`insert_deferred_statement` for ``count`` rows (their parameters one row after another)."""
    text = _rows_cache.get(count)
    if text is None:
        text = _rows_cache[count] = f"{INSERT_INTO} VALUES {', '.join([INSERT_ROW] * count)}"
    return text


seed_statement = "UPDATE event_counter SET last_hash = %s WHERE last_hash IS NULL"


def seed_head(conn: Conn) -> None:
    """Record the head's hash in the counter row where it is missing (a counter from before
    ``last_hash``, or after an import of unhashed events), so the trigger can chain onto it."""
    row = conn.execute(head_statement).fetchone()
    if row is None or int(row[0]) == 0 or row[1] is not None:
        return
    _, digest = read_head(conn)
    conn.execute(seed_statement, (digest.hex(),))


def insert_exact(
    conn: Conn,
    position: int,
    job_id: str,
    version: int,
    event_type: str,
    data: str,
    recorded_at: datetime,
    digest: str | None = None,
) -> None:
    conn.execute(
        insert_chained_statement, (position, job_id, version, event_type, data, recorded_at, digest)
    )


def export_rows(conn: Conn, after: int, limit: int) -> list[chain.ChainRow]:
    """Rows as stored: data its JSON text, the time an aware UTC datetime, the chain hash."""
    return conn.execute(chain_after_statement, (after, limit)).fetchall()


def job_version(conn: Conn, job_id: str) -> int:
    return int(conn.execute(job_version_statement, (job_id,)).fetchone()[0])


def version_at(conn: Conn, job_id: str, position: int) -> int:
    return int(conn.execute(version_at_statement, (job_id, position)).fetchone()[0])


def last_position(conn: Conn) -> int:
    row = conn.execute(last_position_statement).fetchone()
    return 0 if row is None else int(row[0])


def rows_after(conn: Conn, after: int, limit: int | None) -> list[EventRow]:
    if limit is None:
        return conn.execute(after_statement, (after,)).fetchall()
    return conn.execute(after_limit_statement, (after, limit)).fetchall()


def iter_after(conn: Conn, after: int) -> Iterator[StoredEvent]:
    """The log after ``after``, decoded, read in pages (a server-side cursor would need a named
    cursor per snapshot; pages by position are as exact, since positions only grow)."""
    decode = ev.decode
    while True:
        rows = conn.execute(after_limit_statement, (after, _ITER_BATCH)).fetchall()
        for position, job_id, version, event_type, data, recorded_at in rows:
            yield StoredEvent(
                position, job_id, version, recorded_at, decode(position, event_type, data)
            )
        if len(rows) < _ITER_BATCH:
            return
        after = rows[-1][0]


def job_rows(conn: Conn, job_id: str, types: Sequence[str] | None) -> list[EventRow]:
    if types is None:
        query, params = f"{_SELECT} WHERE job_id = %s ORDER BY version", (job_id,)
    else:
        query = f"{_SELECT} WHERE job_id = %s AND type = ANY(%s) ORDER BY version"
        params = (job_id, list(types))  # type: ignore[assignment]
    return conn.execute(query, params).fetchall()


def chat_rows(
    conn: Conn, chat_id: int, limit: int, types: Sequence[str] | None, exclude: Sequence[str]
) -> list[EventRow]:
    where = ""
    params: list[Any] = [chat_id]
    if types is not None:
        where += " AND type = ANY(%s)"
        params.append(list(types))
    if exclude:
        where += " AND NOT (type = ANY(%s))"
        params.append(list(exclude))
    params.append(limit)
    query = (
        f"{_SELECT} WHERE job_id IN (SELECT id FROM jobs WHERE chat_id = %s){where} "
        "ORDER BY position DESC LIMIT %s"
    )
    return conn.execute(query, params).fetchall()


# -- projection checkpoints ---------------------------------------------------------------------

checkpoint_select_statement = (
    "SELECT schema_version, position FROM projection_checkpoints WHERE name = %s"
)
# In a write transaction the checkpoint row is locked when read: every command moves it before it
# commits, so holding it means no command commits meanwhile (a catch-up at open then folds
# exactly the events its projection lacks, even while other processes write).
checkpoint_lock_statement = checkpoint_select_statement + " FOR UPDATE"
checkpoint_upsert_statement = (
    "INSERT INTO projection_checkpoints (name, schema_version, position) VALUES (%s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET schema_version = excluded.schema_version, "
    "position = excluded.position"
)
checkpoint_advance_statement = "UPDATE projection_checkpoints SET position = %s WHERE name = %s"


def read_checkpoint(conn: Conn, name: str, *, lock: bool = False) -> tuple[int, int] | None:
    statement = checkpoint_lock_statement if lock else checkpoint_select_statement
    row = conn.execute(statement, (name,)).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def write_checkpoint(conn: Conn, name: str, schema_version: int, position: int) -> None:
    conn.execute(checkpoint_upsert_statement, (name, schema_version, position))


def advance_checkpoint(conn: Conn, name: str, position: int) -> None:
    conn.execute(checkpoint_advance_statement, (position, name))


# Inside the appending transaction, which holds the counter row: its own last position.
checkpoint_to_head_statement = (
    "UPDATE projection_checkpoints SET position = (SELECT last_position FROM event_counter) "
    "WHERE name = %s"
)


def advance_checkpoint_to_head(conn: Conn, name: str) -> None:
    conn.execute(checkpoint_to_head_statement, (name,))


type_counts_statement = 'SELECT type, count(*) FROM events GROUP BY type ORDER BY type COLLATE "C"'


def type_counts(conn: Conn) -> dict[str, int]:
    """How many events of each type the log holds (the metrics' counters)."""
    return {str(t): int(n) for t, n in conn.execute(type_counts_statement)}
