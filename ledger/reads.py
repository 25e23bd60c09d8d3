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
from datetime import datetime, timedelta
from typing import Any, TypeVar

import msgspec

from projections.queues import QueueState

from .backends.protocol import EventRow, JobFilter
from .domain import commands as cmd
from .domain import decide, reading
from .domain import validate as check
from .domain.model import Budget, EventType, Job, JobEvent, JobStatus
from .domain.state import JobState, to_job
from .domain.summary import format_summary
from .errors import InvalidArgument, JobNotFound, SchemaError, StorageError
from .stats import Stats
from .stats import collect as collect_stats

_T = TypeVar("_T")
FOLLOW_PAGE = 1000
_WAKE_SLICE = 0.05  # seconds: the longest one backend wait lasts, so a stop is seen soon
"""How many events `iter_events` and `follow` read from the log at a time."""
_RUNNING = (JobStatus.RUNNING,)
_FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED)


class JobPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of `LedgerReads.search_jobs`: ``total`` jobs match in all, costing
    ``cost_cents``; ``jobs`` are those from ``offset`` on, at most ``limit``."""

    jobs: list[Job]
    total: int
    offset: int
    limit: int
    cost_cents: float


class ThroughputBucket(msgspec.Struct, frozen=True, kw_only=True):
    """Jobs that finished from ``start`` (included) to ``end``, by status."""

    start: datetime
    end: datetime
    finished: dict[str, int]


def _same(moment: datetime) -> datetime:
    return moment


def _same_at(position: int, event_type: str, moment: datetime) -> datetime:
    return moment


def to_job_events(rows: Sequence[EventRow]) -> list[JobEvent]:
    """The backend's rows (their times already datetimes) as the public records."""
    return reading.to_job_events(rows, _same, _same_at)


def _events_after(snap: Any, after: int, limit: int | None) -> list[JobEvent]:
    """The log after ``after``, decoded by the backend itself where it can do it without an
    intermediate row per event (``decoded_events_after``, SQLite), else from its rows."""
    decoded = getattr(snap, "decoded_events_after", None)
    if decoded is not None:
        return decoded(after, limit)
    return to_job_events(snap.events_after(after, limit))


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
    return _annotated(snapshot, snapshot.jobs(where))


def _annotated(snapshot: Any, states: Sequence[JobState]) -> list[Job]:
    """The public records of ``states``, a pending job held back by its chat's budget saying
    why (`Job.blocked_reason`); the budgets are read only when some chat has a limit."""
    jobs = [to_job(state) for state in states]
    if not any(s.status is JobStatus.PENDING for s in states) or not snapshot.has_budget_limits():
        return jobs
    budgets: dict[int, tuple[float | None, float]] = {}
    out = []
    for state, job in zip(states, jobs, strict=True):
        if state.status is JobStatus.PENDING:
            known = budgets.get(state.chat_id)
            if known is None:
                budget = snapshot.budget(state.chat_id)
                limit = None if budget is None else budget.limit_cents
                used = sum(snapshot.budget_usage(state.chat_id)) if limit is not None else 0.0
                known = budgets[state.chat_id] = (limit, used)
            why = decide.blocked_reason(state, *known)
            if why is not None:
                job = msgspec.structs.replace(job, blocked_reason=why)
        out.append(job)
    return out


def _job_and_limits(snapshot: Any, job_id: str) -> tuple[JobState | None, bool]:
    """A job's state and, when it is pending, whether any chat has a budget limit (only then
    can it be held back). Both in one read without a transaction of its own (``single``):
    polling a pending job's status is the common call, and a second read in a transaction of
    its own made it cost twice a finished job's (34.7 against 16.7 us). Each statement reads
    its own snapshot, as the two reads did; the probe only decides whether to look at the
    budgets, which `_annotated` then reads in one snapshot."""
    state = snapshot.job(job_id)
    pending = state is not None and state.status is JobStatus.PENDING
    return state, pending and snapshot.has_budget_limits()


