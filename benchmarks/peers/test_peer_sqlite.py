"""Issue 17's peer comparison on SQLite: the ledger, a minimal raw APSW baseline, persist-queue,
huey and eventsourcing on the same workloads, at FULL and NORMAL, in one pytest-benchmark run.

Each test is one timed loop of N operations (``LEDGER_BENCH_N``, default 20,000); the loop's own
time is in ``extra_info`` (``ops``, ``seconds``) and ``report.py`` divides them. The peers run
in a child process (spawn): they use stdlib ``sqlite3``, which must not share a process with
APSW on ledger files. litequeue 0.14 needs Python >= 3.12 and is left out (see the README).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from benchmarks.peers import sqlite_workloads as workloads
from benchmarks.peers.conftest import peer_n

N = peer_n(20_000, 200)


@pytest.fixture(scope="module")
def child() -> Iterator[ProcessPoolExecutor]:
    """One spawned process for the peers, reused across this module's tests."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


# One workload at one durability for every implementation in a row, so that the load of a
# shared machine, which drifts over minutes, hits the figures compared in a row alike.
CASES = [
    pytest.param(impl, workload, durability, id=f"{durability}-{workload}-{impl}")
    for durability in ("full", "normal")
    for workload in workloads.WORKLOADS
    for impl in workloads.IMPLS
]


@pytest.mark.parametrize(("impl", "workload", "durability"), CASES)
def test_sqlite_peer(
    benchmark: Any,
    child: ProcessPoolExecutor,
    tmp_path: Path,
    impl: str,
    workload: str,
    durability: str,
) -> None:
    if not workloads.supported(impl, workload):
        pytest.skip(f"{impl} has no API for {workload}")
    args = (impl, workload, durability, N, str(tmp_path))
    outcome: dict[str, Any] = {}

    def measure() -> None:
        if impl in workloads.PEERS:
            outcome.update(child.submit(workloads.run, *args).result())
        else:
            outcome.update(workloads.run(*args))

    benchmark.group = f"peers-sqlite {workload} [{durability}]"
    benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(
        outcome, impl=impl, workload=workload, durability=durability, backend="sqlite"
    )
    assert outcome["ops"] == workloads.rounded(N)
