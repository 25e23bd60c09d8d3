"""Stored events as callers read them: rows of the log decoded into public `JobEvent`s.

A full read of the log decodes every event, so this is a hot loop: a reused msgspec decoder per
event type, the `JobEvent` built positionally (keywords cost a third of a microsecond each
time), and no intermediate object per row. It must decode exactly what `events.decode` does.
A decoder of one tagged Struct type, unlike the union's, would accept data without a tag, so
each type's decoder here is of a union that requires it: the type and `_Untagged`, which no data
decodes to (a tag of ``{"type":"<tag>"`` anywhere in the object, as the union reads it; it
replaced a check that the data starts with the tag, which cost more than the decode's own
dispatch). Everything else (an unknown type, an upcast tag, data that does not decode, a time
that does not parse) goes the careful way, `events.decode`, which decodes it alike or raises the
same `CorruptEvent`. `tests/test_read_payloads.py` holds the two ways equal, type by type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired, Required, TypedDict

import msgspec

from . import events as ev
from .model import EventType, JobEvent

# (position, job_id, version, type, data, recorded_at as the backend stores it)
Row = tuple[int, str, int, str, Any, Any]
TimeOf = Callable[[Any], datetime]
"""Turns a stored time into an aware datetime, raising ValueError or TypeError when it cannot
(for the fast way: a C function such as ``datetime.fromisoformat``)."""
CarefulTime = Callable[[int, str, Any], datetime]
"""`TimeOf` for the careful way: given the row's position and type, it raises the backend's
`CorruptEvent` that names the event."""

_ACTIVITY = frozenset(ev.ACTIVITY_EVENTS.values())
_FAILURES = (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError, RecursionError)


# How one event type becomes a `JobEvent` (a tuple: unpacked once per row): its decoder, its
# `EventType`, whether the payload is its ``payload`` field (activity) rather than all its
# fields as a dict, the defaults of a sparse type (below; None for the others), and whether it
# has a ``worker_id`` and an ``attempt`` field.
_Reader = tuple[Callable[[Any], Any], EventType, bool, dict[str, Any] | None, bool, bool]


class _Untagged(msgspec.Struct, frozen=True, tag_field="type", tag="\x00"):
    """What no data decodes to (its one field admits no value): in a union with one event
    type, it makes the decoder require the tag, as the union of every type does."""

    never: Annotated[int, msgspec.Meta(ge=1, le=0)]


# A lifecycle type with at least this many fields that have a default is *sparse*: the ledger
# writes only the fields that differ from their defaults (``omit_defaults``), so its data holds
# few of its fields (a created event: 2 of 13). Its payload is decoded as a dict of the fields
# present (a TypedDict of the same field types: validated alike) merged over a dict of every
# default, in field order: 1.10 against 1.29 us for a created event decoded to a Struct and
# then `msgspec.structs.asdict`, which pays for all 13 fields. Every other type has most of its
# fields in its data, and the Struct then asdict was the cheaper (by 10-35%, each measured).
_SPARSE_DEFAULTS = 8


def _payload_decoder(cls: type[ev.Event]) -> tuple[Callable[[Any], Any], dict[str, Any]] | None:
    """For a sparse type: a decoder of its data to a dict of the fields present (with the tag,
    required and checked as the union checks it), and the dict its payload starts from (the tag
    first, to be deleted, then every field in order, a required one as None until the data sets
    it)."""
    fields = msgspec.structs.fields(cls)
    if sum(not f.required for f in fields) < _SPARSE_DEFAULTS:
        return None
    if any(f.default_factory is not msgspec.NODEFAULT for f in fields):
        return None  # a default built per event: not one dict's value shared by every payload
    tag = cls.__struct_config__.tag
    keys: dict[str, Any] = {"type": Required[Literal[tag]]}
    start: dict[str, Any] = {"type": None}
    for f in fields:
        keys[f.name] = Required[f.type] if f.required else NotRequired[f.type]
        start[f.name] = None if f.required else f.default
    present = TypedDict(f"_{cls.__name__}Fields", keys)  # type: ignore[misc]
    return msgspec.json.Decoder(present).decode, start


# tag -> the decoder of its Struct that requires the tag (a union with `_Untagged`)
_TAGGED: dict[str, Callable[[Any], Any]] = {
    cls.__struct_config__.tag: msgspec.json.Decoder(cls | _Untagged).decode
    for cls in ev.AnyEvent.__args__
}


def _all_readers() -> dict[str, _Reader]:
    out: dict[str, _Reader] = {}
    for cls in ev.AnyEvent.__args__:
        tag = cls.__struct_config__.tag
        fields = cls.__struct_fields__
        activity = cls in _ACTIVITY
        sparse = None if activity else _payload_decoder(cls)
        decode, defaults = sparse or (_TAGGED[tag], None)
        out[tag] = (
            decode,
            EventType(tag),
            activity,
            defaults,
            "worker_id" in fields,
            "attempt" in fields,
        )
    return out


_ALL_READERS = _all_readers()
_asdict = msgspec.structs.asdict
FAILURES = _FAILURES
_NO_TEXT = object()  # no stored time seen yet (equal to none)


def _readers() -> dict[str, _Reader]:
    """The readers of every tag without an upcaster (asked for at each read: an old shape is
    rewritten before it decodes, which only the careful way does)."""
    upcasters = ev._UPCASTERS
    if not upcasters:
        return _ALL_READERS
    return {tag: r for tag, r in _ALL_READERS.items() if tag not in upcasters}


def fast_decoders() -> dict[str, Callable[[Any], ev.Event]]:
    """tag -> the decoder of its Struct, which requires the tag as the union of every type does
    (see the module docstring): for a backend's own fast loop over the log (replay), which
    takes the careful way, `events.decode`, for data this decoder refuses; ask again for each
    read (a tag with an upcaster is left out: only the careful way rewrites an old shape)."""
    upcasters = ev._UPCASTERS
    if not upcasters:
        return _TAGGED
    return {tag: decode for tag, decode in _TAGGED.items() if tag not in upcasters}


def to_job_event(row: Row, time: CarefulTime) -> JobEvent:
    """One row the careful way: `events.decode` and ``time`` raise a `CorruptEvent` naming it."""
    position, job_id, version, tag, data, stored_at = row
    event = ev.decode(position, tag, data)
    at = time(position, tag, stored_at)
    worker = getattr(event, "worker_id", None)
    attempt = getattr(event, "attempt", None)
    kind = EventType(tag)
    return JobEvent(position, job_id, version, kind, ev.payload_of(event), at, worker, attempt)


def to_job_events(rows: Iterable[Row], time: TimeOf, careful: CarefulTime) -> list[JobEvent]:
    """Rows in the order given, decoded (see the module docstring): ``time`` the fast way,
    ``careful`` for a row that the fast way could not read. A stored time equal to the row
    before's is not parsed again (a command stamps all its events with one time: a batch of
    creates, a claim's events); its datetime, immutable, is shared."""
    out: list[JobEvent] = []
    append = out.append
    readers = _readers()
    last_text: Any = _NO_TEXT
    at: Any = None
    for row in rows:
        position, job_id, version, tag, data, stored_at = row
        reader = readers.get(tag)
        if reader is None:
            append(to_job_event(row, careful))
            continue
        decode, kind, activity, defaults, has_worker, has_attempt = reader
        try:
            decoded = decode(data)
            if stored_at != last_text or type(stored_at) is not str:
                at = time(stored_at)
                last_text = stored_at
        except _FAILURES:
            append(to_job_event(row, careful))
            continue
        if activity:
            payload = decoded.payload
            append(
                JobEvent(
                    position, job_id, version, kind, payload, at, decoded.worker_id, decoded.attempt
                )
            )
            continue
        if defaults is None:
            payload = _asdict(decoded)
        else:
            payload = defaults | decoded
            del payload["type"]
        worker = payload["worker_id"] if has_worker else None
        attempt = payload["attempt"] if has_attempt else None
        append(JobEvent(position, job_id, version, kind, payload, at, worker, attempt))
    return out
