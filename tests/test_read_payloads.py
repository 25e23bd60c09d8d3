"""The fast decode of a read (`domain.reading.to_job_events`) reads every event type exactly as
the careful decode (`reading.to_job_event`: `events.decode`, then `events.payload_of`) reads it,
field by field: the same payload (the same keys in the same order, defaults included, values of
the same types: a time stays a datetime, an integer given for a float becomes a float), the same
worker and attempt, or the same `CorruptEvent`. Each type's data is varied around what the
ledger writes (only required fields, every field, wrong types, nulls, missing, duplicate and
unknown keys, a second tag), as bytes (SQLite) and as text (PostgreSQL); and a time shared by
consecutive rows is parsed once but reads back as each row's own."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec
import pytest

from ledger import CorruptEvent
from ledger.backends.sqlite.events_table import _read_time
from ledger.domain import events as ev
from ledger.domain import reading
from ledger.domain.model import JobEvent

_AT = "2026-01-01T00:00:00.000000+00:00"
_TIME = "2026-01-02T03:04:05.123456+00:00"
_encode = msgspec.json.encode
_fromiso = datetime.fromisoformat


def _sample(annotation: Any) -> Any:
    """A JSON value of ``annotation``'s type (its non-None member for an optional)."""
    if annotation is Any:
        return {"k": [1, 2.5, None, "x"], "type": "created"}
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _sample(next(a for a in typing.get_args(annotation) if a is not type(None)))
    samples = {int: 5, float: 2.5, str: "s", bool: True, datetime: _TIME}
    return samples[annotation]


def _variants(cls: type[ev.Event]) -> Iterator[tuple[str, str | None, list[tuple[str, Any]]]]:
    """(name, the tag first or None, the data's keys and values after it) around ``cls``'s
    fields."""
    tag = cls.__struct_config__.tag
    fields = msgspec.structs.fields(cls)
    required = [(f.name, _sample(f.type)) for f in fields if f.required]
    every = [(f.name, _sample(f.type)) for f in fields]
    yield "no tag", None, every
    yield "the tag last", None, [*every, ("type", tag)]
    yield "the tag between", None, [*every[:1], ("type", tag), *every[1:]]
    yield "another tag last", None, [*every, ("type", "created" if tag != "created" else "step")]
    for name, items in _tagged_variants(cls, required, every):
        yield name, tag, items


def _tagged_variants(
    cls: type[ev.Event], required: list[tuple[str, Any]], every: list[tuple[str, Any]]
) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    fields = msgspec.structs.fields(cls)
    yield "required only", required
    yield "every field", every
    yield "ints for floats", [(k, 3 if type(v) is float else v) for k, v in every]
    yield "unknown key", [*required, ("no_such_field", 1)]
    yield "a second tag, the same", [*required, ("type", cls.__struct_config__.tag)]
    yield "a second tag, another", [*required, ("type", "no_such_type")]
    for f in fields:
        others = [(k, v) for k, v in every if k != f.name]
        yield f"{f.name} missing", others
        yield f"{f.name} null", [*others, (f.name, None)]
        yield f"{f.name} a list", [*others, (f.name, [1])]
        yield f"{f.name} twice", [*every, (f.name, _sample(f.type))]
        yield f"{f.name} twice, then wrong", [*every, (f.name, [1])]


def _data(tag: str | None, items: list[tuple[str, Any]]) -> str:
    """``{"type":<tag>, ...}`` with keys repeated as given (a dict would merge them); no tag
    for None (then give it among ``items``, or leave it out)."""
    pairs = [("type", tag)] if tag is not None else []
    pairs += items
    return "{" + ",".join(f"{_encode(k).decode()}:{_encode(v).decode()}" for k, v in pairs) + "}"


def _read(read: Any) -> tuple[str, Any]:
    try:
        return "read", read()
    except CorruptEvent as e:
        return "refused", (e.position, str(e))


def _same_event(fast: JobEvent, careful: JobEvent) -> None:
    assert fast == careful
    assert repr(fast) == repr(careful)
    if isinstance(careful.payload, dict):
        assert list(fast.payload) == list(careful.payload)
        assert [type(v) for v in fast.payload.values()] == [
            type(v) for v in careful.payload.values()
        ]
    assert type(fast.payload) is type(careful.payload)


