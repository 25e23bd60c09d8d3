"""Group 10: group commit, at durability full (an fsync per COMMIT).

Concurrent callers in one process each create a job and then log events on it. The ledger:
threads on one `Ledger`, and coroutines on one `AsyncLedger`. The baseline is the naive raw
group commit of issue 17: one writer thread draining a queue of the same inserts (the minimal
rows: a job row and its created event; a bare event), one COMMIT per drained batch, each caller
waiting on a ``threading.Event``; one caller calls APSW directly. Every entry runs the same
number of commands in all (``items`` = commands; items/s is the throughput to compare, and
"vs one producer" is a row's items/s over the 1-caller row's).

`test_lone_caller` measures what group commit costs a caller alone: the same ledger call with
it on and off, alternated call by call.
"""

from __future__ import annotations

import asyncio
import queue
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from benchmarks import minimal
from benchmarks.conftest import CONFIG, size
from ledger import AsyncLedger, Ledger

COMMANDS = size(2400, 64)  # per round, split between its callers
ROUNDS = size(5, 1)  # each entry's figure is the median round (one round is a single shot)
PAYLOAD = {"message": "step 3 of 10", "tokens": 1234}
CASES = [
    pytest.param("ledger-threads", 1, id="ledger-threads-1"),
    pytest.param("raw", 1, id="raw-1"),
    pytest.param("ledger-threads", 8, id="ledger-threads-8"),
    pytest.param("raw", 8, id="raw-8"),
    pytest.param("ledger-coroutines", 64, id="ledger-coroutines-64"),
    pytest.param("raw", 64, id="raw-64"),
    pytest.param("ledger-coroutines", 1, id="ledger-coroutines-1"),
]


@pytest.mark.parametrize(("impl", "callers"), CASES)
def test_group_commit(benchmark: Any, tmp_path: Path, impl: str, callers: int) -> None:
    kind = "coroutine" if impl == "ledger-coroutines" and callers == 1 else "caller"
    benchmark.group = f"10 group commit, {callers} {kind}{'s' * (callers > 1)} [full]"
    per_caller = COMMANDS // callers
    benchmark.extra_info["items"] = per_caller * callers
    if impl == "raw":
        files = iter(range(ROUNDS))
        benchmark.pedantic(
            lambda: _raw_naive(tmp_path / f"raw{next(files)}.db", callers, per_caller),
            rounds=ROUNDS,
            iterations=1,
        )
        return
    # Opened before the timed part, checked after it: only the commands are timed.
    with Ledger(str(tmp_path / "ledger.db"), durability="full") as ledger:
        run = _threads if impl == "ledger-threads" else _coroutines
        benchmark.pedantic(run, (ledger, callers, per_caller), rounds=ROUNDS, iterations=1)
        assert ledger.last_position() == ROUNDS * callers * per_caller
        assert ledger.verify().ok


def _threads(ledger: Ledger, callers: int, per_caller: int) -> None:
    def produce() -> None:
        job_id = ledger.create_job(7, CONFIG)
        for _ in range(per_caller - 1):
            ledger.log_event(job_id, "progress", PAYLOAD)

    _in_threads(produce, callers)


def _coroutines(ledger: Ledger, callers: int, per_caller: int) -> None:
    async def main() -> None:
        lg = AsyncLedger(ledger)  # wraps the open ledger: no opening in the timed part

        async def produce() -> None:
            job_id = await lg.create_job(7, CONFIG)
            for _ in range(per_caller - 1):
                await lg.log_event(job_id, "progress", PAYLOAD)

        await asyncio.gather(*(produce() for _ in range(callers)))
        await lg.close()

    asyncio.run(main())


