"""The storage seam: what the ledger's service needs from a database, and nothing more.

A backend owns one database holding a ledger: the append-only event table, the projection
tables and their checkpoints. It holds all of that database's SQL; the service above it speaks
only in domain types (`JobState`, `StoredEvent`, event Structs) and never learns which database
it runs on. Each backend lives in its own package (`ledger.backends.sqlite`,
`ledger.backends.postgres`) and is chosen by `ledger.backends.open_backend` from the target.

The contract, which the contract suite (``tests/contract``) checks on every backend:

- `Backend.write` runs a function in ONE write transaction: it commits when the function
  returns and rolls back when it raises, re-raising the error (database errors become the
  ledger's own `LedgerError` subclasses, chained with ``from``). Inside it, the function reads
  current state (`WriteTransaction.load_job`), appends events with the version it expects
  (`append`: a stale version raises `ConcurrencyError`, and global positions come out gap-free
  and in commit order), writes the projection rows the fold computed (`save_jobs`) and moves the
  checkpoint. Transactions of one backend object are serialised; the backend may run them from
  any thread.
- `Backend.read` runs a function against one consistent snapshot, which never sees a
  half-committed command. Reads from several threads may run in parallel.
- `claimable` picks the next job a claim may take and keeps any other transaction from taking
  it before this one commits (SQLite: the write lock of ``BEGIN IMMEDIATE``; PostgreSQL:
  ``FOR UPDATE SKIP LOCKED``, so claimers never wait for each other).
- `wait_for_change` blocks until the database may hold something new, or the timeout passes:
  SQLite polls ``PRAGMA data_version``; PostgreSQL wakes on ``LISTEN``/``NOTIFY``. Callers always
  re-check what they wait for, so a spurious wake-up is harmless.

An asyncio twin of this protocol has the same methods as coroutines; the service's rules are
plain functions over the domain types, so both faces share them instead of copying them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec

from ..domain.events import Event, StoredEvent
from ..domain.model import JobStatus
from ..domain.state import JobState

T = TypeVar("T")

# (position, job_id, version, type, data, recorded_at): an event as stored, not yet decoded.
EventRow = tuple[int, str, int, str, str, datetime]


class JobFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which jobs a read wants, in which order. ``order``: ``newest`` (created, newest first),
    ``oldest`` (created, oldest first), ``started`` (longest-running first), ``finished``
    (latest finished first)."""

    statuses: tuple[JobStatus, ...] | None = None
    chat_id: int | None = None
    queue: str | None = None
    order: str = "newest"
    limit: int | None = None


class JobChanges(msgspec.Struct, frozen=True):
    """What a fold computed in one transaction: new jobs (in creation order) and, for each
    existing job touched, its new state and the names of the fields that changed."""

    new: list[JobState]
    changed: list[tuple[JobState, tuple[str, ...]]]


class Snapshot(Protocol):
    """Reads, all from one consistent snapshot of the database."""

    def job(self, job_id: str) -> JobState | None: ...

    def job_ids_with_prefix(self, prefix: str, limit: int) -> list[str]: ...

    def jobs(self, where: JobFilter) -> list[JobState]: ...

    def count_jobs(self, where: JobFilter) -> int: ...

    def last_position(self) -> int: ...

    def events_after(self, after: int, limit: int | None) -> Iterable[EventRow]: ...

    def job_events(self, job_id: str, types: Sequence[str] | None) -> Iterable[EventRow]: ...

    def chat_events(
        self, chat_id: int, limit: int, types: Sequence[str] | None, exclude: Sequence[str]
    ) -> Iterable[EventRow]: ...

    def job_counts(self) -> list[tuple[str, str, int]]:
        """(status, queue, jobs) for every pair that has jobs."""
        ...

    def finished_since(self, since: datetime) -> dict[str, int]: ...

    def completed_durations(self) -> list[int]:
        """Durations of completed jobs, in ascending order."""
        ...

    def total_cost(self) -> float: ...


class WriteTransaction(Snapshot, Protocol):
    """One open write transaction; everything done through it commits or rolls back as one."""

    def load_job(self, job_id: str) -> JobState | None:
        """The job's current state, to decide on (PostgreSQL locks the row)."""
        ...

    def append(
        self, job_id: str, expected_version: int, events: Sequence[Event], at: datetime
    ) -> list[StoredEvent]:
        """Append after ``expected_version``; `ConcurrencyError` when the job moved on."""
        ...

    def save_jobs(self, changes: JobChanges) -> None: ...

    def set_checkpoint(self, name: str, position: int) -> None: ...

    def claimable(self, now: datetime, queues: Sequence[str] | None) -> str | None: ...

    def expired_leases(self, now: datetime, limit: int | None) -> list[str]: ...

    def job_with_key(self, idempotency_key: str) -> str | None: ...


class Backend(Protocol):
    """One database holding a ledger."""

    target: str  # what it was opened from (path or URL), for messages
    readonly: bool

    def write(self, doing: str, work: Callable[[WriteTransaction], T]) -> T: ...

    def read(self, doing: str, work: Callable[[Snapshot], T]) -> T: ...

    def iter_events(self, after: int = 0) -> Iterator[StoredEvent]:
        """The whole log after ``after``, decoded, in position order (replay, verify)."""
        ...

    def rebuild(self, doing: str, before: Callable[[WriteTransaction], Any], fold: Any) -> Any: ...

    def wait_for_change(self, timeout: float) -> bool: ...

    def close(self) -> None: ...
