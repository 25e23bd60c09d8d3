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
- `Backend.wait_for_change` is how followers and waiting workers sleep: it returns when the
  database may hold something new (SQLite polls ``PRAGMA data_version`` every few milliseconds;
  PostgreSQL wakes on ``LISTEN``/``NOTIFY``) or when the timeout passed. Callers always re-check
  what they wait for, so a spurious wake-up is harmless, and keep their own poll interval as the
  upper bound of one wait.

An asyncio twin of this protocol has the same methods as coroutines; the service's rules are
plain functions over the domain types, so both faces share them instead of copying them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeVar

import msgspec

from projections.queues import QueueState

from ..domain.chain import ChainRow
from ..domain.events import Event, StoredEvent
from ..domain.model import JobStatus
from ..domain.state import JobState

T = TypeVar("T")

# (position, job_id, version, type, data, recorded_at): an event as stored, not yet decoded.
EventRow = tuple[int, str, int, str, str, datetime]


class ClaimLooks(NamedTuple):
    """What a claim looks at before it decides (`WriteTransaction.before_claim`)."""

    expired: list[str]
    """The jobs whose leases expired (`expired_leases`)."""
    holders: list[tuple[str, int, int]]
    """The processes holding running jobs on the claimer's host (`held_on`)."""
    job_id: str | None
    """The job `claimable` gives as things stand, when ``settled``."""
    settled: bool
    """False: the best job could not be told without a lock that must wait until after the
    rescue (a budget row, when anything may be rescued): the claim asks `claimable`."""


class JobFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which jobs a read wants, in which order. ``order``: ``newest`` (created, newest first),
    ``oldest`` (created, oldest first), ``started`` (longest-running first), ``finished``
    (latest finished first)."""

    statuses: tuple[JobStatus, ...] | None = None
    chat_id: int | None = None
    queue: str | None = None
    order: str = "newest"
    limit: int | None = None


class Snapshot(Protocol):
    """Reads, all from one consistent snapshot of the database (a read transaction)."""

    # jobs (the jobs projection)
    def job(self, job_id: str) -> JobState | None: ...

    def job_ids_with_prefix(self, prefix: str, limit: int) -> list[str]: ...

    def jobs(self, where: JobFilter) -> list[JobState]: ...

    def count_jobs(self, where: JobFilter) -> int: ...

    def job_counts(self) -> list[tuple[str, str, int]]:
        """(status, queue, jobs) for every pair that has jobs, ordered by both."""
        ...

    def finished_since(self, since: datetime) -> dict[str, int]:
        """status -> jobs that ended at or after ``since``."""
        ...

    def completed_durations(self) -> list[int]:
        """Durations of completed jobs, in ascending order."""
        ...

    def total_cost(self) -> float: ...

    # the dashboard's and the metrics' reads
    def search_jobs(
        self, where: JobFilter, text: str | None, offset: int, limit: int
    ) -> list[JobState]:
        """Jobs matching ``where`` (its ``limit`` ignored) whose id, config text, user, result
        summary or error message contains ``text`` (ASCII letters in any case), in
        ``where.order``, skipping ``offset`` and returning at most ``limit``."""
        ...

    def search_totals(self, where: JobFilter, text: str | None) -> tuple[int, float]:
        """(how many jobs `search_jobs` matches in all, the sum of their costs in cents)."""
        ...

    def oldest_pending_by_queue(self) -> dict[str, datetime]:
        """queue -> creation time of its oldest pending job (queues with pending jobs only)."""
        ...

    def cost_by_chat(self) -> dict[int, float]:
        """chat -> total cost in cents of its jobs that recorded one."""
        ...

    def queue_waits(self) -> list[float]:
        """Seconds each started job waited, from when it last became claimable (created, or its
        ``run_at`` if later) to when its latest attempt started, ascending."""
        ...

    def event_type_counts(self) -> dict[str, int]:
        """event type -> how many events of it the log holds."""
        ...

    # the log
    def last_position(self) -> int: ...

    def events_after(self, after: int, limit: int | None) -> list[EventRow]: ...

    def job_events(self, job_id: str, types: Sequence[str] | None) -> list[EventRow]: ...

    def chat_events(
        self, chat_id: int, limit: int, types: Sequence[str] | None, exclude: Sequence[str]
    ) -> list[EventRow]:
        """A chat's events, newest first, of ``types`` (None: all) but not of ``exclude``."""
        ...

    def export_rows(self, after: int, limit: int) -> list[tuple[int, str, int, str, Any, Any, Any]]:
        """Events exactly as stored (data as its JSON text or its bytes), with their chain hash
        (None before the chain existed), for export; the time may be the canonical text
        (`domain.timeutil.to_text`) or an aware datetime."""
        ...

    def chain_rows(self, after: int = 0) -> Iterator[ChainRow]:
        """The log after ``after`` in position order as the chain hashes it (`domain.chain`):
        data as its stored bytes, the time as its canonical text, the stored hash or None."""
        ...

    def head(self) -> tuple[int, str]:
        """(last position, its chain hash as hex); (0, the genesis hash) for an empty log."""
        ...

    def held_on(self, host: str) -> list[tuple[str, int, int]]:
        """(boot id, pid, process start) of every process whose claims of running jobs
        recorded a holder on ``host`` (`ledger.holder`): one row per process, not per job."""
        ...

    def held_by(self, host: str, holder: tuple[Any, Any, Any]) -> list[str]:
        """The running jobs one such process (boot id, pid, start) holds on ``host``."""
        ...

    # replay and verify
    def iter_events(self, after: int = 0) -> Iterator[StoredEvent]:
        """The log after ``after``, decoded, in position order; a stored time that is not one
        the ledger writes raises `UnfoldableEvent`, a missing table `StorageError`."""
        ...

    def version_at(self, job_id: str, position: int) -> int:
        """A job's version as of ``position`` (0: none of its events up to there)."""
        ...

    def checkpoint(self, name: str) -> tuple[int, int] | None:
        """(schema version, position) of a projection, or None when it was never built."""
        ...

    def has_jobs_table(self) -> bool: ...

    # queues (the queues projection: projections/queues.py)
    def queue_states(self) -> list[QueueState]:
        """Every queue an operator acted on, by name."""
        ...

    def paused_queues(self) -> list[str]:
        """The names of the paused queues, sorted."""
        ...

    def dump_jobs(self) -> list[tuple[str, dict[str, Any]]]:
        """Every jobs row as stored, as (id, {column: value}); `StorageError` when unreadable."""
        ...

    def stored_form(self, state: JobState) -> dict[str, Any]:
        """``state`` as `dump_jobs` would show its row (verify compares the two)."""
        ...


