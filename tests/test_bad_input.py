"""Bad input gets a `LedgerError` that says what to fix, and writes nothing."""

from __future__ import annotations

from datetime import datetime

import pytest

from ledger import InvalidArgument, Ledger, LedgerError
from tests.conftest import snapshot

CONFIG = {"role": "coder"}


@pytest.fixture
def running(ledger: Ledger) -> str:
    job_id = ledger.create_job(1, CONFIG)
    ledger.claim("w")
    return job_id


BAD_CALLS = {
    "unencodable config": lambda lg, j: lg.create_job(1, {"x": object()}),
    "NaN in config": lambda lg, j: lg.create_job(1, {"x": float("nan")}),
    "non-UTF-8 config": lambda lg, j: lg.create_job(1, {"x": "\udcff"}),
    "deeply nested config": lambda lg, j: lg.create_job(1, _nested(100_000)),
    "string chat id": lambda lg, j: lg.create_job("1", CONFIG),
    "bool chat id": lambda lg, j: lg.create_job(True, CONFIG),
    "huge chat id": lambda lg, j: lg.create_job(2**70, CONFIG),
    "float thread id": lambda lg, j: lg.create_job(1, CONFIG, thread_id=1.5),
    "naive run_at": lambda lg, j: lg.create_job(1, CONFIG, run_at=datetime(2026, 1, 1)),
    "zero max_attempts": lambda lg, j: lg.create_job(1, CONFIG, max_attempts=0),
    "empty queue": lambda lg, j: lg.create_job(1, CONFIG, queue=""),
    "negative limit": lambda lg, j: lg.pending_jobs(-1),
    "negative chat limit": lambda lg, j: lg.jobs_for_chat(1, -5),
    "NaN cost": lambda lg, j: lg.complete(j, "s", "ok", float("nan"), 1),
    "infinite cost": lambda lg, j: lg.complete(j, "s", "ok", float("inf"), 1),
    "negative duration": lambda lg, j: lg.complete(j, "s", "ok", 1.0, -1),
    "unencodable payload": lambda lg, j: lg.log_event(j, "progress", {"x": {1, object()}}),
    "lifecycle type to log_event": lambda lg, j: lg.log_event(j, "completed", {}),
    "unknown event type": lambda lg, j: lg.log_event(j, "nonsense", {}),
    "log_events: one string": lambda lg, j: lg.log_events(j, "progress"),
    "log_events: a dict": lambda lg, j: lg.log_events(j, {"progress": {}}),
    "log_events: not a pair": lambda lg, j: lg.log_events(j, [("progress", {}), ("progress",)]),
    "log_events: lifecycle type last": lambda lg, j: lg.log_events(
        j, [("progress", {})] * 3 + [("completed", {})]
    ),
    "log_events: unencodable payload": lambda lg, j: lg.log_events(
        j, [("progress", {}), ("tool_call", {"x": float("nan")})]
    ),
    "log_events: bad expected version": lambda lg, j: lg.log_events(
        j, [("progress", {})], expected_version=-1
    ),
    "non-string job id": lambda lg, j: lg.heartbeat(12),
    "zero lease": lambda lg, j: lg.claim("w2", lease=0),
    "NaN lease": lambda lg, j: lg.heartbeat(j, lease=float("nan")),
    "empty worker id": lambda lg, j: lg.claim(""),
    "queues as a string": lambda lg, j: lg.claim("w2", queues="default"),
    "unknown type filter": lambda lg, j: lg.job_events(j, types=["bogus"]),
    "spec that is not a dict": lambda lg, j: lg.create_jobs([{"chat_id": 1, "config": {}}, 5]),
}


def _nested(depth: int) -> list:
    root: list = []
    node = root
    for _ in range(depth):
        child: list = []
        node.append(child)
        node = child
    return root


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_raises_ledger_error_and_writes_nothing(
    ledger: Ledger, running: str, name: str
) -> None:
    before = snapshot(ledger.path)
    with pytest.raises(LedgerError) as raised:
        BAD_CALLS[name](ledger, running)
    assert str(raised.value)  # a message a person can read
    assert snapshot(ledger.path) == before
    assert ledger.verify().ok


def test_invalid_argument_names_the_argument(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgument) as raised:
        ledger.create_job("seven", CONFIG)
    assert raised.value.name == "chat_id"
    assert "expected an int" in str(raised.value)


def test_bad_durability_is_refused(db_path: str) -> None:
    with pytest.raises(InvalidArgument, match="durability"):
        Ledger(db_path, durability="yolo")  # type: ignore[arg-type]


def test_hostile_ids_are_just_text(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.get_job("'; DROP TABLE jobs; --") is None
    assert ledger.get_job(job_id) is not None
