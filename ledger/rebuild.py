"""Replay and verify: folding the log through the projections' own apply code.

`fold` is the one loop both use (and the catch-up at open): it streams events in position order
into each projection's writer. Replay runs it into the live tables inside one write transaction,
so a failure (a corrupt event, a bug in apply) leaves the old projection exactly as it was.
Verify runs it into a scratch in-memory database and compares, so it never writes the live file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apsw
import msgspec

from projections import jobs_queries as q
from projections.base import Projection, read_checkpoint, write_checkpoint

from . import store
from .errors import CorruptEvent

Progress = Callable[[int, int], None]  # (events done, events in all)
_PROGRESS_EVERY = 10_000


class ReplayReport(msgspec.Struct, frozen=True):
    events: int
    jobs: int
    seconds: float
    position: int


class Difference(msgspec.Struct, frozen=True):
    """One way the live projection differs from the log's fold. ``column`` is None when the whole
    row is missing on one side; ``position`` is set when an event could not be decoded."""

    table: str
    key: Any
    column: str | None
    live: Any
    rebuilt: Any
    position: int | None = None


class VerifyReport(msgspec.Struct, frozen=True):
    ok: bool
    events: int
    jobs: int
    differences: list[Difference]
    seconds: float


def fold(
    source: apsw.Connection,
    target: apsw.Connection,
    projections: Sequence[Projection],
    after: int = 0,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Apply the events after ``after`` to the projections in ``target``; (count, last position)."""
    writers = [p.writer(target) for p in projections]
    total = store.last_position(source) - after if progress else 0
    count, last = 0, after
    for stored in store.iter_after(source, after):
        for writer in writers:
            writer.apply(stored)
        count += 1
        last = stored.position
        if progress and count % _PROGRESS_EVERY == 0:
            progress(count, total)
    for writer in writers:
        writer.flush()
    if progress:
        progress(count, total)
    return count, last


def rebuild(
    conn: apsw.Connection, projections: Sequence[Projection], progress: Progress | None = None
) -> tuple[int, int]:
    """Drop and refill the projections from the whole log; call inside a write transaction."""
    for projection in projections:
        projection.drop_schema(conn)
        projection.create_schema(conn, indexes=False)
    count, last = fold(conn, conn, projections, 0, progress)
    for projection in projections:
        projection.create_indexes(conn)
        write_checkpoint(conn, projection, last)
    return count, last


def catch_up(conn: apsw.Connection, projections: Sequence[Projection]) -> int:
    """Bring each projection up to the end of the log: rebuild when its schema changed, it was
    never built or its tables were lost, else apply only the events after its checkpoint.
    Call inside a write transaction."""
    applied = 0
    head = store.last_position(conn)
    for projection in projections:
        checkpoint = read_checkpoint(conn, projection.name)
        if (
            checkpoint is None
            or checkpoint[0] != projection.schema_version
            or not _tables_exist(conn, projection)
        ):
            applied += rebuild(conn, [projection])[0]
        elif checkpoint[1] < head:
            projection.create_schema(conn)
            count, last = fold(conn, conn, [projection], checkpoint[1])
            write_checkpoint(conn, projection, last)
            applied += count
    return applied


def _tables_exist(conn: apsw.Connection, projection: Projection) -> bool:
    names = projection.tables
    marks = ", ".join("?" * len(names))
    found = conn.execute(
        f"SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ({marks})", names
    ).get
    return bool(found == len(names))


def scratch_fold(
    conn: apsw.Connection, projections: Sequence[Projection]
) -> tuple[apsw.Connection, int]:
    """A fresh in-memory database holding the projections folded from ``conn``'s log."""
    scratch = apsw.Connection(":memory:")
    for projection in projections:
        projection.create_schema(scratch, indexes=False)  # compared row by row: no index needed
    count, _ = fold(conn, scratch, projections)
    return scratch, count


def verify(conn: apsw.Connection, projections: Sequence[Projection]) -> VerifyReport:
    """Compare the live projections with a fold of the log, all read from one snapshot."""
    started = time.perf_counter()
    conn.execute("BEGIN")  # a read transaction: one consistent snapshot of log and tables
    try:
        try:
            scratch, count = scratch_fold(conn, projections)
        except CorruptEvent as e:
            diff = Difference("events", e.position, None, None, None, position=e.position)
            return VerifyReport(False, 0, 0, [diff], time.perf_counter() - started)
        differences: list[Difference] = []
        head = store.last_position(conn)
        for projection in projections:
            differences += compare(projection.dump(conn), projection.dump(scratch))
            checkpoint = read_checkpoint(conn, projection.name)
            if checkpoint is None or checkpoint[1] != head:
                seen = None if checkpoint is None else checkpoint[1]
                differences.append(
                    Difference("projection_checkpoints", projection.name, "position", seen, head)
                )
        jobs = int(conn.execute(q.count_statement(False, False)).get)
        scratch.close()
    finally:
        conn.execute("COMMIT")
    return VerifyReport(not differences, count, jobs, differences, time.perf_counter() - started)


_MISSING = object()


def compare(
    live: Iterator[tuple[str, Any, dict[str, Any]]],
    rebuilt: Iterator[tuple[str, Any, dict[str, Any]]],
) -> list[Difference]:
    """Match rows by key; values must match in type too (1 is not 1.0)."""
    out: list[Difference] = []
    live_rows = {key: (table, row) for table, key, row in live}
    for table, key, row in rebuilt:
        seen = live_rows.pop(key, None)
        if seen is None:
            out.append(Difference(table, key, None, None, row))
            continue
        for column, value in row.items():
            other = seen[1].get(column, _MISSING)
            if type(other) is not type(value) or other != value:
                out.append(
                    Difference(table, key, column, None if other is _MISSING else other, value)
                )
    for key, (table, row) in live_rows.items():
        out.append(Difference(table, key, None, row, None))
    return out
