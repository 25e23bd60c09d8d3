"""Benchmark fixtures. ``LEDGER_BENCH_QUICK=1`` shrinks every size so CI can run the suite once
(with ``--benchmark-disable``) to keep it from rotting; the real sizes run on demand."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

from ledger import Ledger

QUICK = os.environ.get("LEDGER_BENCH_QUICK") == "1"


def size(full: int, quick: int) -> int:
    return quick if QUICK else full


CONFIG = {"role": "coder", "task": "benchmark the ledger against raw APSW"}


@pytest.fixture(scope="session")
def cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big fixtures are built once and kept in pytest's cache dir (a temp dir when the cache
    plugin is off, as in CI's quick run)."""
    cache = getattr(request.config, "cache", None)
    if cache is None or QUICK:
        return tmp_path_factory.mktemp("bench-cache")
    return Path(cache.mkdir("ledger-bench"))


def interleaved(
    benchmark: object,
    ledger_call: Callable[[], object],
    raw_call: Callable[[], object],
    minimal_call: Callable[[], object],
    rounds: int,
) -> None:
    """Time ``ledger_call`` with one call of each baseline before each of its rounds (the two
    baselines' own medians go into ``paired_raw_median`` and ``paired_minimal_median``, which
    `report.py` prints as the "interleaved" ratios): drift on a noisy machine hits all three
    alike. The caller warms up first where it wants to."""
    paired: list[float] = []
    paired_minimal: list[float] = []

    def timed_baselines() -> None:
        started = time.perf_counter()
        raw_call()
        middle = time.perf_counter()
        minimal_call()
        paired.append(middle - started)
        paired_minimal.append(time.perf_counter() - middle)

    benchmark.pedantic(  # type: ignore[attr-defined]
        ledger_call, setup=timed_baselines, rounds=rounds, warmup_rounds=0
    )
    benchmark.extra_info["paired_raw_median"] = statistics.median(paired)  # type: ignore[attr-defined]
    benchmark.extra_info["paired_minimal_median"] = statistics.median(paired_minimal)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The URL of the session's PostgreSQL server (tests/postgres_cluster.py starts one);
    skips the benchmark, with the reason, where none can start."""
    from tests import postgres_cluster

    try:
        return postgres_cluster.shared_url()
    except postgres_cluster.ClusterUnavailable as e:
        pytest.skip(f"no PostgreSQL server: {e}")


def fresh_pair(tmp_path: Path, durability: str) -> tuple[Ledger, apsw.Connection]:
    """A ledger and, on a second file with the same schema, a raw APSW connection."""
    from benchmarks import raw

    ledger = Ledger(str(tmp_path / "ledger.db"), durability=durability)  # type: ignore[arg-type]
    Ledger(str(tmp_path / "raw.db")).close()
    return ledger, raw.connect(str(tmp_path / "raw.db"), durability)


@pytest.fixture(params=["full", "normal"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Ledger, apsw.Connection]]:
    ledger, conn = fresh_pair(tmp_path, request.param)
    yield ledger, conn
    ledger.close()
    conn.close()
