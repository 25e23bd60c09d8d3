"""The rules every log the ledger writes keeps, beyond each event decoding.

Each job's events carry versions 1, 2, 3, ... in position order; the first is its ``created`` and
only the first; times are aware; ints fit in 64 bits. A full fold (replay, verify), the catch-up
at open and import check every event against them, so damage made around the ledger (raw SQL,
another tool) stops the fold at that event, by position, instead of reaching a projection.
How a backend stores times is checked by the backend when it reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from ..errors import UnfoldableEvent
from . import events as ev
from .events import StoredEvent
from .validate import INT64_MAX, INT64_MIN


def _checked_fields(cls: type) -> tuple[str, ...]:
    """The fields of an event type that can hold an int or a datetime (the ones to check)."""
    names = []
    for field in msgspec.inspect.type_info(cls).fields:  # type: ignore[attr-defined]
        kind = field.type
        kinds = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
        if any(
            isinstance(k, msgspec.inspect.IntType | msgspec.inspect.DateTimeType) for k in kinds
        ):
            names.append(field.name)
    return tuple(names)


_CHECKED_FIELDS: dict[type, tuple[str, ...]] = {}
_STREAM_PREFIXES = ev.stream_prefixes()
# A job's events after its creation (not a stream's own events): `LogCheck.problem`'s fast way.
_FOLLOWING = frozenset(
    cls
    for cls in ev.AnyEvent.__args__
    if not issubclass(cls, ev.StreamEvent) and cls is not ev.JobCreated
)


# The checked fields of each type that takes the fast way (activity events: only ``attempt``).
_FOLLOWING_FIELDS: dict[type, tuple[str, ...]] = {cls: _checked_fields(cls) for cls in _FOLLOWING}
_CREATED_FIELDS = _checked_fields(ev.JobCreated)  # `LogCheck._created`'s
# The types whose one checked field is ``attempt``: `LogCheck.known` (a fold's inline check).
ATTEMPT_ONLY = frozenset(cls for cls, names in _FOLLOWING_FIELDS.items() if names == ("attempt",))


def _field_problem(event: ev.Event) -> str | None:
    """A decoded field no command could have written: an int that does not fit in 64 bits, a
    naive time."""
    names = _CHECKED_FIELDS.get(type(event))
    if names is None:
        names = _CHECKED_FIELDS[type(event)] = _checked_fields(type(event))
    for name in names:
        value = getattr(event, name)
        if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
            return f"its {name} {value} does not fit in a 64-bit integer"
        if type(value) is datetime and value.tzinfo is not UTC:
            if value.utcoffset() is None:
                return f"its {name} {value.isoformat()} has no timezone"
            try:
                value.astimezone(UTC)
            except OverflowError:
                return f"its {name} {value.isoformat()} is past the last time UTC can hold"
    return None


class LogCheck:
    """Checks events in position order against the log's rules (see the module docstring)."""

    __slots__ = ("_jobs", "_prior", "_versions")

    def __init__(self, prior: Callable[[str], int] | None = None) -> None:
        """``prior``: a job's version before the first event checked (for a fold that starts
        after the log's beginning); without it every job starts at 0."""
        # The last version of each job (an id that is a text and not like a stream's: only the
        # careful way below puts one here) and, apart, of each other stream.
        self._jobs: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        self._prior = prior

    @property
    def known(self) -> dict[str, int]:
        """The last version of each job checked so far, for a fold's loop that checks the
        commonest event inline (replay: `rebuild.fold_events`): a job's next event (this
        version plus one) of a type in `ATTEMPT_ONLY`, its ``attempt`` None or an int in range,
        is one `problem` accepts, and the loop stores its version here as `problem` would."""
        return self._jobs

    def problem(self, stored: StoredEvent) -> str | None:
        """Why ``stored`` cannot follow the events checked so far, or None; remembers it."""
        job_id = stored.job_id
        jobs = self._jobs
        known = jobs.get(job_id)
        if known is not None:  # the common case, decided as below: a known job's next event
            event = stored.event
            names = _FOLLOWING_FIELDS.get(type(event))  # not a creation, not a stream's
            version = stored.version
            if names is not None and version == known + 1:
                for name in names:  # None, an int in range, a UTC time: fine; else ask in full
                    value = getattr(event, name)
                    if value is None:
                        continue
                    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
                        continue
                    if type(value) is datetime and value.tzinfo is UTC:
                        continue
                    problem = _field_problem(event)
                    if problem is not None:
                        return problem
                    break
                jobs[job_id] = version
                return None
        if type(stored.event) is ev.JobCreated and self._prior is None:
            return self._created(stored, known)
        return self._careful(stored, known)

    def _created(self, stored: StoredEvent, known: int | None) -> str | None:
        """`_careful` for a created event of a log folded from its start (a replay's every
        job): what it decides, in the order it decides it, with the fields checked inline; any
        doubt goes to `_careful`, which gives the reason."""
        job_id = stored.job_id
        if (
            known is None
            and stored.version == 1
            and type(job_id) is str
            and job_id
            and not job_id.startswith(_STREAM_PREFIXES)
            and job_id not in self._versions
        ):
            event = stored.event
            for name in _CREATED_FIELDS:  # None, an int in range, a UTC time: fine (`problem`)
                value = getattr(event, name)
                if not (
                    value is None
                    or (type(value) is int and INT64_MIN <= value <= INT64_MAX)
                    or (type(value) is datetime and value.tzinfo is UTC)
                ):
                    return self._careful(stored, known)
            self._jobs[job_id] = 1
            return None
        return self._careful(stored, known)

    def _careful(self, stored: StoredEvent, known: int | None) -> str | None:
        """`problem` for every event the fast way does not decide."""
        job_id = stored.job_id
        version = stored.version
        event = stored.event
        if type(job_id) is not str or not job_id:
            return f"its job id {job_id!r} is not a non-empty text"
        if known is None:
            known = self._versions.get(job_id)
        if known is None:
            known = 0 if self._prior is None else self._prior(job_id)
        expected = known + 1
        stream = isinstance(event, ev.StreamEvent)
        if stream or job_id.startswith(_STREAM_PREFIXES):  # else a job's event in a job's stream
            misplaced = ev.stream_problem(job_id, event)
            if misplaced is not None:
                return f"{misplaced} (stream {job_id})"
        if stream:  # a queue's stream: versions only, no created
            if version != expected:
                return (
                    f"stream {job_id} is at version {expected - 1}, so its next event must be "
                    f"version {expected}, not {version!r}"
                )
            self._versions[job_id] = version
            return _field_problem(event)
        created = type(event) is ev.JobCreated
        if version != expected:
            if type(version) is not int or version < 1:
                return f"its version {version!r} is not a whole number from 1 up"
            if expected == 1:
                return f"job {job_id} has no created event before it (this is version {version})"
            return (
                f"job {job_id} is at version {expected - 1}, so its next event must be version "
                f"{expected}, not {version} (versions run 1, 2, 3, ... without gaps)"
            )
        if created != (version == 1):
            if created:
                return f"job {job_id} already has a created event (this is version {version})"
            return f"job {job_id} has no created event before it (it starts with this one)"
        problem = _field_problem(stored.event)
        if problem is None:
            self._jobs[job_id] = version  # not like a stream's id: `misplaced` said so
        return problem

    def check(self, stored: StoredEvent) -> None:
        problem = self.problem(stored)
        if problem is not None:
            raise UnfoldableEvent(stored.position, ev.tag_of(stored.event), problem)
