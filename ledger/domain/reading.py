"""Stored events as callers read them: rows of the log decoded into public `JobEvent`s.

A full read of the log decodes every event, so this is a hot loop: a reused msgspec decoder per
event type, the `JobEvent` built positionally (keywords cost a third of a microsecond each
time), and no intermediate object per row. It must decode exactly what `events.decode` does:
an event only takes the fast way when its data starts with its own tag, as the ledger writes
it (``{"type":"<tag>"``), because a decoder of one Struct type, unlike the union's, would also
accept data without a tag. Everything else (another first key, an unknown type, an upcast tag,
data that does not decode, a time that does not parse) goes the careful way, `events.decode`,
which decodes it alike or raises the same `CorruptEvent`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

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


# How one event type becomes a `JobEvent` (a tuple: unpacked once per row): how its data
# starts when the ledger wrote it, its decoder, its `EventType`, whether the payload is its
# ``payload`` field (activity) rather than all its fields as a dict, and whether it has a
# ``worker_id`` and an ``attempt`` field.
_Reader = tuple[bytes, Callable[[Any], Any], EventType, bool, bool, bool]


def _all_readers() -> dict[str, _Reader]:
    out: dict[str, _Reader] = {}
    for cls in ev.AnyEvent.__args__:
        tag = cls.__struct_config__.tag
        fields = cls.__struct_fields__
        out[tag] = (
            b'{"type":' + msgspec.json.encode(tag),
            msgspec.json.Decoder(cls).decode,
            EventType(tag),
            cls in _ACTIVITY,
            "worker_id" in fields,
            "attempt" in fields,
        )
    return out


_ALL_READERS = _all_readers()
_asdict = msgspec.structs.asdict
FAILURES = _FAILURES


def _readers() -> dict[str, _Reader]:
    """The readers of every tag without an upcaster (asked for at each read: an old shape is
    rewritten before it decodes, which only the careful way does)."""
    upcasters = ev._UPCASTERS
    if not upcasters:
        return _ALL_READERS
    return {tag: r for tag, r in _ALL_READERS.items() if tag not in upcasters}


def fast_decoders() -> dict[str, tuple[bytes, Callable[[Any], ev.Event]]]:
    """tag -> (how its data starts when the ledger wrote it, its decoder): for a backend's own
    fast loop over the log (replay), under the rule of the module docstring; ask again for
    each read."""
    return {tag: (reader[0], reader[1]) for tag, reader in _readers().items()}


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
    ``careful`` for a row that the fast way could not read."""
    out: list[JobEvent] = []
    append = out.append
    readers = _readers()
    for row in rows:
        position, job_id, version, tag, data, stored_at = row
        reader = readers.get(tag)
        if reader is None or type(data) is not bytes:
            append(to_job_event(row, careful))
            continue
        prefix, decode, kind, activity, has_worker, has_attempt = reader
        if not data.startswith(prefix):
            append(to_job_event(row, careful))
            continue
        try:
            event = decode(data)
            at = time(stored_at)
        except _FAILURES:
            append(to_job_event(row, careful))
            continue
        payload = event.payload if activity else _asdict(event)
        worker = event.worker_id if has_worker else None
        attempt = event.attempt if has_attempt else None
        append(JobEvent(position, job_id, version, kind, payload, at, worker, attempt))
    return out