class LedgerReads:
    """The read half of `Ledger`: queries of the jobs projection and of the log. Reads never
    open a write transaction and work on a read-only `Ledger`."""

    _backend: Any
    _service: Any

    def now(self) -> datetime:
        """The ledger clock's current time (timezone-aware UTC)."""
        return self._service.now()

    def _read(self, doing: str, query: Callable[[Any], _T], *, single: bool = False) -> _T:
        """Run ``query`` on one consistent snapshot (``single``: it runs one statement)."""
        try:
            return self._backend.read(doing, query, single=single)
        except StorageError as e:
            stale = getattr(self, "_stale_projection", None)
            if stale is not None:  # read-only, on a projection another release built
                raise SchemaError(stale) from e
            raise

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
        state, limits = self._read(
            "reading a job", lambda snap: _job_and_limits(snap, job_id), single=True
        )
        if state is None:
            return None
        if limits:  # a pending job, and some chat has a budget: is this one held back?
            return self._read("reading a job", lambda snap: _annotated(snap, [state])[0])
        return to_job(state)

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
            return _annotated(snap, [state])[0]

        return self._read("finding a job", query)

    def children(self, job_id: str) -> list[Job]:
        """The jobs ``job_id`` spawned (``parent_id``), oldest first; `JobNotFound` for an
        unknown id."""
        return self._tree("listing children", job_id, lambda snap: snap.children(job_id))

    def descendants(self, job_id: str) -> list[Job]:
        """The whole subtree below ``job_id``, parents before their children (level by level,
        oldest first within a level); `JobNotFound` for an unknown id."""
        return self._tree("listing descendants", job_id, lambda snap: snap.descendants(job_id))

    def _tree(self, doing: str, job_id: str, below: Callable[[Any], list[JobState]]) -> list[Job]:
        check.text("job_id", job_id)

        def query(snap: Any) -> list[Job]:
            if snap.job(job_id) is None:
                raise JobNotFound(job_id)
            return _annotated(snap, below(snap))

        return self._read(doing, query)

    def budget(self, chat_id: int) -> Budget:
        """A chat's budget: its limit (None: unlimited), what its jobs spent (charges and
        completed costs), what its running jobs hold reserved of their ``max_cost_cents``, and
        what is left (None when unlimited; never below 0). All from one snapshot."""
        check.integer("chat_id", chat_id)

        def query(snap: Any) -> Budget:
            state = snap.budget(chat_id)
            limit = None if state is None else state.limit_cents
            spent, reserved = snap.budget_usage(chat_id)
            left = None if limit is None else max(limit - spent - reserved, 0.0)
            return Budget(
                chat_id=chat_id,
                limit_cents=limit,
                spent_cents=spent,
                reserved_cents=reserved,
                remaining_cents=left,
            )

        return self._read("reading a budget", query)

    def pending_jobs(self, limit: int = 100) -> list[Job]:
        """Pending jobs, oldest first."""
        where = JobFilter(statuses=(JobStatus.PENDING,), order="oldest", limit=check.limit(limit))
        return self._read("listing jobs", lambda snap: _jobs(snap, where), single=True)

    def running_jobs(self) -> list[Job]:
        """Running jobs, longest-running first."""
        where = JobFilter(statuses=_RUNNING, order="started")
        return self._read("listing jobs", lambda snap: _jobs(snap, where), single=True)

    def jobs_for_chat(self, chat_id: int, limit: int = 100) -> list[Job]:
        """A chat's jobs, newest first."""
        check.integer("chat_id", chat_id)
        where = JobFilter(chat_id=chat_id, order="newest", limit=check.limit(limit))
        return self._read("listing jobs", lambda snap: _jobs(snap, where), single=True)

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
        return self._read("listing jobs", lambda snap: _jobs(snap, where), single=True)

    def search_jobs(
        self,
        *,
        status: str | None = None,
        chat_id: int | None = None,
        queue: str | None = None,
        text: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> JobPage:
        """One page of the jobs matching every filter given, newest first, with how many match
        in all and their total cost (one snapshot). ``text`` matches a substring of the id, the
        config's JSON text, the user, the result summary or the error message (ASCII letters in
        any case). For the dashboard's job list and chat page, which never load a whole list."""
        statuses = None if status is None else (cmd.status(status),)
        check.integer("chat_id", chat_id, optional=True)
        check.text("queue", queue, optional=True)
        check.text("text", text, optional=True, nonempty=True)
        check.integer("offset", offset, minimum=0)
        n = check.limit(limit)
        where = JobFilter(statuses=statuses, chat_id=chat_id, queue=queue, order="newest")

        def query(snap: Any) -> JobPage:
            total, cost = snap.search_totals(where, text)
            states = snap.search_jobs(where, text, offset, n)
            jobs = [to_job(state) for state in states]
            return JobPage(jobs=jobs, total=total, offset=offset, limit=n, cost_cents=cost)

        return self._read("searching jobs", query)

    def throughput(self, *, span: timedelta, buckets: int) -> list[ThroughputBucket]:
        """Jobs that finished in each of ``buckets`` equal slices of the last ``span``, oldest
        slice first, by status (one snapshot): the dashboard's charts."""
        if not isinstance(span, timedelta) or span <= timedelta(0):
            raise InvalidArgument("span", span, "expected a positive timedelta")
        check.integer("buckets", buckets, minimum=1)
        if buckets > 1000:
            raise InvalidArgument("buckets", buckets, "at most 1000")
        now = self.now()
        step = span / buckets
        starts = [now - span + step * i for i in range(buckets)]

        def query(snap: Any) -> list[ThroughputBucket]:
            since = [snap.finished_since(t) for t in starts]
            since.append(snap.finished_since(now))
            return [
                ThroughputBucket(
                    start=start,
                    end=start + step,
                    finished={
                        status: n - since[i + 1].get(status, 0)
                        for status, n in since[i].items()
                        if n - since[i + 1].get(status, 0) > 0
                    },
                )
                for i, start in enumerate(starts)
            ]

        return self._read("counting finished jobs", query)

    def count_jobs(self, *, status: str | None = None, queue: str | None = None) -> int:
        """How many jobs there are, optionally of one status and queue."""
        statuses = None if status is None else (cmd.status(status),)
        check.text("queue", queue, optional=True)
        where = JobFilter(statuses=statuses, queue=queue)
        return self._read("counting jobs", lambda snap: int(snap.count_jobs(where)), single=True)

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
            lambda snap: to_job_events(snap.job_events(job_id, names)),
            single=True,
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
            lambda snap: to_job_events(snap.chat_events(chat_id, n, names, exclude)),
            single=True,
        )

    def read_all(self, after: int = 0, limit: int | None = None) -> list[JobEvent]:
        """Every event after position ``after``, in position order (at most ``limit``)."""
        check.integer("after", after, minimum=0)
        n = None if limit is None else check.limit(limit)
        return self._read(
            "reading events",
            lambda snap: _events_after(snap, after, n),
            single=True,
        )

    def failed_jobs(self, *, queue: str | None = None, since: datetime | None = None) -> list[Job]:
        """The failed jobs `Ledger.retry_failed` would retry (of ``queue``; failed at or after
        ``since``), oldest first."""
        command = cmd.RetryFailed.checked(queue=queue, since=since)
        where = JobFilter(statuses=(JobStatus.FAILED,), queue=command.queue, order="oldest")

        def query(snap: Any) -> list[Job]:
            states = snap.jobs(where)
            return [to_job(s) for s in states if cmd.failed_since(s, command.since)]

        return self._read("reading failed jobs", query)

    def paused_queues(self) -> list[str]:
        """The names of the queues that are paused now (see `Ledger.pause`), sorted."""
        return self._read("reading the queues", lambda snap: list(snap.paused_queues()))

    def queue_states(self) -> list[QueueState]:
        """Every queue an operator paused or resumed: paused or not, by whom, since when."""
        return self._read("reading the queues", lambda snap: list(snap.queue_states()))

    def last_position(self) -> int:
        """The position of the newest event (0 for an empty ledger)."""
        return self._read("reading the log", lambda snap: int(snap.last_position()), single=True)

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
