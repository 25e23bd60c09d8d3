"""Bounded disk without breaking append-only: roll finished jobs into a sealed archive file.

`archive` splits an SQLite ledger in two new files and swaps one of them in for the old one:

- the **archive** (``to``): every event of the jobs that finished (completed, failed, cancelled)
  before the cut, and nothing else: a ledger file of its own, with its own jobs projection
  (replayed from its events), its own hash chain and a ``ledger_segment`` manifest row (role
  ``archive``, the source path, the cut, the source's head). It is sealed: a trigger refuses any
  new event, so it stays exactly as written. ``ledger events/show/verify --db ARCHIVE`` read it.
- the **live segment**, which replaces the ledger's file: every event of every other job (all
  of each one's stream, from its created event on), and every non-job stream (queue pauses,
  chat budgets) whole, so replaying it rebuilds the live jobs, the paused queues and the
  budgets exactly. Its manifest row has role ``live``.

No event is changed or deleted in place: every event of the old file is copied, byte for byte
(its job, version, type, data and time), into exactly one of the two; the old file is then
sealed, marked as replaced and renamed over, never edited row by row. What changes is the
global position: each file is its own gap-free log (law 10) numbered 1, 2, 3, ... in the old
order, with its own hash chain (law 11) from the start. A follower must start again from 0 on
the new file (it had to reopen anyway). Per-job versions (law 4) are unchanged.

A job is archived only with its whole tree (a parent with its subagents, all finished before
the cut), and the jobs of a chat that has a budget stay live (the budget is summed from them).

SQLite only: on PostgreSQL the events live in one table that refuses DELETE, and splitting it
would need deleting rows; `archive` refuses a postgresql:// ledger. The archive takes the file
for itself: it refuses while any other process has the ledger open (stop workers first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from . import rebuild
from .backends.protocol import JobFilter
from .domain import chain
from .domain.state import JobState
from .domain.transitions import FINAL
from .errors import InvalidArgument, LedgerError

Progress = Callable[[int, int], None]
_PAGE = 5_000
_PROGRESS_EVERY = 1_000
LIVE_SUFFIX = ".archiving"  # the new live segment while it is written, next to the ledger


class ArchiveReport(msgspec.Struct, frozen=True):
    """What `Ledger.archive` did: where each part went, how much of it, the sizes."""

    archive: str
    live: str
    cut: datetime
    archived_jobs: int
    archived_events: int
    live_jobs: int
    live_events: int
    size_before: int
    size_after: int
    archive_size: int
    seconds: float


def check_request(target: str, backend_name: str, readonly: bool, to: object) -> str:
    """Refuse, before anything is touched, what `archive` cannot do."""
    if backend_name != "sqlite" or target in ("", ":memory:") or "mode=memory" in target:
        raise InvalidArgument(
            "ledger",
            target.split("@")[-1],
            "archive works on an SQLite ledger file (PostgreSQL cannot split its log without "
            "deleting rows; a :memory: ledger has no disk to bound)",
        )
    if readonly:
        raise InvalidArgument("ledger", target, "is open read-only; open it writable to archive")
    if not isinstance(to, str | os.PathLike):
        raise InvalidArgument("to", to, "expected the path of the new archive file")
    path = os.fspath(to)
    if not isinstance(path, str) or not path:
        raise InvalidArgument("to", to, "expected the path of the new archive file")
    if os.path.abspath(path) == os.path.abspath(target):
        raise InvalidArgument("to", path, "is the ledger itself; name a new file")
    if os.path.exists(path):
        raise InvalidArgument("to", path, "already exists; an archive is always a new file")
    if os.path.exists(target + LIVE_SUFFIX):
        raise LedgerError(
            f"{target + LIVE_SUFFIX} exists: an earlier archive was interrupted. If {target} "
            f"still opens, remove {target + LIVE_SUFFIX}; if it says it was replaced, rename "
            f"{target + LIVE_SUFFIX} to {target}"
        )
    return path


def check_age(older_than: object) -> timedelta:
    if not isinstance(older_than, timedelta) or older_than < timedelta(0):
        raise InvalidArgument("older_than", older_than, "expected a timedelta of 0 or more")
    return older_than


def choose(states: Iterable[JobState], cut: datetime, budgeted: set[int]) -> set[str]:
    """The jobs to archive: finished before ``cut``, with every job of their tree too, and not
    of a chat with a budget."""
    by_id = {s.id: s for s in states}

    def root(state: JobState) -> str:
        seen = state
        while (parent := getattr(seen, "parent_id", None)) is not None and parent in by_id:
            seen = by_id[parent]
        return seen.id

    def done(state: JobState) -> bool:
        return (
            state.status in FINAL
            and state.completed_at is not None
            and state.completed_at < cut
            and state.chat_id not in budgeted
        )

    trees: dict[str, list[JobState]] = {}
    for state in by_id.values():
        trees.setdefault(root(state), []).append(state)
    return {s.id for tree in trees.values() if all(map(done, tree)) for s in tree}


def _streams(snapshot: Any) -> tuple[set[int], int, str | None]:
    """(chats with a budget stream, the last position, its chain hash) of the old file."""
    budgeted: set[int] = set()
    head: tuple[int, str | None] = (0, None)
    after = 0
    while True:
        page = snapshot.export_rows(after, _PAGE)
        for row in page:
            stream = row[1]
            if stream.startswith("chat:") and stream[5:].lstrip("-").isdigit():
                budgeted.add(int(stream[5:]))
            head = (row[0], row[6] if len(row) > 6 else None)
        if len(page) < _PAGE:
            return budgeted, head[0], head[1]
        after = page[-1][0]


class _Copier:
    """Appends the rows it is given to one new file, renumbered 1, 2, 3, ... and chained."""

    def __init__(self, tx: Any, stored_time: Callable[[int, str, object], datetime]) -> None:
        self.tx = tx
        self.position = 0
        self.previous = chain.GENESIS
        self._time = stored_time

    def add(self, row: Any) -> None:
        _, job_id, version, event_type, data, recorded_at = row[:6]
        data_bytes = data if isinstance(data, bytes) else str(data).encode()
        self.position += 1
        self.previous = chain.link(
            self.previous, self.position, job_id, version, event_type, data_bytes, recorded_at
        )
        moment = self._time(row[0], event_type, recorded_at)
        self.tx.insert_exact(
            self.position,
            job_id,
            version,
            event_type,
            data_bytes.decode(),
            moment,
            self.previous.hex(),
        )


def split(
    snapshot: Any,
    archived: set[str],
    archive_tx: Any,
    live_tx: Any,
    total: int,
    progress: Progress | None,
) -> tuple[int, int]:
    """Copy every event of the old file into exactly one of the two new files, in order."""
    from .backends.sqlite.events_table import stored_time

    to_archive, to_live = _Copier(archive_tx, stored_time), _Copier(live_tx, stored_time)
    done, after = 0, 0
    while True:
        page = snapshot.export_rows(after, _PAGE)
        for row in page:
            (to_archive if row[1] in archived else to_live).add(row)
            done += 1
            if progress and done % _PROGRESS_EVERY == 0:
                progress(done, total)
        if len(page) < _PAGE:
            break
        after = page[-1][0]
    if progress:
        progress(done, total)
    return to_archive.position, to_live.position


def run(
    target: str,
    older_than: timedelta,
    to: str,
    now: datetime,
    busy_timeout_ms: int,
    progress: Progress | None = None,
) -> ArchiveReport:
    """Archive the ledger file ``target`` (closed by the caller) into ``to``; see the module
    docstring. Refuses, writing nothing, while another process has the ledger open."""
    from .backends.sqlite import SqliteBackend, segments

    started = time.perf_counter()
    cut = now - older_than
    size_before = os.path.getsize(target)
    live_path = target + LIVE_SUFFIX
    hold = segments.Exclusive(target, busy_timeout_ms)
    made: list[str] = []
    try:
        snapshot = hold.snapshot()
        budgeted, head_position, head_hash = _streams(snapshot)
        states = snapshot.jobs(JobFilter(order="oldest"))
        archived = choose(states, cut, budgeted)
        new = {}
        for path in (to, live_path):
            made.append(path)
            new[path] = SqliteBackend(path, busy_timeout_ms=busy_timeout_ms)
        try:
            counts = new[to].write(
                f"writing the archive {to}",
                lambda atx: new[live_path].write(
                    f"writing the new segment {live_path}",
                    lambda ltx: _fill(snapshot, archived, atx, ltx, head_position, progress),
                ),
            )
        finally:
            for backend in new.values():
                backend.close()
        archived_events, live_events = counts
        for path, role, events, jobs in (
            (to, "archive", archived_events, len(archived)),
            (live_path, "live", live_events, len(states) - len(archived)),
        ):
            segments.finish_file(
                path,
                role=role,
                source=os.path.abspath(target),
                cut=cut,
                made_at=now,
                source_head=(head_position, head_hash),
                events=events,
                jobs=jobs,
                busy_timeout_ms=busy_timeout_ms,
            )
        _check_new(to, live_path, archived_events + live_events, head_position)
        hold.seal_and_commit()  # the old file: no process still holding it can add to it
        segments.replace(live_path, target)
        made = [to]
    except BaseException:
        for path in made:
            for leftover in (path, *segments.leftovers(path)):
                if os.path.exists(leftover):
                    os.remove(leftover)
        raise
    finally:
        hold.close()
    return ArchiveReport(
        archive=to,
        live=target,
        cut=cut,
        archived_jobs=len(archived),
        archived_events=archived_events,
        live_jobs=len(states) - len(archived),
        live_events=live_events,
        size_before=size_before,
        size_after=os.path.getsize(target),
        archive_size=os.path.getsize(to),
        seconds=time.perf_counter() - started,
    )


def _fill(
    snapshot: Any,
    archived: set[str],
    archive_tx: Any,
    live_tx: Any,
    total: int,
    progress: Progress | None,
) -> tuple[int, int]:
    counts = split(snapshot, archived, archive_tx, live_tx, total, progress)
    rebuild.rebuild(archive_tx)
    rebuild.rebuild(live_tx)
    return counts


def _check_new(archive: str, live: str, copied: int, head: int) -> None:
    """Both new files verify green, and together they hold every event of the old one."""
    from .api import Ledger

    if copied != head:
        raise LedgerError(
            f"archiving copied {copied} events but the ledger holds {head} (its positions have "
            "gaps: was it changed around the ledger?); nothing was changed"
        )
    for path in (archive, live):
        with Ledger(path, readonly=True) as ledger:
            report = ledger.verify()
        if not report.ok:
            raise LedgerError(
                f"the new file {path} does not verify ({report.differences[0]}); nothing was "
                "changed: this is a bug, please report it"
            )
