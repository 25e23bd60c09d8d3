"""Replay, catch-up and verify: folding the log through the projections' own fold.

`fold_events` is the one loop all three use: it streams events in position order, checks each
against the log's rules (`logrules.LogCheck`) and folds it with the same `JobsFold` the live
commands use. Replay runs it into the live table inside one write transaction, so a failure (a
corrupt event, damage made around the ledger) leaves the old projection exactly as it was.
Verify folds the whole log in memory inside one read snapshot and compares the result, in the
backend's stored form, with the live rows, so it never writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from projections import jobs as jobs_projection

from .backends.protocol import JobFilter
from .domain import events as ev
from .domain.events import StoredEvent
from .domain.logrules import LogCheck
from .errors import CorruptEvent, CorruptProjection, LedgerError, StorageError, UnfoldableEvent

Progress = Callable[[int, int], None]  # (events done, events in all)
_PROGRESS_EVERY = 10_000
_BATCH = 100_000  # job states kept in memory by a replay before they are written
JOBS = "jobs"  # the jobs projection's name (its checkpoint row)


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


def _apply(fold: jobs_projection.JobsFold, stored: StoredEvent) -> None:
    """``fold.apply``, with a failure of the fold on this event (a value it cannot use)
    reported as this event's fault, by position, instead of a bare Python error."""
    try:
        fold.apply(stored)
    except LedgerError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        why = f"{type(e).__name__}: {e}"
        raise UnfoldableEvent(stored.position, ev.tag_of(stored.event), why) from e


def fold_events(
    stream: Iterable[StoredEvent],
    fold: jobs_projection.JobsFold,
    check: LogCheck,
    *,
    save: Callable[[jobs_projection.JobChanges], None] | None = None,
    progress: Progress | None = None,
    total: int = 0,
    after: int = 0,
) -> tuple[int, int]:
    """Check and fold every event of ``stream``; (count, last position). With ``save``, the
    fold's results are handed to it whenever the fold holds `_BATCH` jobs, and at the end."""
    count, last = 0, after
    for stored in stream:
        check.check(stored)
        _apply(fold, stored)
        count += 1
        last = stored.position
        if save is not None and len(fold) >= _BATCH:
            save(fold.take())
        if progress and count % _PROGRESS_EVERY == 0:
            progress(count, total)
    if save is not None:
        save(fold.take())
    if progress:
        progress(count, total)
    return count, last


def _saver(tx: Any) -> Callable[[jobs_projection.JobChanges], None]:
    return lambda changes: tx.save_jobs(changes.new, changes.changed)


def rebuild(tx: Any, progress: Progress | None = None) -> tuple[int, int]:
    """Drop and refill the jobs projection from the whole log; inside a write transaction."""
    tx.reset_jobs()
    total = tx.last_position() if progress else 0
    fold = jobs_projection.JobsFold(tx.load_job)
    count, last = fold_events(
        tx.iter_events(0), fold, LogCheck(), save=_saver(tx), progress=progress, total=total
    )
    tx.finish_jobs()
    tx.write_checkpoint(JOBS, jobs_projection.JobsProjection.schema_version, last)
    return count, last


def catch_up(tx: Any) -> int:
    """Bring the jobs projection up to the end of the log: rebuild it when its version changed,
    it was never built or its table was lost, else fold only the events after its checkpoint.
    Inside a write transaction; returns how many events were folded."""
    checkpoint = tx.checkpoint(JOBS)
    if (
        checkpoint is None
        or checkpoint[0] != jobs_projection.JobsProjection.schema_version
        or not tx.has_jobs_table()
    ):
        return rebuild(tx)[0]
    after = checkpoint[1]
    if after >= tx.last_position():
        return 0
    tx.ensure_jobs()
    fold = jobs_projection.JobsFold(tx.load_job)
    check = LogCheck(lambda job_id: tx.version_at(job_id, after))
    count, last = fold_events(tx.iter_events(after), fold, check, save=_saver(tx), after=after)
    tx.write_checkpoint(JOBS, jobs_projection.JobsProjection.schema_version, last)
    return count


def verify(snapshot: Any, started: float, clock: Callable[[], float]) -> VerifyReport:
    """Compare the live projection with a fold of the log, all read from one snapshot.

    Damage is reported, never raised: an event the fold refuses (undecodable, or breaking the
    log's rules), an unreadable log, a missing or reshaped projection table."""

    def report(differences: list[Difference], events: int, jobs: int) -> VerifyReport:
        return VerifyReport(not differences, events, jobs, differences, clock() - started)

    fold = jobs_projection.JobsFold()
    try:
        count, _ = fold_events(snapshot.iter_events(0), fold, LogCheck())
    except CorruptEvent as e:
        diff = Difference(
            "events", e.position, None, None, None, position=e.position, problem=str(e)
        )
        return report([diff], 0, 0)
    except StorageError as e:  # the events table itself is gone or reshaped
        return report([Difference("events", None, None, None, None, problem=str(e))], 0, 0)
    rebuilt = {state.id: snapshot.stored_form(state) for state in fold.states()}
    differences: list[Difference] = []
    jobs = 0
    try:
        differences += compare(snapshot.dump_jobs(), rebuilt)
        jobs = snapshot.count_jobs(JobFilter())
    except (StorageError, CorruptProjection) as e:  # missing, reshaped or edited into nonsense
        why = f"cannot read the jobs projection ({e}); `ledger replay` rebuilds it"
        differences.append(Difference(JOBS, None, None, None, None, None, why))
    checkpoint = snapshot.checkpoint(JOBS)
    head = snapshot.last_position()
    if checkpoint is None or checkpoint[1] != head:
        seen = None if checkpoint is None else checkpoint[1]
        differences.append(Difference("projection_checkpoints", JOBS, "position", seen, head))
    return report(differences, count, jobs)


_MISSING = object()


def compare(
    live: Iterable[tuple[str, dict[str, Any]]], rebuilt: dict[str, dict[str, Any]]
) -> list[Difference]:
    """Match rows by key; values must match in type too (1 is not 1.0)."""
    out: list[Difference] = []
    live_rows = dict(live)
    for key in sorted(rebuilt):
        row = rebuilt[key]
        seen = live_rows.pop(key, None)
        if seen is None:
            out.append(Difference(JOBS, key, None, None, row))
            continue
        for column, value in row.items():
            other = seen.get(column, _MISSING)
            if type(other) is not type(value) or other != value:
                out.append(
                    Difference(JOBS, key, column, None if other is _MISSING else other, value)
                )
    for key, row in live_rows.items():
        out.append(Difference(JOBS, key, None, row, None))
    return out
