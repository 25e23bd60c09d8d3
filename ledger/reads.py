"""The read half of `Ledger`: jobs from the projection, `JobEvent`s from the log, summaries."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TypeVar

import apsw

from projections import jobs_queries as q

from . import arguments, store
from . import events as ev
from . import validate as check
from .connection import read_snapshot, wrap_sqlite_error
from .errors import InvalidArgument, JobNotFound
from .model import EventType, Job, JobEvent
from .stats import Stats
from .stats import collect as collect_stats
from .summary import format_summary
from .timeutil import Clock, check_aware

_T = TypeVar("_T")
_fromiso = datetime.fromisoformat
FOLLOW_PAGE = 1000
"""How many events `iter_events` and `follow` read from the log at a time."""


def to_job_event(row: tuple[int, str, int, str, str, str]) -> JobEvent:
    position, job_id, version, event_type, data, recorded_at = row
    event = ev.decode(position, event_type, data)
    return JobEvent(
        position=position,
        job_id=job_id,
        version=version,
        type=EventType(event_type),
        payload=ev.payload_of(event),
        created_at=_fromiso(recorded_at),
        worker_id=getattr(event, "worker_id", None),
        attempt=getattr(event, "attempt", None),
    )


def _types(types: Iterable[EventType | str] | None) -> list[str] | None:
    if types is None:
        return None
    if isinstance(types, str):
        types = [types]
    try:
        return [EventType(t).value for t in types]
    except ValueError as e:
        known = ", ".join(t.value for t in EventType)
        raise InvalidArgument("types", types, f"unknown event type; known: {known}") from e


class LedgerReads:
    """The read half of `Ledger`: queries of the jobs projection and of the log. Reads never
    open a write transaction and work on a read-only `Ledger`."""

    _conn: apsw.Connection
    _lock: threading.RLock
    _clock: Clock

    def now(self) -> datetime:
        """The ledger clock's current time (timezone-aware UTC)."""
        return check_aware("clock()", self._clock())

    def _read(self, doing: str, query: Callable[[], _T], *, snapshot: bool = False) -> _T:
        """Run ``query`` under the lock; ``snapshot``: in one read transaction, for a read made
        of several statements that must agree with each other."""
        with self._lock:
            try:
                return read_snapshot(self._conn, query) if snapshot else query()
            except apsw.Error as e:
                raise wrap_sqlite_error(e, doing) from e

    def get_job(self, job_id: str) -> Job | None:
        check.text("job_id", job_id)
        return self._read("reading a job", lambda: q.fetch_job(self._conn, job_id))

    def find_job(self, prefix: str) -> Job:
        """The job whose id is ``prefix`` or starts with it (like a short git hash)."""
        check.text("prefix", prefix, nonempty=True)
        job = self.get_job(prefix)
        if job is not None:
            return job
        ids = self._read("finding a job", lambda: q.find_by_prefix(self._conn, prefix))
        if len(ids) != 1:
            if ids:
                raise InvalidArgument("job id", prefix, "ambiguous prefix; give more characters")
            raise JobNotFound(prefix)
        return self.get_job(ids[0])  # type: ignore[return-value]

    def pending_jobs(self, limit: int = 100) -> list[Job]:
        """Pending jobs, oldest first."""
        n = check.limit(limit)
        return self._read(
            "listing jobs", lambda: q.fetch_jobs(self._conn, q.pending_statement, (n,))
        )

    def running_jobs(self) -> list[Job]:
        """Running jobs, longest-running first."""
        return self._read("listing jobs", lambda: q.fetch_jobs(self._conn, q.running_statement))

    def jobs_for_chat(self, chat_id: int, limit: int = 100) -> list[Job]:
        """A chat's jobs, newest first."""
        check.integer("chat_id", chat_id)
        params = (chat_id, check.limit(limit))
        return self._read(
            "listing jobs", lambda: q.fetch_jobs(self._conn, q.for_chat_statement, params)
        )

    def active_jobs_summary(self, chat_id: int) -> str:
        """Running jobs and the three latest finished ones of a chat, as text for an LLM."""
        check.integer("chat_id", chat_id)
        now = self.now()

        def query() -> str:
            running = q.fetch_jobs(self._conn, q.running_for_chat_statement, (chat_id,))
            recent = q.fetch_jobs(self._conn, q.recent_finished_for_chat_statement, (chat_id, 3))
            return format_summary(now, running, recent)

        return self._read("summarising jobs", query, snapshot=True)

    def jobs(
        self,
        *,
        status: str | None = None,
        chat_id: int | None = None,
        queue: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs newest first, optionally of one status, chat and queue."""
        if status is not None:
            status = arguments.status(status)
        check.integer("chat_id", chat_id, optional=True)
        check.text("queue", queue, optional=True)
        params = [p for p in (status, chat_id, queue) if p is not None] + [check.limit(limit)]
        statement = q.list_statement(status is not None, chat_id is not None, queue is not None)
        return self._read("listing jobs", lambda: q.fetch_jobs(self._conn, statement, params))

    def count_jobs(self, *, status: str | None = None, queue: str | None = None) -> int:
        """How many jobs there are, optionally of one status and queue."""
        status = None if status is None else arguments.status(status)
        check.text("queue", queue, optional=True)
        statement = q.count_statement(status is not None, queue is not None)
        params = [p for p in (status, queue) if p is not None]
        return self._read("counting jobs", lambda: int(self._conn.execute(statement, params).get))

    def stats(self) -> Stats:
        """Counts by status and queue, last hour's throughput, durations, cost, oldest pending."""
        now = self.now()
        return self._read("collecting stats", lambda: collect_stats(self._conn, now), snapshot=True)

    def job_events(
        self, job_id: str, *, types: Sequence[EventType | str] | None = None
    ) -> list[JobEvent]:
        """A job's events in version order: every type, unless ``types`` names some."""
        check.text("job_id", job_id)
        names = _types(types)
        return self._read(
            "reading events",
            lambda: [to_job_event(r) for r in store.job_rows(self._conn, job_id, names)],
        )

    def recent_events_for_chat(
        self, chat_id: int, limit: int = 20, *, types: Sequence[EventType | str] | None = None
    ) -> list[JobEvent]:
        """A chat's latest events, newest first, for people or an LLM's context: heartbeats are
        left out unless ``types`` asks for them."""
        check.integer("chat_id", chat_id)
        n = check.limit(limit)
        names = _types(types)
        exclude = (EventType.HEARTBEAT.value,) if names is None else ()
        return self._read(
            "reading events",
            lambda: [
                to_job_event(r) for r in store.chat_rows(self._conn, chat_id, n, names, exclude)
            ],
        )

    def read_all(self, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        """Every event after position ``after``, in position order (at most ``limit``)."""
        check.integer("after", after, minimum=0)
        n = None if limit is None else check.limit(limit)
        return self._read(
            "reading events",
            lambda: [to_job_event(r) for r in store.rows_after(self._conn, after, n)],
        )

    def last_position(self) -> int:
        """The position of the newest event (0 for an empty ledger)."""
        return self._read("reading the log", lambda: store.last_position(self._conn))

    def iter_events(
        self,
        after: int = 0,
        *,
        job_id: str | None = None,
        chat_id: int | None = None,
        types: Iterable[EventType | str] | None = None,
    ) -> Iterator[JobEvent]:
        """The events after position ``after`` that match every filter given, in position order,
        up to the log's end. The log is read a page at a time, so a long one never sits in
        memory. ``chat_id`` matches the events of that chat's jobs (0 is a chat like any other).
        The filters are checked here, before the first event is read."""
        match = self._event_filter(job_id, chat_id, types)
        check.integer("after", after, minimum=0)
        return self._scan(after, match, poll=None, stop=None)

    def follow(
        self,
        after: int = 0,
        *,
        job_id: str | None = None,
        chat_id: int | None = None,
        types: Iterable[EventType | str] | None = None,
        poll: float = 0.2,
        stop: threading.Event | None = None,
    ) -> Iterator[JobEvent]:
        """Like `iter_events`, then waits for new events (checking every ``poll`` seconds) and
        yields them as they commit, until ``stop`` is set or the caller stops iterating. Positions
        are gap-free and in commit order, so no event is skipped or repeated; a ``chat_id`` filter
        also matches jobs created in that chat while following."""
        match = self._event_filter(job_id, chat_id, types)
        check.integer("after", after, minimum=0)
        if isinstance(poll, bool) or not isinstance(poll, int | float) or not math.isfinite(poll):
            raise InvalidArgument("poll", poll, "expected a number of seconds")
        if poll <= 0:
            raise InvalidArgument("poll", poll, "must be more than 0 seconds")
        return self._scan(after, match, poll=float(poll), stop=stop)

    def _scan(
        self,
        after: int,
        match: Callable[[JobEvent], bool],
        *,
        poll: float | None,
        stop: threading.Event | None,
    ) -> Iterator[JobEvent]:
        """Yield matching events page by page; at the end, return (``poll`` None) or wait."""
        position = after
        while stop is None or not stop.is_set():
            batch = self.read_all(position, limit=FOLLOW_PAGE)
            for event in batch:
                position = event.position
                if match(event):
                    yield event
            if len(batch) == FOLLOW_PAGE:
                continue
            if poll is None:
                return
            if stop is None:
                time.sleep(poll)
            elif stop.wait(poll):
                return

    def _event_filter(
        self,
        job_id: str | None,
        chat_id: int | None,
        types: Iterable[EventType | str] | None,
    ) -> Callable[[JobEvent], bool]:
        """A predicate for `iter_events` and `follow`. A job's chat never changes, so each job's
        membership is looked up once, the first time one of its events is seen; that is how jobs
        created after the scan began are matched too."""
        check.text("job_id", job_id, optional=True)
        check.integer("chat_id", chat_id, optional=True)
        names = _types(types)
        wanted = None if names is None else frozenset(names)
        in_chat: dict[str, bool] = {}

        def of_chat(event_job: str) -> bool:
            known = in_chat.get(event_job)
            if known is None:
                job = self.get_job(event_job)
                if job is None:  # not in the projection (yet): decide again next time
                    return False
                known = in_chat[event_job] = job.chat_id == chat_id
            return known

        def match(event: JobEvent) -> bool:
            return (
                (job_id is None or event.job_id == job_id)
                and (wanted is None or event.type.value in wanted)
                and (chat_id is None or of_chat(event.job_id))
            )

        return match
