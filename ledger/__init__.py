"""ledger: an event-sourced job ledger on SQLite.

Every change to a job is an event appended to an append-only log; the ``jobs`` table is a
projection updated in the same transaction, and `Ledger.replay` rebuilds it from the log.
"""

from projections.queues import QueueState

from .aio import AsyncLedger
from .api import Ledger
from .archive import ArchiveReport
from .domain.backoff import RetryPolicy
from .domain.commands import MAX_LOG_EVENTS
from .domain.model import Budget, EventType, Job, JobEvent, JobStatus, Result
from .domain.validate import MAX_KEY_LENGTH
from .errors import (
    BudgetExceeded,
    ConcurrencyError,
    CorruptEvent,
    InvalidArgument,
    InvalidTransition,
    JobInterrupted,
    JobNotFound,
    LeaseLost,
    LedgerBusy,
    LedgerError,
    Permanent,
    SchemaError,
    StorageError,
    StorageUnavailable,
    WaitTimeout,
)
from .rebuild import Difference, ReplayReport, VerifyReport
from .worker import JobContext, Worker

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_LOG_EVENTS",
    "ArchiveReport",
    "AsyncLedger",
    "Budget",
    "BudgetExceeded",
    "ConcurrencyError",
    "CorruptEvent",
    "Difference",
    "EventType",
    "InvalidArgument",
    "InvalidTransition",
    "Job",
    "JobContext",
    "JobEvent",
    "JobInterrupted",
    "JobNotFound",
    "JobStatus",
    "LeaseLost",
    "Ledger",
    "LedgerBusy",
    "LedgerError",
    "Permanent",
    "QueueState",
    "ReplayReport",
    "Result",
    "RetryPolicy",
    "SchemaError",
    "StorageError",
    "StorageUnavailable",
    "VerifyReport",
    "WaitTimeout",
    "Worker",
]
