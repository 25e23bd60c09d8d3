"""The reads every backend answers alike: one call into its own table modules.

Why: each backend keeps its SQL in table modules of the same shape (`jobs_table`,
`events_table`, `budgets_table`, with the same function names and arguments), so a
snapshot's plain reads are the same one-line delegation on SQLite and on PostgreSQL. They are
written once here; a backend's snapshot names its modules and adds only the reads that differ
(its error wrapping, its time codec, its locking).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from projections.budgets import BudgetState

from ..domain.state import JobState
from .protocol import EventRow, JobFilter


class TableReads:
    """`Snapshot` reads as calls into ``_jobs``, ``_events`` and ``_budgets`` (the backend's
    table modules, set by its snapshot class) on ``conn``."""

    __slots__ = ()
    conn: Any
    _jobs: ClassVar[Any]
    _events: ClassVar[Any]
    _budgets: ClassVar[Any]

    def job(self, job_id: str) -> JobState | None:
        return self._jobs.load(self.conn, job_id)

    def job_ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        return self._jobs.prefix(self.conn, prefix, limit)

    def jobs(self, where: JobFilter) -> list[JobState]:
        return self._jobs.select(self.conn, where)

    def job_counts(self) -> list[tuple[str, str, int]]:
        return self._jobs.counts(self.conn)

    def completed_durations(self) -> list[int]:
        return self._jobs.durations(self.conn)

    def total_cost(self) -> float:
        return self._jobs.total_cost(self.conn)

    def search_jobs(
        self, where: JobFilter, text: str | None, offset: int, limit: int
    ) -> list[JobState]:
        return self._jobs.search(self.conn, where, text, offset, limit)

    def search_totals(self, where: JobFilter, text: str | None) -> tuple[int, float]:
        return self._jobs.search_totals(self.conn, where, text)

    def oldest_pending_by_queue(self) -> dict[str, datetime]:
        return self._jobs.oldest_pending(self.conn)

    def cost_by_chat(self) -> dict[int, float]:
        return self._jobs.cost_by_chat(self.conn)

    def queue_waits(self) -> list[float]:
        return self._jobs.queue_waits(self.conn)

    def event_type_counts(self) -> dict[str, int]:
        return self._events.type_counts(self.conn)

    def last_position(self) -> int:
        return self._events.last_position(self.conn)

    def events_after(self, after: int, limit: int | None) -> list[EventRow]:
        return self._events.rows_after(self.conn, after, limit)

    def job_events(self, job_id: str, types: Sequence[str] | None) -> list[EventRow]:
        return self._events.job_rows(self.conn, job_id, types)

    def chat_events(
        self, chat_id: int, limit: int, types: Sequence[str] | None, exclude: Sequence[str]
    ) -> list[EventRow]:
        return self._events.chat_rows(self.conn, chat_id, limit, types, exclude)

    def held_on(self, host: str) -> list[tuple[str, int, int]]:
        return self._jobs.held_on(self.conn, host)

    def held_by(self, host: str, holder: tuple[Any, Any, Any]) -> list[str]:
        return self._jobs.held_by(self.conn, host, holder)

    def checkpoint(self, name: str) -> tuple[int, int] | None:
        """(schema version, position) of a projection, or None when it was never built."""
        return self._events.read_checkpoint(self.conn, name)

    def has_jobs_table(self) -> bool:
        return self._jobs.exists(self.conn)

    def stored_form(self, state: JobState) -> dict[str, Any]:
        return self._jobs.stored_form(state)

    def children(self, job_id: str) -> list[JobState]:
        return self._jobs.children(self.conn, job_id)

    def descendants(self, job_id: str) -> list[JobState]:
        return self._jobs.descendants(self.conn, job_id)

    def budget(self, chat_id: int) -> BudgetState | None:
        return self._budgets.load(self.conn, chat_id)

    def budget_usage(self, chat_id: int) -> tuple[float, float]:
        return self._budgets.usage(self.conn, chat_id)

    def budget_states(self) -> list[BudgetState]:
        return self._budgets.states(self.conn)

    def has_budget_limits(self) -> bool:
        return self._budgets.any_limit(self.conn)
