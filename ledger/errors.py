"""The ledger's exception tree.

Every error a caller can see is a `LedgerError`. Subclasses keep the values they complain about as
attributes so that code can react without parsing messages, and build a message a person can act on.
"""

from __future__ import annotations

from typing import Any


class LedgerError(Exception):
    """Root of every error the ledger raises on purpose."""


class InvalidArgument(LedgerError, ValueError):
    """A call got an argument it cannot use; nothing was written."""

    def __init__(self, name: str, value: Any, why: str) -> None:
        self.name = name
        self.value = value
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid {name} {shown}: {why}")


class JobNotFound(LedgerError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}; check the id (list jobs with `ledger jobs`)")


class InvalidTransition(LedgerError):
    """The command is not legal in the job's current state; nothing was written."""

    def __init__(self, job_id: str, status: str, command: str, hint: str = "") -> None:
        self.job_id = job_id
        self.status = status
        self.command = command
        message = f"cannot {command} job {job_id}: it is {status}"
        super().__init__(f"{message}; {hint}" if hint else message)


class LeaseLost(LedgerError):
    """The worker no longer holds the job (cancelled, finished, or lease expired and reclaimed)."""

    def __init__(self, job_id: str, worker_id: str, holder: str | None, status: str) -> None:
        self.job_id = job_id
        self.worker_id = worker_id
        self.holder = holder
        self.status = status
        super().__init__(
            f"worker {worker_id!r} no longer holds job {job_id} (it is {status}"
            + (f", held by {holder!r})" if holder else ")")
            + "; stop working on it"
        )


class JobInterrupted(LedgerError):
    """Raised by `JobContext.check` inside a handler: the worker is stopping, or the job was
    cancelled or is no longer this worker's. Let it propagate: the worker releases the job (a
    stop; the attempt does not count) or leaves it alone (cancelled or lost), never fails it."""

    def __init__(self, job_id: str, why: str) -> None:
        self.job_id = job_id
        self.why = why
        super().__init__(f"job {job_id} interrupted: {why}")


class ConcurrencyError(LedgerError):
    """An append expected a job version that is no longer current; nothing was written."""

    def __init__(self, job_id: str, expected: int, actual: int) -> None:
        self.job_id = job_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"job {job_id} is at version {actual}, not the expected {expected}: "
            "another writer got there first; re-read the job and decide again"
        )


class CorruptEvent(LedgerError):
    """A stored event cannot be decoded; the log needs attention at that position."""

    def __init__(self, position: int, event_type: str, why: str) -> None:
        self.position = position
        self.event_type = event_type
        super().__init__(
            f"event at position {position} (type {event_type!r}) cannot be decoded: {why}"
        )


class SchemaError(LedgerError):
    """The file is not a ledger, or was written by a newer version of this library."""


class StorageError(LedgerError):
    """The storage could not do what was asked (disk full, read-only file, I/O error, a
    server that cannot be reached, ...). ``maybe_committed``: the connection failed while the
    command's transaction was committing, so it may have been written; look before running it
    again."""

    maybe_committed: bool = False


class StorageUnavailable(StorageError):
    """The database server could not be reached: it is down, restarting, recovering from a
    crash, or the network between is. Nothing is wrong with the request; the same call may
    well succeed later (a `Worker` waits and tries again). With ``maybe_committed`` (the
    connection failed while committing), the command may have committed: look before running
    it again."""


class LedgerBusy(StorageError):
    """Another process held the write lock for longer than the busy timeout."""


class UnfoldableEvent(CorruptEvent):
    """An event that decodes but cannot be folded where it stands in the log: it breaks a rule
    every log the ledger writes keeps (its job has no created event before it, a version gap,
    an unreadable timestamp, ...). Only a write that went around the ledger (raw SQL, another
    tool) can put it there; `verify` reports it and replay refuses at its position."""

    def __init__(self, position: int, event_type: str, why: str) -> None:
        super().__init__(position, event_type, why)
        self.why = why
        self.args = (
            f"event at position {position} (type {event_type!r}) cannot be applied: {why}; "
            "the ledger never writes such a log: was it changed around it? (`ledger verify`)",
        )


class CorruptProjection(LedgerError):
    """A projection row holds a value no event could have put there (it was edited around the
    ledger); `ledger verify` shows what differs and `ledger replay` rebuilds it from the log."""

    def __init__(self, table: str, key: str, why: str) -> None:
        self.table = table
        self.key = key
        super().__init__(
            f"the {table} projection's row {key} cannot be read: {why}; the log is intact: "
            "run `ledger verify` to see what differs and `ledger replay` to rebuild it"
        )


class WaitTimeout(LedgerError, TimeoutError):
    """`Ledger.wait` (or `AsyncLedger.wait`) gave up: the job was not final within the timeout.
    Nothing was written; wait again, or look at the job (`ledger show ID`)."""

    def __init__(self, job_id: str, timeout: float, status: str) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.status = status
        super().__init__(
            f"job {job_id} is still {status} after waiting {timeout:g}s; wait longer "
            "(a larger timeout, or None) or look at it with `ledger show`"
        )


class Permanent(LedgerError):
    """Raise it from a handler for an error no retry can fix: the worker fails the job at once,
    whatever attempts are left (``raise ledger.Permanent("bad config") from e``)."""

    def __init__(self, message: str = "permanent failure") -> None:
        self.message = message
        super().__init__(message)


class BudgetExceeded(LedgerError):
    """A charge would take a job past its own ``max_cost_cents`` or its chat past its budget;
    nothing was written."""

    def __init__(self, job_id: str, cents: float, why: str) -> None:
        self.job_id = job_id
        self.cents = cents
        self.why = why
        super().__init__(
            f"cannot charge {cents:g} cents to job {job_id}: {why}; stop spending, or raise the "
            "limit (`ledger budget CHAT --set CENTS`)"
        )
