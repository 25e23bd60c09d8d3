"""Groups 1, 2, 3, 5: one-commit-per-call writes, ledger against raw APSW, both durabilities."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from benchmarks import raw
from benchmarks.conftest import CONFIG, fresh_pair, size
from ledger import Ledger

# More rounds where a call is fast (no fsync): medians of tens of microseconds are noisy.
ROUNDS = {"full": size(500, 3), "normal": size(3000, 3)}


def _run(benchmark, fn, rounds: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=min(20, rounds))


@pytest.mark.parametrize("impl", ["ledger", "raw"])
def test_create_job(benchmark, pair: tuple[Ledger, apsw.Connection], impl: str) -> None:  # type: ignore[no-untyped-def]
    ledger, conn = pair
    durability = ledger_durability(ledger)
    benchmark.group = f"1 create_job [{durability}]"
    if impl == "ledger":
        _run(benchmark, lambda: ledger.create_job(7, CONFIG), ROUNDS[durability])
        assert ledger.verify().ok
    else:
        _run(benchmark, lambda: raw.create_job(conn, 7, CONFIG), ROUNDS[durability])


@pytest.mark.parametrize("impl", ["ledger", "raw"])
def test_log_event(benchmark, pair: tuple[Ledger, apsw.Connection], impl: str) -> None:  # type: ignore[no-untyped-def]
    ledger, conn = pair
    durability = ledger_durability(ledger)
    benchmark.group = f"3 log_event [{durability}]"
    payload = {"message": "step 3 of 10", "tokens": 1234}
    if impl == "ledger":
        job_id = ledger.create_job(7, CONFIG)
        _run(benchmark, lambda: ledger.log_event(job_id, "progress", payload), ROUNDS[durability])
        assert ledger.verify().ok
    else:
        job_id = raw.create_job(conn, 7, CONFIG)
        _run(
            benchmark, lambda: raw.log_event(conn, job_id, "progress", payload), ROUNDS[durability]
        )


@pytest.mark.parametrize("impl", ["ledger", "raw"])
def test_create_jobs_100(benchmark, pair: tuple[Ledger, apsw.Connection], impl: str) -> None:  # type: ignore[no-untyped-def]
    ledger, conn = pair
    benchmark.group = f"5 create_jobs x100 [{ledger_durability(ledger)}]"
    benchmark.extra_info["items"] = 100
    specs = [{"chat_id": n, "config": CONFIG} for n in range(100)]
    raw_specs = [(n, CONFIG) for n in range(100)]
    rounds = size(50, 2)
    if impl == "ledger":
        _run(benchmark, lambda: ledger.create_jobs(specs), rounds)
    else:
        _run(benchmark, lambda: raw.create_jobs(conn, raw_specs), rounds)


@pytest.mark.parametrize("durability", ["full", "normal"])
@pytest.mark.parametrize("impl", ["ledger", "raw"])
def test_claim_complete(benchmark, tmp_path: Path, impl: str, durability: str) -> None:  # type: ignore[no-untyped-def]
    """Claim + complete (two commits per job) with a backlog of 10,000 pending jobs."""
    ledger, conn = fresh_pair(tmp_path, durability)
    benchmark.group = f"2 claim+complete [{durability}]"
    backlog = size(10_000, 20)
    if impl == "ledger":
        for _ in range(backlog // 1000 or 1):
            ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * min(backlog, 1000))

        def work() -> None:
            job = ledger.claim("bench-worker")
            assert job is not None
            ledger.complete(job.id, "done", "success", 1.0, 1)

    else:
        for _ in range(backlog // 1000 or 1):
            raw.create_jobs(conn, [(1, CONFIG)] * min(backlog, 1000))

        def work() -> None:
            job_id = raw.claim(conn, "bench-worker")
            assert job_id is not None
            raw.complete(conn, job_id, "done")

    _run(benchmark, work, min(ROUNDS[durability], backlog // 2))
    ledger.close()
    conn.close()


def ledger_durability(ledger: Ledger) -> str:
    return "full" if ledger._conn.execute("PRAGMA synchronous").get == 2 else "normal"
