"""The event union: one frozen, tagged msgspec Struct per event type.

This module owns the wire format of the log. Rules that keep old logs readable forever:
a tag never changes; a new field always has a default; a field's type never changes; anything
else is a new tag (or an upcaster in `_UPCASTERS`, applied to the raw JSON before decoding).
The tag is stored twice: in ``events.type`` (for SQL filters) and inside ``data`` (so ``data``
alone decodes to the right Struct).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from ..errors import CorruptEvent
from .model import EventType


class Event(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    """Base of every event. Envelope data (job, version, position, time) lives in table columns."""


class JobCreated(Event, tag="created", frozen=True):
    chat_id: int
    config: Any
    thread_id: int | None = None
    user_id: str | None = None
    queue: str = "default"
    priority: int = 0
    run_at: datetime | None = None
    max_attempts: int = 1
    idempotency_key: str | None = None


class JobClaimed(Event, tag="claimed", frozen=True):
    worker_id: str
    lease_expires_at: datetime


class HeartbeatRecorded(Event, tag="heartbeat", frozen=True):
    worker_id: str | None = None
    lease_expires_at: datetime | None = None


class JobCompleted(Event, tag="completed", frozen=True):
    summary: str
    result_status: str
    cost_cents: float
    duration_seconds: int
    worker_id: str | None = None


class JobFailed(Event, tag="failed", frozen=True):
    error: str
    worker_id: str | None = None
    error_type: str | None = None  # the exception's qualified type name, when a worker knows it


class RetryScheduled(Event, tag="retry_scheduled", frozen=True):
    """A failed attempt with attempts left: back to pending, claimable from ``run_at``."""

    error: str
    run_at: datetime
    worker_id: str | None = None
    error_type: str | None = None


class LeaseExpired(Event, tag="lease_expired", frozen=True):
    """The holder stopped heartbeating. ``final`` says no attempts were left (job failed)."""

    worker_id: str | None
    final: bool


class JobCancelled(Event, tag="cancelled", frozen=True):
    reason: str | None = None


class JobReleased(Event, tag="released", frozen=True):
    """A worker gave the job back unfinished (graceful shutdown); the attempt does not count."""

    worker_id: str
    reason: str | None = None


class Activity(Event, frozen=True):
    """A worker's activity event. ``worker_id``: the worker that wrote it, when it named itself;
    ``attempt``: the job's attempt number when it was running (both absent in older logs)."""

    payload: Any = None
    worker_id: str | None = None
    attempt: int | None = None


class Started(Activity, tag="started", frozen=True):
    pass


class Progress(Activity, tag="progress", frozen=True):
    pass


class ToolCall(Activity, tag="tool_call", frozen=True):
    pass


class ErrorLogged(Activity, tag="error", frozen=True):
    pass


AnyEvent = (
    JobCreated
    | JobClaimed
    | HeartbeatRecorded
    | JobCompleted
    | JobFailed
    | RetryScheduled
    | LeaseExpired
    | JobCancelled
    | JobReleased
    | Started
    | Progress
    | ToolCall
    | ErrorLogged
)

ACTIVITY_EVENTS: dict[EventType, type[Started | Progress | ToolCall | ErrorLogged]] = {
    EventType.STARTED: Started,
    EventType.PROGRESS: Progress,
    EventType.TOOL_CALL: ToolCall,
    EventType.ERROR: ErrorLogged,
}
_ACTIVITY_CLASSES = tuple(ACTIVITY_EVENTS.values())

_TAGS: dict[type, str] = {cls: cls.__struct_config__.tag for cls in AnyEvent.__args__}
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)
_raw_decoder = msgspec.json.Decoder()

# tag -> function from an old raw dict to the current shape. Empty while the format is at v1.
_UPCASTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def tag_of(event: Event) -> str:
    return _TAGS[type(event)]


def encode_text(event: Event) -> str:
    """The stored form: JSON as TEXT, so ``json_extract(data, '$.x')`` works in the sqlite3
    shell (SQLite reads a BLOB argument as its binary JSONB format instead)."""
    return _encoder.encode(event).decode()


def decode(position: int, event_type: str, data: bytes | str) -> AnyEvent:
    """Decode one stored event, raising `CorruptEvent` naming its position when it cannot be."""
    try:
        upcast = _UPCASTERS.get(event_type)
        if upcast is not None:
            return msgspec.convert(upcast(_raw_decoder.decode(data)), AnyEvent)
        event = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as e:
        raise CorruptEvent(position, event_type, str(e)) from e
    except RecursionError as e:
        # Release 0.1 accepted nesting of any depth (now at most validate.MAX_DEPTH levels);
        # such an event cannot be decoded without exhausting the stack. Reported like any
        # unreadable event, so verify names it and replay stops at it, instead of a
        # RecursionError from deep inside a read.
        why = "its data is nested too deeply to decode (written before nesting was limited)"
        raise CorruptEvent(position, event_type, why) from e
    if tag_of(event) != event_type:
        raise CorruptEvent(position, event_type, f"data says {tag_of(event)!r}")
    return event


def payload_of(event: Event) -> Any:
    """What `JobEvent.payload` shows: the worker's payload, or the lifecycle event's fields."""
    if isinstance(event, _ACTIVITY_CLASSES):
        return event.payload
    return msgspec.structs.asdict(event)


class StoredEvent(msgspec.Struct, frozen=True):
    """An event with its envelope, as the projections see it."""

    position: int
    job_id: str
    version: int
    recorded_at: datetime  # aware UTC: the time of the command that appended it
    event: Event
