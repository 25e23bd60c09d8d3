"""Replay and verify: folding the log through the projections' own apply code.

`fold` is the one loop both use (and the catch-up at open): it streams events in position order
into each projection's writer. Replay runs it into the live tables inside one write transaction,
so a failure (a corrupt event, a bug in apply) leaves the old projection exactly as it was.
Verify runs it into a scratch in-memory database and compares, so it never writes the live file.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import apsw
import msgspec

from projections import jobs_queries as q
from projections.base import (
    Projection,
    ProjectionWriter,
    UnfoldableEvent,
    read_checkpoint,
    write_checkpoint,
)

from . import events as ev
from . import store
from .errors import CorruptEvent, LedgerError
from .events import StoredEvent

Progress = Callable[[int, int], None]  # (events done, events in all)
_PROGRESS_EVERY = 10_000


class ReplayReport(msgspec.Struct, frozen=True):
    events: int
    jobs: int
    seconds: float
    position: int


class Difference(msgspec.Struct, frozen=True):
    """One way the live projection differs from the log's fold. ``column`` is None when the whole
    row is missing on one side; ``position`` is set when an event could not be decoded or does
    not fit the log (then ``problem`` says why, as it does for a table that cannot be read)."""

    table: str
    key: Any
    column: str | None
    live: Any
    rebuilt: Any
    position: int | None = None
    problem: str | None = None


class VerifyReport(msgspec.Struct, frozen=True):
    ok: bool
    events: int
    jobs: int
    differences: list[Difference]
    seconds: float


_DB_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}\+00:00")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def is_db_time(text: object) -> bool:
    """Whether ``text`` is a time exactly as the ledger stores it (`timeutil.to_db`: fixed-width
    ISO-8601 UTC with microseconds), so comparing the text compares the instants."""
    if type(text) is not str or _DB_TIME.fullmatch(text) is None:
        return False
    try:
        datetime.fromisoformat(text)  # the shape is right; are the month, day, hour real?
    except ValueError:
        return False
    return True


def _checked_fields(cls: type) -> tuple[str, ...]:
    """The fields of an event type that can hold an int or a datetime (the ones to check)."""
    names = []
    for field in msgspec.inspect.type_info(cls).fields:  # type: ignore[attr-defined]
        kind = field.type
        kinds = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
        if any(
            isinstance(k, msgspec.inspect.IntType | msgspec.inspect.DateTimeType) for k in kinds
        ):
            names.append(field.name)
    return tuple(names)


_CHECKED_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_problem(event: ev.Event) -> str | None:
    """A decoded field no command could have written: an int SQLite cannot store, a naive time."""
    names = _CHECKED_FIELDS.get(type(event))
    if names is None:
        names = _CHECKED_FIELDS[type(event)] = _checked_fields(type(event))
    for name in names:
        value = getattr(event, name)
        if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
            return f"its {name} {value} does not fit in a 64-bit integer"
        if type(value) is datetime and value.utcoffset() is None:
            return f"its {name} {value.isoformat()} has no timezone"
    return None


class LogCheck:
    """The rules every log the ledger writes keeps, beyond each event decoding: each job's events
    carry versions 1, 2, 3, ... in position order, the first is its ``created`` and only the first,
    times have the stored format, fields fit their columns. A full fold (replay, verify) and
    import check every event; an event that breaks a rule got there around the ledger."""

    __slots__ = ("_last_time", "_prior", "_versions")

    def __init__(self, prior: Callable[[str], int] | None = None) -> None:
        """``prior``: a job's version before the first event checked (for a fold that starts
        after the log's beginning); without it every job starts at 0."""
        self._versions: dict[str, int] = {}
        self._prior = prior
        self._last_time = ""  # the events of one command share a time: check it once

    def problem(self, stored: StoredEvent) -> str | None:
        """Why ``stored`` cannot follow the events checked so far, or None; remembers it."""
        job_id = stored.job_id
        if type(job_id) is not str or not job_id:
            return f"its job id {job_id!r} is not a non-empty text"
        at = stored.recorded_at
        if at != self._last_time:
            if not is_db_time(at):
                return (
                    f"its recorded_at {at!r} is not a time in the ledger's format "
                    "(like 2026-01-31T12:00:00.000000+00:00, UTC)"
                )
            self._last_time = at
        version = stored.version
        known = self._versions.get(job_id)
        if known is None:
            known = 0 if self._prior is None else self._prior(job_id)
        expected = known + 1
        created = type(stored.event) is ev.JobCreated
        if version != expected:
            if type(version) is not int or version < 1:
                return f"its version {version!r} is not a whole number from 1 up"
            if expected == 1:
                return f"job {job_id} has no created event before it (this is version {version})"
            return (
                f"job {job_id} is at version {expected - 1}, so its next event must be version "
                f"{expected}, not {version} (versions run 1, 2, 3, ... without gaps)"
            )
        if created != (version == 1):
            if created:
                return f"job {job_id} already has a created event (this is version {version})"
            return f"job {job_id} has no created event before it (it starts with this one)"
        problem = _field_problem(stored.event)
        if problem is None:
            self._versions[job_id] = version
        return problem

    def check(self, stored: StoredEvent) -> None:
        problem = self.problem(stored)
        if problem is not None:
            raise UnfoldableEvent(stored.position, ev.tag_of(stored.event), problem)