_CASES = [
    pytest.param(cls, first, items, id=f"{cls.__struct_config__.tag}: {name}")
    for cls in ev.AnyEvent.__args__
    for name, first, items in _variants(cls)
]


@pytest.mark.parametrize(("cls", "first", "items"), _CASES)
def test_every_type_reads_as_the_careful_decode_reads_it(
    cls: type[ev.Event], first: str | None, items: list[tuple[str, Any]]
) -> None:
    tag = cls.__struct_config__.tag
    text = _data(first, items)
    name = text
    for data in (text.encode(), text):  # SQLite reads bytes, PostgreSQL text
        row = (9, "job", 2, tag, data, _AT)
        careful = _read(lambda: reading.to_job_event(row, _read_time))  # noqa: B023
        fast = _read(lambda: reading.to_job_events([row], _fromiso, _read_time)[0])  # noqa: B023
        assert fast[0] == careful[0], (name, data)
        if careful[0] == "read":
            _same_event(fast[1], careful[1])
        else:
            assert fast[1] == careful[1]


def test_the_payload_of_one_event_is_not_shared_with_another() -> None:
    """Payloads built from one dict of defaults are copies: changing one changes no other."""
    data = _data("created", [("chat_id", 1), ("config", {"a": 1})]).encode()
    rows = [(i, f"job{i}", 1, "created", data, _AT) for i in (1, 2)]
    first, second = reading.to_job_events(rows, _fromiso, _read_time)
    first.payload["queue"] = "changed"
    first.payload["config"]["a"] = 2
    assert second.payload["queue"] == "default" and second.payload["config"] == {"a": 1}
    again = reading.to_job_events(rows, _fromiso, _read_time)[0]
    assert again.payload["queue"] == "default"


def test_a_time_shared_by_consecutive_rows_reads_back_as_each_rows_own() -> None:
    """Times equal to the row before's are parsed once; one that does not parse is refused
    even right after rows whose time did, and the rows after it read their own."""
    data = b'{"type":"progress","payload":1}'
    times = [_AT, _AT, _TIME, _TIME, _AT, "2026-01-01T00:00:00+00:00"]
    rows = [(i, "job", i, "progress", data, t) for i, t in enumerate(times, start=1)]
    fast = reading.to_job_events(rows, _fromiso, _read_time)
    assert fast == [reading.to_job_event(row, _read_time) for row in rows]
    assert [e.created_at for e in fast] == [_fromiso(t) for t in times]
    bad = [*rows[:2], (3, "job", 3, "progress", data, "yesterday"), *rows[2:]]
    with pytest.raises(CorruptEvent, match="its recorded_at 'yesterday'") as raised:
        reading.to_job_events(bad, _fromiso, _read_time)
    assert raised.value.position == 3


def test_times_already_datetimes_read_as_given() -> None:
    """PostgreSQL hands times over as datetimes: equal ones in a row read back alike."""
    data = '{"type":"heartbeat","worker_id":"w"}'
    moments = [_fromiso(_AT), _fromiso(_AT), _fromiso(_TIME)]
    rows = [(i, "job", i, "heartbeat", data, m) for i, m in enumerate(moments, start=1)]
    same = reading.to_job_events(rows, lambda m: m, lambda p, t, m: m)
    assert [e.created_at for e in same] == moments
    assert [e.worker_id for e in same] == ["w", "w", "w"]


def test_equal_datetimes_in_other_zones_keep_their_own() -> None:
    """Datetimes equal as instants but in different zones are not one time: each row keeps
    its own (only stored text that is equal is parsed once)."""
    from datetime import timedelta, timezone

    data = '{"type":"heartbeat","worker_id":"w"}'
    utc = _fromiso(_AT)
    plus2 = utc.astimezone(timezone(timedelta(hours=2)))
    rows = [(i, "job", i, "heartbeat", data, m) for i, m in enumerate((utc, plus2), start=1)]
    read = reading.to_job_events(rows, lambda m: m, lambda p, t, m: m)
    assert [e.created_at.utcoffset() for e in read] == [timedelta(0), timedelta(hours=2)]
