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
from typing import Any, ClassVar

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
    timeout: float | None = None  # seconds an attempt may run before the worker interrupts it
    by: str | None = None  # the operator who enqueued it (`ledger enqueue --by`), when one did
    parent_id: str | None = None  # the job that spawned it (a subagent's parent)
    max_cost_cents: float | None = None  # what it may spend at most; a claim reserves it


class JobClaimed(Event, tag="claimed", frozen=True):
    """``host``, ``boot_id``, ``pid``, ``process_start``: where the holder runs (`ledger.holder`;
    absent in older logs and where the platform cannot tell), so a claim on the same host can
    see that the holder process is gone and rescue the job at once."""

    worker_id: str
    lease_expires_at: datetime
    host: str | None = None
    boot_id: str | None = None
    pid: int | None = None
    process_start: int | None = None  # clock ticks since boot (/proc/<pid>/stat field 22)


class HeartbeatRecorded(Event, tag="heartbeat", frozen=True):
    worker_id: str | None = None
    lease_expires_at: datetime | None = None


class JobCompleted(Event, tag="completed", frozen=True):
    summary: str
    result_status: str
    cost_cents: float
    duration_seconds: int
    worker_id: str | None = None
    result: Any = None  # the handler's return value (JSON-native), absent in older logs


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
    holder_gone: bool = False  # rescued because the holder's process is gone, not by the clock


class JobCancelled(Event, tag="cancelled", frozen=True):
    reason: str | None = None
    by: str | None = None  # who cancelled it, when an operator named themselves
    cause: str | None = None  # the ancestor whose cancel cascaded to this job


class JobRetried(Event, tag="retried", frozen=True):
    """An operator sent a failed or cancelled job back to pending for one more attempt
    (its used attempts stay counted; ``max_attempts`` rises to allow one more if needed).
    ``by``: the operator who asked (None when the caller did not name one)."""

    by: str | None = None
    reason: str | None = None


class JobReleased(Event, tag="released", frozen=True):
    """A worker gave the job back unfinished (graceful shutdown); the attempt does not count."""

    worker_id: str
    reason: str | None = None


class StepRecorded(Event, tag="step", frozen=True):
    """A durable step of a running attempt finished: ``ctx.step(name, fn)`` returns ``result``
    instead of running ``fn`` again, in this attempt and every retry of the job."""

    name: str
    result: Any = None
    worker_id: str | None = None
    attempt: int | None = None


class JobCharged(Event, tag="charged", frozen=True):
    """Spending of a running job (`Ledger.charge`): its cost grows by ``cents``."""

    cents: float
    detail: Any = None
    worker_id: str | None = None
    attempt: int | None = None


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


class StreamEvent(Event, frozen=True):
    """Base of an event that belongs to a stream other than a job's: a queue's (and, later, a
    chat's). Such a stream lives in the same events table, its id (the ``job_id`` column) is
    ``<stream_prefix><name>`` and its versions run 1, 2, 3, ... like a job's, but it has no
    created event and the jobs fold skips it. A subclass sets ``stream_prefix``."""

    stream_prefix: ClassVar[str] = ""


class QueueEvent(StreamEvent, frozen=True):
    """An operator's action on a whole queue; stream id ``queue:<name>``."""

    stream_prefix: ClassVar[str] = "queue:"
    by: str | None = None  # the operator who acted (None when the caller did not name one)
    reason: str | None = None


class QueuePaused(QueueEvent, tag="queue_paused", frozen=True):
    """No worker claims a job of this queue until it is resumed (running jobs carry on)."""


class QueueResumed(QueueEvent, tag="queue_resumed", frozen=True):
    """The queue's jobs are claimable again."""


class ChatEvent(StreamEvent, frozen=True):
    """An event of a whole chat; stream id ``chat:<chat_id>``."""

    stream_prefix: ClassVar[str] = "chat:"


class BudgetSet(ChatEvent, tag="budget_set", frozen=True):
    """A chat's spending limit (None: unlimited). Claims and charges of its jobs keep to it."""

    chat_id: int
    limit_cents: float | None = None


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
    | JobCharged
    | BudgetSet
    | JobRetried
    | QueuePaused
    | QueueResumed
    | Started
    | Progress
    | ToolCall
    | ErrorLogged
    | StepRecorded
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


QUEUE_STREAM = QueueEvent.stream_prefix
CHAT_STREAM = ChatEvent.stream_prefix


def chat_stream(chat_id: int) -> str:
    """The stream id of a chat's own events (its budget)."""
    return f"{CHAT_STREAM}{chat_id}"


def queue_stream(queue: str) -> str:
    """The stream id of a queue's own events."""
    return QUEUE_STREAM + queue


def _stream_prefixes() -> tuple[str, ...]:
    found = {cls.stream_prefix for cls in AnyEvent.__args__ if issubclass(cls, StreamEvent)}
    return tuple(sorted(p for p in found if p))


_STREAM_PREFIXES = _stream_prefixes()  # computed once: replay asks for every event


def stream_prefixes() -> tuple[str, ...]:
    """The id prefixes of every non-job stream kind (a job's id never starts with one)."""
    return _STREAM_PREFIXES


def stream_problem(stream_id: str, event: Event) -> str | None:
    """Why ``event`` cannot belong to the stream ``stream_id``, or None: a stream event must be
    in a stream of its kind, a job's event must not be in one."""
    if isinstance(event, StreamEvent):
        if not stream_id.startswith(event.stream_prefix):
            return f"a {tag_of(event)} event belongs to a {event.stream_prefix}... stream"
        return None
    if not stream_id.startswith(_STREAM_PREFIXES):  # a job's id: the common case
        return None
    prefix = next(p for p in _STREAM_PREFIXES if stream_id.startswith(p))
    return f"a job's {tag_of(event)} event cannot be in the {prefix}... stream"


def tag_of(event: Event) -> str:
    return _TAGS[type(event)]


def encode_text(event: Event) -> str:
    """The stored form: JSON as TEXT, so ``json_extract(data, '$.x')`` works in the sqlite3
    shell (SQLite reads a BLOB argument as its binary JSONB format instead)."""
    return _encoder.encode(event).decode()


# `encode_text` before its ``.decode()``, and `tag_of` as its table: for an append, which hashes
# the bytes (`chain.link`) and stores the text, without two calls around them per event.
encode_bytes: Callable[[Event], bytes] = _encoder.encode
TAGS: dict[type, str] = _TAGS


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