def _raw_naive(path: Path, callers: int, per_caller: int) -> None:
    """One caller: APSW directly. More: `naive` (a new file each round, as the minimal schema
    is created on connecting)."""
    conn = minimal.connect(str(path), "full")
    if callers == 1:
        job_id = minimal.create(conn, CONFIG)
        for version in range(2, per_caller + 1):
            minimal.append(conn, job_id, version, PAYLOAD)
        conn.close()
        return
    naive(
        lambda: conn.execute("BEGIN IMMEDIATE"),
        lambda: conn.execute("COMMIT"),
        lambda job_id: _raw_create(conn, job_id),
        lambda job_id, version: _raw_append(conn, job_id, version),
        callers,
        per_caller,
    )
    count = conn.execute("SELECT count(*) FROM events").get
    conn.close()
    assert count == callers * per_caller


def naive(
    begin: Callable[[], object],
    commit: Callable[[], object],
    create: Callable[[str], object],
    append: Callable[[str, int], object],
    callers: int,
    per_caller: int,
) -> None:
    """Issue 17's naive raw group commit: one writer thread draining a queue of the callers'
    inserts, one transaction and COMMIT per drained batch, each caller waiting on a
    ``threading.Event``; each caller creates a job and appends to it (``begin``/``commit`` open
    and end a transaction on the backend's connection; group 11 uses it too)."""
    work: queue.SimpleQueue[tuple[Callable[[], Any], threading.Event] | None] = queue.SimpleQueue()

    def writer() -> None:
        while True:
            first = work.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    item = work.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    work.put(None)
                    break
                batch.append(item)
            begin()
            for insert, _ in batch:
                insert()
            commit()
            for _, done in batch:
                done.set()

    def call(insert: Callable[[], Any]) -> None:
        done = threading.Event()
        work.put((insert, done))
        done.wait()

    def produce() -> None:
        job_id = str(uuid.uuid4())
        call(lambda: create(job_id))
        for version in range(2, per_caller + 1):
            call(lambda v=version: append(job_id, v))  # type: ignore[misc]

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        _in_threads(produce, callers)
    finally:
        work.put(None)
        thread.join()


def _raw_create(conn: apsw.Connection, job_id: str) -> None:
    conn.execute(
        "INSERT INTO jobs VALUES (?, 'pending', ?, 1)",
        (job_id, minimal._encode(CONFIG).decode()),
    )
    conn.execute(minimal.EVENT, (job_id, 1, "created", minimal._created(CONFIG), minimal._now()))


def _raw_append(conn: apsw.Connection, job_id: str, version: int) -> None:
    data = minimal._encode({"type": "progress", "payload": PAYLOAD}).decode()
    conn.execute(minimal.EVENT, (job_id, version, "progress", data, minimal._now()))


def _in_threads(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("durability", ["full", "normal"])
@pytest.mark.parametrize("grouping", ["on", "off"])
def test_lone_caller(benchmark: Any, tmp_path: Path, grouping: str, durability: str) -> None:
    """One caller's create_job, group commit on and off, alternated call by call: the entry
    times its own setting and records the other's median as ``paired_other_median``. At
    ``normal`` no fsync hides a difference of a microsecond."""
    benchmark.group = f"10 lone caller, group commit on vs off [{durability}]"
    on = Ledger(str(tmp_path / "on.db"), durability=durability)  # type: ignore[arg-type]
    off = Ledger(str(tmp_path / "off.db"), durability=durability)  # type: ignore[arg-type]
    off._backend._writes.enabled = False  # type: ignore[attr-defined]
    timed, other = (on, off) if grouping == "on" else (off, on)
    paired: list[float] = []

    def other_call() -> None:
        started = time.perf_counter()
        other.create_job(7, CONFIG)
        paired.append(time.perf_counter() - started)

    rounds = size(300 if durability == "full" else 3000, 3)
    benchmark.pedantic(
        lambda: timed.create_job(7, CONFIG), setup=other_call, rounds=rounds, iterations=1
    )
    benchmark.extra_info["paired_other_median"] = statistics.median(paired)
    on.close()
    off.close()
