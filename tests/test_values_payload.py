"""Law 9 for configs and payloads: what is read back equals what was written, or the write is
refused before anything is stored.

A config or payload holds JSON-native values only (str, int64, finite float, bool, None, list,
dict with str keys, at most 64 levels, at most 16 MiB). Everything else is refused on every way
in (`create_job`, `create_jobs`, `log_event`) with `InvalidArgument`, nothing written, `verify`
green; everything allowed reads back equal and of the same type.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import apsw
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import CorruptEvent, InvalidArgument, Ledger
from ledger.domain.validate import INT64_MAX, INT64_MIN, MAX_DEPTH, MAX_PAYLOAD_BYTES
from tests.conftest import event_count, run_cli, snapshot, table_dump

DATA = Path(__file__).parent / "data"


class Point(msgspec.Struct):
    x: float
    y: float


@dataclasses.dataclass
class Pair:
    a: int
    b: int


class Color(enum.StrEnum):
    RED = "red"


def nested(levels: int) -> Any:
    """``levels`` lists, one inside the other."""
    root: list[Any] = []
    node = root
    for _ in range(levels - 1):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


def self_containing() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


NAN, INF = float("nan"), float("inf")

# name -> (value, a fragment the message must hold: the path and/or the advice)
REFUSED: dict[str, tuple[Callable[[], Any], str]] = {
    "datetime": (lambda: {"when": datetime(2026, 1, 1, tzinfo=UTC)}, "at $.when"),
    "date": (lambda: {"day": date(2026, 1, 1)}, "isoformat"),
    "timedelta": (lambda: {"took": timedelta(seconds=3)}, "total_seconds"),
    "set": (lambda: {"tags": {"a", "b"}}, "pass a list"),
    "frozenset": (lambda: [frozenset({1})], "at $[0]"),
    "tuple": (lambda: {"xy": [0, (1, 2)]}, "at $.xy[1]"),
    "top-level tuple": (lambda: (1, 2), "read back as a list"),
    "bytes": (lambda: {"blob": b"\x00\x01"}, "base64"),
    "bytearray": (lambda: [bytearray(b"x")], "base64"),
    "int key": (lambda: {1: "a"}, "the key 1"),
    "colliding keys": (lambda: {1: "a", "1": "b"}, "collide"),
    "None key": (lambda: {"a": {None: 1}}, "at $.a"),
    "tuple key": (lambda: {(1, 2): "a"}, "not a str"),
    "Raw, valid JSON": (lambda: {"r": msgspec.Raw(b"[1, 2]")}, "msgspec.json.decode"),
    "Raw, invalid JSON": (lambda: {"r": msgspec.Raw(b"{not json")}, "at $.r"),
    "Raw at the top": (lambda: msgspec.Raw(b"{"), "msgspec.json.decode"),
    "Struct": (lambda: {"p": Point(1.0, 2.0)}, "msgspec.to_builtins"),
    "NaN in a nested Struct": (lambda: {"ps": [Point(NAN, 0.0)]}, "at $.ps[0]"),
    "dataclass": (lambda: {"pair": Pair(1, 2)}, "dataclasses.asdict"),
    "str enum": (lambda: {"color": Color.RED}, ".value"),
    "dict subclass": (lambda: {"d": collections.OrderedDict(a=1)}, "dict(value)"),
    "NaN in a dict": (lambda: {"a": {"b": NAN}}, "at $.a.b"),
    "NaN in a list": (lambda: [1, [2.0, NAN]], "at $[1][1]"),
    "NaN at the top": (lambda: NAN, "NaN or infinity"),
    "infinity": (lambda: {"x": INF}, "at $.x"),
    "minus infinity": (lambda: [-INF], "at $[0]"),
    "int above int64": (lambda: {"n": INT64_MAX + 1}, "int64"),
    "int below int64": (lambda: {"n": [INT64_MIN - 1]}, "at $.n[0]"),
    "too deep": (lambda: nested(MAX_DEPTH + 1), f"more than {MAX_DEPTH} levels"),
    "far too deep": (lambda: nested(100_000), f"more than {MAX_DEPTH} levels"),
    "contains itself": (self_containing, "contains itself"),
    "lone surrogate in a key": (lambda: {"ok": {"\udcff": 1}}, "at $.ok"),
    "lone surrogate in a value": (lambda: {"text": ["fine", "\ud800"]}, "at $.text[1]"),
    "object": (lambda: {"o": object()}, "only str, int, float"),
    "too big": (lambda: {"text": "x" * MAX_PAYLOAD_BYTES}, "the limit is"),
}


def _via_create_job(ledger: Ledger, job_id: str, value: Any) -> object:
    return ledger.create_job(1, value)


def _via_create_jobs(ledger: Ledger, job_id: str, value: Any) -> object:
    # the good spec first: all or none, so it must not be written either
    return ledger.create_jobs(
        [{"chat_id": 1, "config": {"ok": 1}}, {"chat_id": 1, "config": value}]
    )


def _via_log_event(ledger: Ledger, job_id: str, value: Any) -> object:
    return ledger.log_event(job_id, "progress", value)


WAYS_IN = {
    "create_job": (_via_create_job, "config"),
    "create_jobs": (_via_create_jobs, "specs[1].config"),  # the spec that holds it
    "log_event": (_via_log_event, "payload"),
}


@pytest.fixture
def job_id(ledger: Ledger) -> str:
    return ledger.create_job(1, {"role": "coder"})


@pytest.mark.parametrize("way", sorted(WAYS_IN))
@pytest.mark.parametrize("kind", list(REFUSED))
def test_a_value_that_is_not_json_native_is_refused_and_nothing_is_written(
    ledger: Ledger, job_id: str, kind: str, way: str
) -> None:
    make, fragment = REFUSED[kind]
    call, argument = WAYS_IN[way]
    before = snapshot(ledger.path)
    with pytest.raises(InvalidArgument) as raised:
        call(ledger, job_id, make())
    assert raised.value.name == argument
    assert fragment in str(raised.value)
    assert snapshot(ledger.path) == before
    assert ledger.verify().ok


def test_colliding_keys_never_reach_the_log(ledger: Ledger, job_id: str) -> None:
    """Before: ``{1: "a", "1": "b"}`` was stored as two "1" keys, the projection kept one and the
    fold of the log another; now neither is written."""
    with pytest.raises(InvalidArgument):
        ledger.log_event(job_id, "progress", {1: "a", "1": "b"})
    assert [e.type for e in ledger.job_events(job_id)] == ["created"]
    assert ledger.verify().ok


# -- what is allowed reads back equal, and of the same type ------------------------------------

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, INT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),  # hypothesis' text never holds lone surrogates
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def assert_same(read: Any, written: Any, path: str = "$") -> None:
    """Equal and of the very same types all the way down (1, 1.0 and True are all different;
    so are 0.0 and -0.0)."""
    assert type(read) is type(written), f"{path}: {type(read)} is not {type(written)}"
    if isinstance(written, dict):
        assert list(read) == list(written), f"{path}: keys differ"
        for key, value in written.items():
            assert_same(read[key], value, f"{path}.{key}")
    elif isinstance(written, list):
        assert len(read) == len(written), f"{path}: lengths differ"
        for i, value in enumerate(written):
            assert_same(read[i], value, f"{path}[{i}]")
    elif isinstance(written, float):
        assert math.copysign(1.0, read) == math.copysign(1.0, written) and read == written
    else:
        assert read == written


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=json_values)
def test_json_native_values_read_back_equal_and_of_the_same_type(
    ledger: Ledger, value: Any
) -> None:
    job_id = ledger.create_job(1, value)
    (batch_id,) = ledger.create_jobs([{"chat_id": 2, "config": value}])
    ledger.log_event(job_id, "progress", value)
    for read in (ledger.get_job(job_id), ledger.get_job(batch_id)):
        assert read is not None
        assert_same(read.config, value)
    events = ledger.job_events(job_id)
    assert_same(events[0].payload["config"], value)
    assert_same(events[1].payload, value)
    assert ledger.verify().ok


EDGE_VALUES = {
    "int64 bounds": [INT64_MIN, INT64_MAX, 0, -1],
    "1, 1.0 and True": {"int": 1, "float": 1.0, "bool": True, "zero": 0, "false": False},
    "float extremes": [1.7976931348623157e308, 5e-324, -0.0, 0.1],
    "exactly 64 levels": nested(MAX_DEPTH),
    "odd text": {"": "", "a b": "\x00", "é漢字🙂": "\u2028\ufeff", '"quoted"': "\\"},
    "a bare str": "just text",
    "None": None,
    "empty containers": [[], {}, [[]], {"a": {}}],
}


@pytest.mark.parametrize("name", list(EDGE_VALUES))
def test_edge_values_read_back_as_written(ledger: Ledger, name: str) -> None:
    value = EDGE_VALUES[name]
    job_id = ledger.create_job(1, value)
    ledger.log_event(job_id, "tool_call", value)
    job = ledger.get_job(job_id)
    assert job is not None
    assert_same(job.config, value)
    assert_same(ledger.job_events(job_id)[1].payload, value)
    assert_same(ledger.read_all()[1].payload, value)
    ledger.replay()
    assert_same(ledger.get_job(job_id).config, value)  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_the_largest_allowed_payload_is_stored(ledger: Ledger, job_id: str) -> None:
    text = "x" * (MAX_PAYLOAD_BYTES - 2)  # plus the two quotes: exactly the limit
    ledger.log_event(job_id, "progress", text)
    assert ledger.job_events(job_id)[1].payload == text
    assert ledger.verify().ok


# -- a log written before the rule: very deep JSON is a CorruptEvent, never a RecursionError ----


def _append_deep_event(path: str, job_id: str, levels: int) -> int:
    """What release 0.1 could write: an activity event nested deeper than Python can decode,
    appended through the same INSERT as the store's (the append-only triggers allow INSERT)."""
    data = '{"type":"progress","payload":' + "[" * levels + "]" * levels + "}"
    conn = apsw.Connection(path)
    try:
        version = conn.execute("SELECT max(version) FROM events WHERE job_id = ?", (job_id,)).get
        conn.execute(
            "INSERT INTO events (job_id, version, type, data, recorded_at) "
            "VALUES (?, ?, 'progress', ?, '2026-01-01T00:00:00.000000+00:00')",
            (job_id, version + 1, data),
        )
        return int(conn.last_insert_rowid())
    finally:
        conn.close()