def _apply(writer: ProjectionWriter, stored: StoredEvent) -> None:
    """``writer.apply``, with a failure of the projection's own code on this event (a value it
    cannot use) reported as this event's fault, by position, instead of a bare Python error."""
    try:
        writer.apply(stored)
    except LedgerError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        why = f"{type(e).__name__}: {e}"
        raise UnfoldableEvent(stored.position, ev.tag_of(stored.event), why) from e


def _version_at(conn: apsw.Connection, position: int, job_id: str) -> int:
    return store.job_version_at(conn, job_id, position)


def fold(
    source: apsw.Connection,
    target: apsw.Connection,
    projections: Sequence[Projection],
    after: int = 0,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Apply the events after ``after`` to the projections in ``target``; (count, last position).

    Each event is checked against the log's rules first (`LogCheck`), so damage made around the
    ledger stops the fold at that event instead of reaching a projection."""
    writers = [p.writer(target) for p in projections]
    total = store.last_position(source) - after if progress else 0
    count, last = 0, after
    checker = LogCheck(None if after == 0 else functools.partial(_version_at, source, after))
    for stored in store.iter_after(source, after):
        checker.check(stored)
        for writer in writers:
            _apply(writer, stored)
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
    """Compare the live projections with a fold of the log, all read from one snapshot.

    Damage is reported, never raised: an event the fold refuses (undecodable, or breaking the
    log's rules), an unreadable log, a missing or reshaped projection table."""
    started = time.perf_counter()
    conn.execute("BEGIN")  # a read transaction: one consistent snapshot of log and tables
    try:
        try:
            scratch, count = scratch_fold(conn, projections)
        except CorruptEvent as e:
            diff = Difference(
                "events", e.position, None, None, None, position=e.position, problem=str(e)
            )
            return VerifyReport(False, 0, 0, [diff], time.perf_counter() - started)
        except apsw.SQLError as e:  # the events table itself is gone or reshaped
            diff = Difference("events", None, None, None, None, problem=f"cannot read it: {e}")
            return VerifyReport(False, 0, 0, [diff], time.perf_counter() - started)
        try:
            differences = _compare_all(conn, scratch, projections)
        finally:
            scratch.close()
        try:
            jobs = int(conn.execute(q.count_statement(False, False)).get)
        except apsw.SQLError:  # no jobs table: reported above
            jobs = 0
    finally:
        conn.execute("COMMIT")
    return VerifyReport(not differences, count, jobs, differences, time.perf_counter() - started)


def _compare_all(
    conn: apsw.Connection, scratch: apsw.Connection, projections: Sequence[Projection]
) -> list[Difference]:
    differences: list[Difference] = []
    head = store.last_position(conn)
    for projection in projections:
        try:
            differences += compare(projection.dump(conn), projection.dump(scratch))
        except apsw.SQLError as e:  # its table is missing or has other columns
            why = f"cannot read the {projection.name} projection ({e}); `ledger replay` rebuilds it"
            differences.append(Difference(projection.tables[0], None, None, None, None, None, why))
        checkpoint = read_checkpoint(conn, projection.name)
        if checkpoint is None or checkpoint[1] != head:
            seen = None if checkpoint is None else checkpoint[1]
            differences.append(
                Difference("projection_checkpoints", projection.name, "position", seen, head)
            )
    return differences


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
