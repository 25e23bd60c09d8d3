"""The read half of `Ledger`: jobs from the projection, `JobEvent`s from the log, summaries.

Every read runs in one snapshot of the backend (`Backend.read`), so a read made of several
queries (the summary, the stats) never mixes two states, and reads from several threads run
in parallel.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from .backends.protocol import EventRow, JobFilter
from .domain import commands as cmd
from .domain import events as ev
from .domain import validate as check
from .domain.model import EventType, Job, JobEvent, JobStatus
from .domain.state import to_job
from .domain.summary import format_summary
from .errors import InvalidArgument, JobNotFound
from .stats import Stats
from .stats import collect as collect_stats

_T = TypeVar("_T")
FOLLOW_PAGE = 1000
_WAKE_SLICE = 0.05  # seconds: the longest one backend wait lasts, so a stop is seen soon
"""How many events `iter_events` and `follow` read from the log at a time."""
_RUNNING = (JobStatus.RUNNING,)
_FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED)
_EVENT_TYPES = {t.value: t for t in EventType}


def to_job_event(row: EventRow) -> JobEvent:
    position, job_id, version, event_type, data, recorded_at = row
    event = ev.decode(position, event_type, data)
    return JobEvent(
        position=position,
        job_id=job_id,
        version=version,
        type=_EVENT_TYPES[event_type],
        payload=ev.payload_of(event),
        created_at=recorded_at,
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


def _jobs(snapshot: Any, where: JobFilter) -> list[Job]:
    return [to_job(state) for state in snapshot.jobs(where)]


class LedgerReads:
    """The read half of `Ledger`: queries of the jobs projection and of the log. Reads never
    open a write transaction and work on a read-only `Ledger`."""

    _backend: Any
    _service: Any

    def now(self) -> datetime:
        """The ledger clock's current time (timezone-aware UTC)."""
        return self._service.now()

    def _read(self, doing: str, query: Callable[[Any], _T]) -> _T:
        """Run ``query`` on one consistent snapshot."""
        return self._backend.read(doing, query)

    def _wait_for_change(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Sleep until the database may hold something new (the backend's wake-up: a commit
        seen, a NOTIFY), ``stop`` is set, or ``timeout`` passed; True unless it timed out.
        Waits in short slices so that a ``stop`` is noticed within `_WAKE_SLICE`."""
        deadline = time.monotonic() + timeout
        while stop is None or not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._backend.wait_for_change(min(left, _WAKE_SLICE)):
                return True
        return True

    def get_job(self, job_id: str) -> Job | None:
        check.text("job_id", job_id)
        state = self._read("reading a job", lambda snap: snap.job(job_id))
        return None if state is None else to_job(state)

    def find_job(self, prefix: str) -> Job:
        """The job whose id is ``prefix`` or starts with it (like a short git hash)."""
        check.text("prefix", prefix, nonempty=True)

        def query(snap: Any) -> Job:
            state = snap.job(prefix)
            if state is None:
                ids = snap.job_ids_with_prefix(prefix, 2)
                if len(ids) != 1:
                    if ids:
                        raise InvalidArgument(
                            "job id", prefix, "ambiguous prefix; give more characters"
                        )
                    raise JobNotFound(prefix)
                state = snap.job(ids[0])
            return to_job(state)

        return self._read("finding a job", query)

    def pending_jobs(self, limit: int = 100) -> list[Job]:
        """Pending jobs, oldest first."""
        where = JobFilter(statuses=(JobStatus.PENDING,), order="oldest", limit=check.limit(limit))
        return self._read("listing jobs", lambda snap: _jobs(snap, where))

    def running_jobs(self) -> list[Job]:
        """Running jobs, longest-running first."""
        where = JobFilter(statuses=_RUNNING, order="started")
        return self._read("listing jobs", lambda snap: _jobs(snap, where))

    def jobs_for_chat(self, chat_id: int, limit: int = 100) -> list[Job]:
        """A chat's jobs, newest first."""
        check.integer("chat_id", chat_id)
        where = JobFilter(chat_id=chat_id, order="newest", limit=check.limit(limit))
        return self._read("listing jobs", lambda snap: _jobs(snap, where))

    def active_jobs_summary(self, chat_id: int) -> str:
        """Running jobs and the three latest finished ones of a chat, as text for an LLM; both
        lists from one snapshot."""
        check.integer("chat_id", chat_id)
        now = self.now()
        running = JobFilter(statuses=_RUNNING, chat_id=chat_id, order="started")
        recent = JobFilter(statuses=_FINISHED, chat_id=chat_id, order="finished", limit=3)

        def query(snap: Any) -> str:
            return format_summary(now, _jobs(snap, running), _jobs(snap, recent))

        return self._read("summarising jobs", query)

    def jobs(
        self,
        *,
        status: str | None = None,
        chat_id: int | None = None,
        queue: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs newest first, optionally of one status, chat and queue."""
        statuses = None if status is None else (cmd.status(status),)
        check.integer("chat_id", chat_id, optional=True)
        check.text("queue", queue, optional=True)
        where = JobFilter(
            statuses=statuses,
            chat_id=chat_id,
            queue=queue,
            order="newest",
            limit=check.limit(limit),
        )
        return self._read("listing jobs", lambda snap: _jobs(snap, where))

    def count_jobs(self, *, status: str | None = None, queue: str | None = None) -> int:
        """How many jobs there are, optionally of one status and queue."""
        statuses = None if status is None else (cmd.status(status),)
        check.text("queue", queue, optional=True)
        where = JobFilter(statuses=statuses, queue=queue)
        return self._read("counting jobs", lambda snap: int(snap.count_jobs(where)))

    def stats(self) -> Stats:
        """Counts by status and queue, last hour's throughput, durations, cost, oldest pending,
        all from one snapshot."""
        now = self.now()
        return self._read("collecting stats", lambda snap: collect_stats(snap, now))

    def job_events(
        self, job_id: str, *, types: Sequence[EventType | str] | None = None
    ) -> list[JobEvent]:
        """A job's events in version order: every type, unless ``types`` names some."""
        check.text("job_id", job_id)
        names = _types(types)
        return self._read(
            "reading events",
            lambda snap: [to_job_event(r) for r in snap.job_events(job_id, names)],
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
            lambda snap: [to_job_event(r) for r in snap.chat_events(chat_id, n, names, exclude)],
        )

    def read_all(self, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        """Every event after position ``after``, in position order (at most ``limit``)."""
        check.integer("after", after, minimum=0)
        n = None if limit is None else check.limit(limit)
        return self._read(
            "reading events",
            lambda snap: [to_job_event(r) for r in snap.events_after(after, n)],
        )

    def last_position(self) -> int:
        """The position of the newest event (0 for an empty ledger)."""
        return self._read("reading the log", lambda snap: int(snap.last_position()))

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
        """Like `iter_events`, then waits for new events (woken by the database when one
        commits, and checking at least every ``poll`` seconds) and yields them as they commit,
        until ``stop`` is set or the caller stops iterating. Positions are gap-free and in
        commit order, so no event is skipped or repeated; a ``chat_id`` filter also matches
        jobs created in that chat while following."""
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
            self._wait_for_change(poll, stop)

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
