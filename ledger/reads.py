"""Reading the event log as `JobEvent`s: one job's history, a chat's recent activity, all of it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

import apsw

from . import events as ev
from . import store
from . import validate as check
from .connection import wrap_sqlite_error
from .errors import InvalidArgument
from .model import EventType, JobEvent

_T = TypeVar("_T")
_fromiso = datetime.fromisoformat


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


class EventReader:
    """The read half of `Ledger` that reads the log (the jobs projection reads live in core)."""

    _conn: apsw.Connection
    _lock: threading.RLock

    def _read(self, doing: str, query: Callable[[], _T]) -> _T:
        with self._lock:
            try:
                return query()
            except apsw.Error as e:
                raise wrap_sqlite_error(e, doing) from e

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