class WriteTransaction(Snapshot, Protocol):
    """One open write transaction; everything done through it commits or rolls back as one."""

    def load_job(self, job_id: str) -> JobState | None:
        """The job's current state, to decide on (PostgreSQL locks the row)."""
        ...

    def lock_subtree(self, job_id: str) -> None:
        """Before a cascade loads ``job_id``: lock it and the jobs below it in the lock order
        (`lock_jobs`; a backend with row locks; SQLite's one writer needs none). A cascade
        that locked the root first and then waited for a child held by a charge, which waited
        for the root (its cost's roll-up), was a deadlock (PostgreSQL broke it after a
        second)."""
        ...

    def lock_found_below(self, job_ids: Sequence[str]) -> None:
        """Jobs a cascade found below its root: lock those `lock_subtree` did not take
        (created meanwhile, by a transaction that held a job of the subtree) without waiting,
        as they come after their ancestors, out of the lock order; one that another
        transaction holds makes the whole transaction run again, when `lock_subtree` takes it
        in order (a backend with row locks)."""
        ...

    def lock_jobs(self, job_ids: Sequence[str], *, ancestors: bool = False) -> None:
        """Before a command loads several jobs (a batch's parents, a batch's jobs): lock them
        (``ancestors``: and every ancestor of theirs) in the lock order (a backend with row
        locks). The lock order of every write is job rows newest first, then budget rows: a
        job is created after its parent, so each job's row comes before its ancestors', the
        order a charge or a costed completion takes them in (its job, then each ancestor whose
        subtree cost it moves, then its chat's budget). Two writes that lock rows in one order
        never wait for each other in a cycle."""
        ...

    def append(
        self, job_id: str, expected_version: int, events: Sequence[Event], at: datetime
    ) -> list[StoredEvent]:
        """Append after ``expected_version``: `ConcurrencyError` when the job moved on. The
        returned events carry their positions (gap-free, in commit order), or stand-ins below
        zero (-1, -2, ... in append order) that the backend itself turns into the real ones when
        it writes jobs rows and checkpoints (PostgreSQL: positions are handed out at COMMIT, so
        the log's head is never held while Python works). Callers fold them and pass them to
        `advance_checkpoint`; nothing else. The ConcurrencyError may then come at the commit."""
        ...

    def save_jobs(
        self, new: Sequence[JobState], changed: Sequence[tuple[JobState, tuple[str, ...]]]
    ) -> None:
        """Insert ``new`` (in order) and write the named fields of each changed state."""
        ...

    def advance_checkpoint(self, name: str, position: int) -> None:
        """A live command folded everything up to ``position``, the head it appended. (SQLite
        records that as LIVE, in step with the log, once; `checkpoint` then reads the head.)"""
        ...

    def write_checkpoint(self, name: str, schema_version: int, position: int) -> None: ...

    def claimable(self, now: datetime, queues: Sequence[str] | None) -> str | None:
        """The best pending job (priority, then age) claimable at ``now``, kept from every
        other transaction until this one ends (PostgreSQL: ``FOR UPDATE SKIP LOCKED``)."""
        ...

    def expired_leases(self, now: datetime, limit: int | None) -> list[str]: ...

    def before_claim(
        self,
        now: datetime,
        limit: int,
        holder: tuple[str, str, int, int] | None,
        queues: Sequence[str] | None,
    ) -> ClaimLooks:
        """What a claim looks at before it decides, in one look: the expired leases
        (`expired_leases`), the processes holding running jobs on the claimer's host
        (`held_on`; ``holder``: the claimer's host, boot id, pid and start; none looked for
        when None) and the job `claimable` would give as things stand.
        A backend with round trips sends the three queries together (PostgreSQL: one wait
        where there were three). A claim that then rescues anything, or whose look is not
        ``settled``, asks `claimable` again, after its writes."""
        ...

    def job_with_key(self, idempotency_key: str) -> str | None: ...

    def load_queue(self, queue: str) -> QueueState | None:
        """A queue's current state, to decide on (PostgreSQL locks the row)."""
        ...

    def save_queues(self, states: Sequence[QueueState]) -> None:
        """Insert or replace the rows of these queue states."""
        ...

    def reset_queues(self) -> None:
        """Empty the queues projection for a rebuild."""
        ...

    # replay and import
    def reset_jobs(self) -> None:
        """Empty the jobs projection for a rebuild (indexes may wait for `finish_jobs`)."""
        ...

    def ensure_jobs(self) -> None: ...

    def finish_jobs(self) -> None: ...

    def insert_exact(
        self,
        position: int,
        job_id: str,
        version: int,
        event_type: str,
        data: str,
        recorded_at: datetime,
        digest: str | None = None,
    ) -> None:
        """One imported event with its own position and chain hash, which the import checked
        (into an empty log only)."""
        ...


class Backend(Protocol):
    """One database holding a ledger. Opening it creates or checks its schema; the service then
    brings the projections up to date (`rebuild.catch_up`) in a first write transaction."""

    name: str  # "sqlite", "postgres"
    target: str  # what it was opened from (path or URL), for messages
    readonly: bool

    def write(
        self, doing: str, work: Callable[[WriteTransaction], T], *, job: str | None = None
    ) -> T:
        """Run ``work`` in a write transaction (shared with other callers' commands: group
        commit) and return its result once durable. ``job``: the job ``work`` loads first,
        when the caller knows it; a backend may read it ahead, together with other waiting
        commands' (PostgreSQL: one round trip for many)."""
        ...

    def read(self, doing: str, work: Callable[[Snapshot], T], *, single: bool = False) -> T:
        """``single``: the work runs one statement (a statement is its own snapshot, so a
        backend may skip opening a read transaction)."""
        ...

    def wait_for_change(self, timeout: float) -> bool:
        """Block until the database may hold something new (a commit by any connection, this
        backend's own included) or ``timeout`` seconds passed; True when something may have
        changed. May wake spuriously; never sleeps past ``timeout``."""
        ...

    def close(self) -> None: ...