def test_deep_json_in_a_0_1_log_is_reported_not_a_recursion_error(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    shutil.copy(DATA / "ledger-0.1.0.db", path)
    with Ledger(path) as ledger:  # upgraded and caught up before the deep row arrives
        job_id = ledger.read_all()[0].job_id
        position = _append_deep_event(path, job_id, 100_000)
        before = table_dump(path)
        with pytest.raises(CorruptEvent) as raised:
            ledger.replay()
        assert raised.value.position == position
        assert "nested too deeply" in str(raised.value)
        assert table_dump(path) == before  # the old projection stands
        report = ledger.verify()
        assert not report.ok
        assert report.differences[0].position == position
        with pytest.raises(CorruptEvent):
            ledger.read_all()
        with pytest.raises(CorruptEvent):
            ledger.job_events(job_id)
    with pytest.raises(CorruptEvent):  # reopening catches up through the same decode
        Ledger(path)
    with Ledger(path, readonly=True) as reader:
        assert reader.verify().differences[0].position == position
    count = event_count(path)
    for command in (["verify"], ["events"], ["replay"]):
        result = run_cli(*command, db=path)
        assert result.returncode == 1, command
        assert "Traceback" not in result.stderr, command
        assert str(position) in result.stdout + result.stderr, command
    assert event_count(path) == count
