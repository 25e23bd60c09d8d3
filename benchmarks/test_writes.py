"""Groups 1, 2, 3, 5: one-commit-per-call writes, ledger against raw APSW, both durabilities.

Each group has a ledger entry and a raw entry (separate timings, as pytest-benchmark shows them).
The ledger entry also runs one raw call before each of its rounds, timed by hand, and records
their median as ``paired_raw_median``: the two alternate call by call, so drift on a noisy
machine (other tenants, WAL checkpoints, CPU clocks) hits both alike. `report.py` prints both
ratios.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

from benchmarks import minimal, raw
from benchmarks.conftest import CONFIG, fresh_pair, interleaved, size
from ledger import Ledger

# More rounds where a call is fast (no fsync): medians of tens of microseconds are noisy.
ROUNDS = {"full": size(500, 3), "normal": size(3000, 3)}
Trio = tuple[Ledger, apsw.Connection, apsw.Connection]


@pytest.fixture(params=["full", "normal"])
def trio(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Trio]:
    """The ledger, the same-rows raw connection and the minimal raw connection."""
    ledger, conn = fresh_pair(tmp_path, request.param)
    least = minimal.connect(str(tmp_path / "minimal.db"), request.param)
    yield ledger, conn, least
    ledger.close()
    conn.close()
    least.close()


IMPLS = ["ledger", "raw", "minimal"]


def _run(
    benchmark,
    ledger_call: Callable[[], object],
    raw_call: Callable[[], object],  # type: ignore[no-untyped-def]
    impl: str,
    rounds: int,
    minimal_call: Callable[[], object],
) -> None:
    """``raw``: the same rows as the ledger (`benchmarks.raw`); ``minimal``: the least I/O the
    workload needs (`benchmarks.minimal`, issue 17's baseline). The ledger entry runs one call
    of each before each of its rounds and records their medians (paired_*_median)."""
    if impl != "ledger":
        call = raw_call if impl == "raw" else minimal_call
        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=min(20, rounds))
        return
    interleaved(benchmark, ledger_call, raw_call, minimal_call, rounds)


@pytest.mark.parametrize("impl", IMPLS)
def test_create_job(benchmark, trio: Trio, impl: str) -> None:  # type: ignore[no-untyped-def]
    ledger, conn, least = trio
    durability = ledger_durability(ledger)
    benchmark.group = f"1 create_job [{durability}]"
    _run(
        benchmark,
        lambda: ledger.create_job(7, CONFIG),
        lambda: raw.create_job(conn, 7, CONFIG),
        impl,
        ROUNDS[durability],
        lambda: minimal.create(least, CONFIG),
    )
    assert ledger.verify().ok


@pytest.mark.parametrize("impl", IMPLS)
def test_log_event(benchmark, trio: Trio, impl: str) -> None:  # type: ignore[no-untyped-def]
    ledger, conn, least = trio
    durability = ledger_durability(ledger)
    benchmark.group = f"3 log_event [{durability}]"
    payload = {"message": "step 3 of 10", "tokens": 1234}
    job_id = ledger.create_job(7, CONFIG)
    raw_job = raw.create_job(conn, 7, CONFIG)
    least_job, versions = minimal.create(least, CONFIG), itertools.count(2)
    _run(
        benchmark,
        lambda: ledger.log_event(job_id, "progress", payload),
        lambda: raw.log_event(conn, raw_job, "progress", payload),
        impl,
        ROUNDS[durability],
        lambda: minimal.append(least, least_job, next(versions), payload),
    )
    assert ledger.verify().ok


@pytest.mark.parametrize("impl", IMPLS)
def test_create_jobs_100(benchmark, trio: Trio, impl: str) -> None:  # type: ignore[no-untyped-def]
    ledger, conn, least = trio
    benchmark.group = f"5 create_jobs x100 [{ledger_durability(ledger)}]"
    benchmark.extra_info["items"] = 100
    specs = [{"chat_id": n, "config": CONFIG} for n in range(100)]
    raw_specs = [(n, CONFIG) for n in range(100)]
    _run(
        benchmark,
        lambda: ledger.create_jobs(specs),
        lambda: raw.create_jobs(conn, raw_specs),
        impl,
        size(100, 2),
        lambda: minimal.batch(least, CONFIG),
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_log_events_100(benchmark, trio: Trio, impl: str) -> None:  # type: ignore[no-untyped-def]
    """Issue 17's "append 100 events per commit" as the ledger's own call: 100 activity events
    to one job in one transaction (`create_jobs` x100, group 5 above, writes 100 job rows
    too). The minimal baseline is the same 100 bare event inserts in one transaction."""
    ledger, conn, least = trio
    benchmark.group = f"5 log_events x100 [{ledger_durability(ledger)}]"
    benchmark.extra_info["items"] = 100
    payloads = [{"message": f"step {n} of 100", "tokens": 1234} for n in range(100)]
    pairs = [("progress", payload) for payload in payloads]
    job_id = ledger.create_job(7, CONFIG)
    raw_job = raw.create_job(conn, 7, CONFIG)
    _run(
        benchmark,
        lambda: ledger.log_events(job_id, pairs),
        lambda: raw.log_events(conn, raw_job, "progress", payloads),
        impl,
        size(100, 2),
        lambda: minimal.batch(least, CONFIG),
    )
    assert ledger.verify().ok


@pytest.mark.parametrize("durability", ["full", "normal"])
@pytest.mark.parametrize("impl", IMPLS)
def test_claim_complete(benchmark, tmp_path: Path, impl: str, durability: str) -> None:  # type: ignore[no-untyped-def]
    """Claim + complete (two commits per job) with a backlog of 10,000 pending jobs."""
    ledger, conn = fresh_pair(tmp_path, durability)
    least = minimal.connect(str(tmp_path / "minimal.db"), durability)
    benchmark.group = f"2 claim+complete [{durability}]"
    backlog = size(10_000, 20)
    for _ in range(backlog // 1000 or 1):
        ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * min(backlog, 1000))
        raw.create_jobs(conn, [(1, CONFIG)] * min(backlog, 1000))
        minimal.fill(least, CONFIG, min(backlog, 1000))

    def ledger_call() -> None:
        job = ledger.claim("bench-worker")
        assert job is not None
        ledger.complete(job.id, "done", "success", 1.0, 1)

    def raw_call() -> None:
        job_id = raw.claim(conn, "bench-worker")
        assert job_id is not None
        raw.complete(conn, job_id, "done")

    _run(
        benchmark,
        ledger_call,
        raw_call,
        impl,
        min(ROUNDS[durability], backlog // 2),
        lambda: minimal.claim_complete(least),
    )
    ledger.close()
    conn.close()
    least.close()


def ledger_durability(ledger: Ledger) -> str:
    return "full" if ledger._backend._conn.execute("PRAGMA synchronous").get == 2 else "normal"
