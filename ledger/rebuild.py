"""Replay, catch-up and verify: folding the log through the projections' own fold.

`fold_events` is the one loop all three use: it streams events in position order, checks each
against the log's rules (`logrules.LogCheck`) and folds it with the same `JobsFold` the live
commands use. Replay runs it into the live table inside one write transaction, so a failure (a
corrupt event, damage made around the ledger) leaves the old projection exactly as it was.
Verify folds the whole log in memory inside one read snapshot and compares the result, in the
backend's stored form, with the live rows, so it never writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import msgspec

from projections import jobs as jobs_projection
from projections.budgets import FIELDS as BUDGET_FIELDS
from projections.queues import FIELDS as QUEUE_FIELDS

from .backends.protocol import JobFilter
from .domain import chain
from .domain import events as ev
from .domain.events import StoredEvent
from .domain.logrules import ATTEMPT_ONLY, LogCheck
from .domain.validate import INT64_MAX, INT64_MIN
from .errors import (
    CorruptEvent,
    CorruptProjection,
    LedgerError,
    StorageError,
    UnfoldableEvent,
)

Progress = Callable[[int, int], None]  # (events done, events in all)
_PROGRESS_EVERY = 10_000
_BATCH = 20_000  # job states kept in memory by a replay before they are written (~1 KB each)
_SIZE_EVERY = 1000  # events between two looks at how many states the fold holds
JOBS = "jobs"  # the jobs projection's name (its checkpoint row)
QUEUES = "queues"  # the queues projection (its rows are folded and checkpointed with the jobs)
BUDGETS = "budgets"  # the budgets projection (the same: folded and checkpointed with the jobs)


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


_FOLD_ERRORS = (ValueError, TypeError, KeyError, OverflowError)


def _inline_types() -> frozenset[type]:
    """Activity events whose one checked field is ``attempt``: `fold_events` checks and folds
    them inline (most of a log). Worked out at a fold, not at import: importing `projections`
    first imports the domain, and through the package this module, while `projections.jobs` is
    still half-built (an import-time use of it failed there)."""
    return jobs_projection.ACTIVITY_TYPES & ATTEMPT_ONLY


def _unfoldable(stored: StoredEvent, e: Exception) -> UnfoldableEvent:
    """A failure of the fold on this event (a value it cannot use), reported as this event's
    fault, by position, instead of a bare Python error."""
    why = f"{type(e).__name__}: {e}"
    return UnfoldableEvent(stored.position, ev.tag_of(stored.event), why)


def fold_events(
    stream: Iterable[StoredEvent],
    fold: jobs_projection.JobsFold,
    check: LogCheck,
    *,
    save: Callable[[jobs_projection.JobsFold], None] | None = None,
    progress: Progress | None = None,
    total: int = 0,
    after: int = 0,
) -> tuple[int, int]:
    """Check and fold every event of ``stream``; (count, last position). With ``save``, the
    fold is handed to it to write out whenever it holds about `_BATCH` jobs (looked at every
    `_SIZE_EVERY` events), and at the end. The loop of every replay: its per-event work is
    kept to the check and the fold themselves, and the commonest event, the next activity
    event of a job created in this batch, is checked and folded inline, without their calls,
    exactly as `LogCheck.problem` and `JobsFold.apply` would (`LogCheck.known`,
    `JobsFold.touch_new`; tests/test_replay_inline.py)."""
    count = 0
    stored: StoredEvent | None = None
    problem = check.problem
    apply = fold.apply
    known = check.known
    new, touched = fold.touch_new()
    inline = _inline_types()
    every = _SIZE_EVERY if progress is None else math.gcd(_SIZE_EVERY, _PROGRESS_EVERY)
    numbered = enumerate(stream, 1)
    try:
        while True:  # ``every`` events at a time: no test per event (and the count is enumerate's)
            before = count
            for count, stored in islice(numbered, every):  # noqa: B007 (read after the loop)
                event = stored.event
                if type(event) in inline:
                    job_id = stored.job_id
                    last = known.get(job_id)
                    if last is not None and job_id in new:
                        version = stored.version
                        if version == last + 1:
                            attempt = event.attempt  # type: ignore[attr-defined]
                            if attempt is None or (
                                type(attempt) is int and INT64_MIN <= attempt <= INT64_MAX
                            ):
                                known[job_id] = version
                                touched[job_id] = (version, stored.recorded_at)
                                continue
                why = problem(stored)
                if why is not None:
                    raise UnfoldableEvent(stored.position, ev.tag_of(stored.event), why)
                try:
                    apply(stored)
                except LedgerError:
                    raise
                except _FOLD_ERRORS as e:
                    raise _unfoldable(stored, e) from e
            if count - before < every:
                break
            if save is not None and len(fold) >= _BATCH:
                save(fold)
            if progress and count % _PROGRESS_EVERY == 0:
                progress(count, total)
        if save is not None:
            save(fold)
        if progress:
            progress(count, total)
        return count, after if stored is None else stored.position
    finally:  # a scan left open on a refusal is closed here, under the write lock, not by
        close = getattr(stream, "close", None)  # whichever thread frees the traceback
        if close is not None:
            close()


def write_fold(tx: Any, fold: jobs_projection.JobsFold) -> None:
    """Hand what ``fold`` computed (queue states, chat budgets, job rows) to the write
    transaction ``tx`` and forget it: the one way a fold's results reach a backend, for live
    commands, replay and catch-up alike."""
    queues = fold.queues.take()  # before flush_to, which forgets every cached state
    if queues:
        tx.save_queues(queues)
    budgets = fold.budgets.take()
    if budgets:
        tx.save_budgets(budgets)
    fold.flush_to(tx.save_jobs)


def _saver(tx: Any) -> Callable[[jobs_projection.JobsFold], None]:
    return lambda fold: write_fold(tx, fold)


def rebuild(tx: Any, progress: Progress | None = None) -> tuple[int, int]:
    """Drop and refill the jobs projection from the whole log; inside a write transaction."""
    tx.reset_jobs()
    tx.reset_queues()
    tx.reset_budgets()
    total = tx.last_position() if progress else 0
    fold = jobs_projection.JobsFold(tx.load_job, tx.load_queue, tx.load_budget)
    count, last = fold_events(
        tx.iter_events(0), fold, LogCheck(), save=_saver(tx), progress=progress, total=total
    )
    tx.finish_jobs()
    tx.write_checkpoint(JOBS, jobs_projection.JobsProjection.schema_version, last)
    return count, last


def stale_projection(snapshot: Any) -> str | None:
    """For a read-only open: why the jobs projection cannot be read, when another release built
    it (its columns differ), else None. The log still reads; a read of jobs then fails with this
    in words. Opening it once read-write rebuilds it; a read-only open never writes."""
    checkpoint = snapshot.checkpoint(JOBS)
    expected = jobs_projection.JobsProjection.schema_version
    if checkpoint is None or checkpoint[0] == expected:
        return None
    return (
        f"this ledger's jobs projection has version {checkpoint[0]} and this release reads "
        f"version {expected}: open it once for writing to rebuild it from the log (for "
        "example `ledger replay --db PATH`), then read it again"
    )


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
    fold = jobs_projection.JobsFold(tx.load_job, tx.load_queue, tx.load_budget)
    check = LogCheck(lambda job_id: tx.version_at(job_id, after))
    count, last = fold_events(tx.iter_events(after), fold, check, save=_saver(tx), after=after)
    tx.write_checkpoint(JOBS, jobs_projection.JobsProjection.schema_version, last)
    return count


def verify_chain(snapshot: Any, expect_head: tuple[int, str] | None = None) -> list[Difference]:
    """Recompute the hash chain (`domain.chain`) over the whole log: the first position where
    it breaks (an edit, a deletion, a missing hash), and, with ``expect_head`` (a head recorded
    earlier), whether the log still extends it (not truncated below it, not rewritten).

    Each problem is a `Difference` of table ``events`` keyed by the position, with column
    ``hash`` (the chain breaks there) or ``head`` (the recorded head is not extended) and the
    ``problem`` saying what; its ``position`` stays None, which means "an event the fold
    refuses" elsewhere in the report (the fold may well accept an edited event)."""
    walker = chain.Walker()
    out: list[Difference] = []
    start = snapshot.checkpoint(chain.START)
    try:
        for row in snapshot.chain_rows(0):
            if expect_head is not None and walker.position == expect_head[0]:
                break  # the recorded head is checked below; the rest of the chain after it too
            if walker.position == 0 and start is not None and row[0] == start[1]:
                walker.anchor(row)
                continue
            walker.step(row)
    except chain.Break as e:
        out.append(Difference("events", e.position, "hash", None, None, None, e.what))
        if expect_head is not None and e.position is not None and e.position <= expect_head[0]:
            out.append(_head_difference(expect_head, f"the chain breaks at {e.position} first"))
        return out
    except StorageError as e:
        return [Difference("events", None, "hash", None, None, problem=str(e))]
    if expect_head is not None:
        position, digest = expect_head
        if walker.position < position:
            why = f"the log ends at position {walker.position}: truncated (events deleted)"
            out.append(_head_difference(expect_head, why))
        elif walker.head_hex != digest:
            why = f"position {position} now hashes to {walker.head_hex}: rewritten"
            out.append(_head_difference(expect_head, why))
        else:
            out += verify_chain_after(snapshot, walker)
    return out


