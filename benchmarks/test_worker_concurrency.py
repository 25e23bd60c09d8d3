"""Group 13: one `Worker` running many jobs at once (issue 13).

- ``13a``: async jobs that each await 50 ms, at concurrency 64 and 1. The ideal is
  concurrency / 0.05 s jobs per second (1280/s at 64); ``extra_info["ideal_jobs_per_s"]`` holds
  it, so the report (or a reader) puts the measured rate against it and against concurrency 1.
- ``13b``: no-op jobs at concurrency 1, 8 and 64, async and plain (threads), against the sync
  worker as it was (a plain handler at concurrency 1).

Every round works a fresh file of ``jobs`` pending jobs to the end (``stop_when_idle``); jobs/s
is ``items`` / the round's time. Quick under LEDGER_BENCH_QUICK=1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import size
from ledger import Job, JobContext, Ledger, Worker

SLEEP = 0.05
NOOP_JOBS = size(2_000, 16)


def _fresh(tmp_path: Path, n: int, counter: list[int]) -> Ledger:
    counter[0] += 1
    ledger = Ledger(str(tmp_path / f"w-{counter[0]}.db"))
    for start in range(0, n, 1000):
        ledger.create_jobs(
            [{"chat_id": 1, "config": {"n": i}} for i in range(start, min(n, start + 1000))]
        )
    return ledger


def _work(ledger: Ledger, handler: Any, concurrency: int, n: int) -> None:
    handled = Worker(ledger, handler, concurrency=concurrency).run(stop_when_idle=True)
    assert handled == n
    ledger.close()


async def _await_50ms(job: Job, ctx: JobContext) -> None:
    await asyncio.sleep(SLEEP)


async def _async_noop(job: Job, ctx: JobContext) -> None:
    return None


def _sync_noop(job: Job, ctx: JobContext) -> None:
    return None


def _run(benchmark: Any, tmp_path: Path, handler: Any, concurrency: int, n: int) -> None:
    counter = [0]

    def setup() -> tuple[tuple[Ledger, Any, int, int], dict[str, Any]]:
        return (_fresh(tmp_path, n, counter), handler, concurrency, n), {}

    benchmark.extra_info["items"] = n
    benchmark.pedantic(_work, setup=setup, rounds=size(3, 1), iterations=1)


@pytest.mark.parametrize("concurrency", [64, 1])
def test_async_jobs_awaiting_50ms(benchmark: Any, tmp_path: Path, concurrency: int) -> None:
    benchmark.group = "13a async jobs awaiting 50 ms (jobs)"
    ideal = concurrency / SLEEP
    benchmark.extra_info["ideal_jobs_per_s"] = ideal
    n = size(int(ideal * 2), max(concurrency, 2))  # about two seconds of ideal work
    _run(benchmark, tmp_path, _await_50ms, concurrency, n)


@pytest.mark.parametrize("concurrency", [1, 8, 64])
@pytest.mark.parametrize("kind", ["async", "threads"])
def test_noop_jobs(benchmark: Any, tmp_path: Path, kind: str, concurrency: int) -> None:
    benchmark.group = "13b no-op jobs (jobs)"
    handler = _async_noop if kind == "async" else _sync_noop
    _run(benchmark, tmp_path, handler, concurrency, NOOP_JOBS)
