"""Benchmark fixtures. ``LEDGER_BENCH_QUICK=1`` shrinks every size so CI can run the suite once
(with ``--benchmark-disable``) to keep it from rotting; the real sizes run on demand."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