def verify_chain_after(snapshot: Any, walker: chain.Walker) -> list[Difference]:
    """The rest of the chain after a recorded head that matched."""
    try:
        for row in snapshot.chain_rows(walker.position):
            walker.step(row)
    except chain.Break as e:
        return [Difference("events", e.position, "hash", None, None, None, e.what)]
    return []


def _head_difference(expect_head: tuple[int, str], why: str) -> Difference:
    position, digest = expect_head
    problem = f"the log no longer extends the recorded head {position}:{digest}: {why}"
    return Difference("events", position, "head", digest, None, None, problem)


def verify(
    snapshot: Any,
    started: float,
    clock: Callable[[], float],
    expect_head: tuple[int, str] | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Compare the live projection with a fold of the log, all read from one snapshot, and
    recompute the log's hash chain (`verify_chain`). ``progress``: called with (events folded,
    events in all) as the fold goes.

    Damage is reported, never raised: an event the fold refuses (undecodable, or breaking the
    log's rules), an unreadable log, a missing or reshaped projection table, a broken chain."""
    broken = verify_chain(snapshot, expect_head)

    def report(differences: list[Difference], events: int, jobs: int) -> VerifyReport:
        differences = differences + broken  # the fold's findings first, as before
        return VerifyReport(not differences, events, jobs, differences, clock() - started)

    fold = jobs_projection.JobsFold()
    try:
        total = snapshot.last_position() if progress else 0
        count, _ = fold_events(
            snapshot.iter_events(0), fold, LogCheck(), progress=progress, total=total
        )
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
    differences += compare_queues(snapshot, fold)
    differences += compare_budgets(snapshot, fold)
    checkpoint = snapshot.checkpoint(JOBS)
    head = snapshot.last_position()
    if checkpoint is None or checkpoint[1] != head:
        seen = None if checkpoint is None else checkpoint[1]
        differences.append(Difference("projection_checkpoints", JOBS, "position", seen, head))
    return report(differences, count, jobs)


def compare_queues(snapshot: Any, fold: jobs_projection.JobsFold) -> list[Difference]:
    """The queues projection against the fold of the queues' streams, queue by queue."""
    try:
        live = {s.queue: s for s in snapshot.queue_states()}
    except (StorageError, CorruptProjection) as e:
        why = f"cannot read the queues projection ({e}); `ledger replay` rebuilds it"
        return [Difference(QUEUES, None, None, None, None, None, why)]
    rebuilt = {s.queue: s for s in fold.queues.states()}
    out = []
    for queue in sorted(live.keys() | rebuilt.keys()):
        seen, want = live.get(queue), rebuilt.get(queue)
        if seen is None or want is None:
            out.append(Difference(QUEUES, queue, None, _row(seen), _row(want)))
            continue
        for column in QUEUE_FIELDS:
            if getattr(seen, column) != getattr(want, column):
                out.append(
                    Difference(QUEUES, queue, column, getattr(seen, column), getattr(want, column))
                )
    return out


def compare_budgets(snapshot: Any, fold: jobs_projection.JobsFold) -> list[Difference]:
    """The budgets projection against the fold of the chats' streams, chat by chat."""
    try:
        live = {s.chat_id: s for s in snapshot.budget_states()}
    except (StorageError, CorruptProjection) as e:
        why = f"cannot read the budgets projection ({e}); `ledger replay` rebuilds it"
        return [Difference(BUDGETS, None, None, None, None, None, why)]
    rebuilt = {s.chat_id: s for s in fold.budgets.states()}
    out = []
    for chat in sorted(live.keys() | rebuilt.keys()):
        seen, want = live.get(chat), rebuilt.get(chat)
        if seen is None or want is None:
            out.append(Difference(BUDGETS, chat, None, _row(seen), _row(want)))
            continue
        for column in BUDGET_FIELDS:
            if getattr(seen, column) != getattr(want, column):
                out.append(
                    Difference(BUDGETS, chat, column, getattr(seen, column), getattr(want, column))
                )
    return out


def _row(state: Any) -> dict[str, Any] | None:
    return None if state is None else msgspec.to_builtins(state)


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
