"""Group 9: the cost of the hash chain on appends, before/after in the same run.

"Before" is the append as it was without the chain (``INSERT`` without a position or hash,
no head read), swapped into the SQLite backend for its calls only; "after" is the backend as
it is (read the head's hash once per transaction, SHA-256 per event). The two alternate call by
call on one ledger file (``paired``), so a noisy machine hits both alike; the ledger entry
records the unchained median as ``paired_raw_median``, so `report.py` prints the ratio like
its other groups. The promise: appending stays within 5% of its speed without the chain.

    python -m pytest benchmarks/test_chain.py --benchmark-only
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import apsw
import pytest

from benchmarks.conftest import CONFIG, size
from ledger import Ledger
from ledger.backends.sqlite import backend as sqlite_backend
from ledger.backends.sqlite import events_table
from ledger.domain import events as ev
from ledger.domain.events import StoredEvent
from ledger.errors import ConcurrencyError

ROUNDS = {"full": size(400, 3), "normal": size(3000, 3)}
_UNCHAINED_INSERT = (
    "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?)"
)


def _append_unchained(
    tx: sqlite_backend.SqliteTransaction,
    job_id: str,
    expected_version: int,
    new: Sequence[ev.Event],
    at: datetime,
) -> list[StoredEvent]:
    """The append of store schema 1, verbatim but for the column list: no head, no hash."""
    conn = tx.conn
    stored = []
    version = expected_version
    text = events_table.to_text(at)
    for event in new:
        version += 1
        try:
            conn.execute(
                _UNCHAINED_INSERT, (job_id, version, ev.tag_of(event), ev.encode_text(event), text)
            )
        except apsw.ConstraintError as e:
            raise ConcurrencyError(job_id, expected_version, version - 1) from e
        stored.append(StoredEvent(conn.last_insert_rowid(), job_id, version, at, event))
    return stored


_CHAINED = sqlite_backend.SqliteTransaction.append


def _unchained(call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        sqlite_backend.SqliteTransaction.append = _append_unchained  # type: ignore[method-assign,assignment]
        try:
            return call()
        finally:
            sqlite_backend.SqliteTransaction.append = _CHAINED  # type: ignore[method-assign]

    return run


@pytest.fixture(params=["full", "normal"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Ledger, Ledger]]:
    """Two ledgers: one appended to with the chain, one without (every one of its events is
    unhashed, as in a log from before the chain, so it stays a valid ledger)."""
    chained = Ledger(str(tmp_path / "chained.db"), durability=request.param)
    plain = Ledger(str(tmp_path / "plain.db"), durability=request.param)
    yield chained, plain
    chained.close()
    plain.close()


def _durability(ledger: Ledger) -> str:
    return "full" if ledger._backend._conn.execute("PRAGMA synchronous").get == 2 else "normal"


def _paired(
    benchmark: Any,
    chained: Callable[[], object],
    plain: Callable[[], object],
    impl: str,
    rounds: int,
) -> None:
    unchained = _unchained(plain)
    if impl == "unchained":
        benchmark.pedantic(unchained, rounds=rounds, iterations=1, warmup_rounds=20)
        return
    before: list[float] = []

    def timed_unchained() -> None:
        started = time.perf_counter()
        unchained()
        before.append(time.perf_counter() - started)

    benchmark.pedantic(chained, setup=timed_unchained, rounds=rounds, warmup_rounds=0)
    benchmark.extra_info["paired_raw_median"] = statistics.median(before)


@pytest.mark.parametrize("impl", ["chained", "unchained"])
def test_log_event_chain_cost(benchmark: Any, pair: tuple[Ledger, Ledger], impl: str) -> None:
    """One activity event per command: the append path at its smallest."""
    chained, plain = pair
    durability = _durability(chained)
    benchmark.group = f"9 log_event chained vs unchained [{durability}]"
    payload = {"message": "step 3 of 10", "tokens": 1234}
    job = chained.create_job(7, CONFIG)
    plain_job = _unchained(lambda: plain.create_job(7, CONFIG))()
    _paired(
        benchmark,
        lambda: chained.log_event(job, "progress", payload),
        lambda: plain.log_event(plain_job, "progress", payload),  # type: ignore[arg-type]
        impl,
        ROUNDS[durability],
    )
    _check(chained, plain)


@pytest.mark.parametrize("impl", ["chained", "unchained"])
def test_create_job_chain_cost(benchmark: Any, pair: tuple[Ledger, Ledger], impl: str) -> None:
    chained, plain = pair
    durability = _durability(chained)
    benchmark.group = f"9 create_job chained vs unchained [{durability}]"
    _paired(
        benchmark,
        lambda: chained.create_job(7, CONFIG),
        lambda: plain.create_job(7, CONFIG),
        impl,
        ROUNDS[durability],
    )
    _check(chained, plain)


def _check(chained: Ledger, plain: Ledger) -> None:
    assert chained.verify().ok
    assert plain.verify().ok  # all unhashed: a log from before the chain, still valid
