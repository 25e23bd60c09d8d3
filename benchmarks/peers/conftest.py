"""The peer benchmarks run only on demand: ``LEDGER_BENCH_PEERS=1``. Without it every test here
is skipped at collection, before any fixture runs, so no peer is imported and no server is
started (CI's quick run stays quick; the peers need not even be installed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENABLED = os.environ.get("LEDGER_BENCH_PEERS") == "1"
_HERE = Path(__file__).resolve().parent
_SKIP = pytest.mark.skip(
    reason="peer benchmarks: set LEDGER_BENCH_PEERS=1 (and pip install -r "
    "benchmarks/peers/requirements.txt)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this directory's tests skipped unless enabled (hooks see every item, hence the
    path check)."""
    if ENABLED:
        return
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(_SKIP)


def peer_n(full: int, quick: int) -> int:
    """``LEDGER_BENCH_N`` if set, else ``quick`` under LEDGER_BENCH_QUICK=1, else ``full``."""
    if os.environ.get("LEDGER_BENCH_N"):
        return int(os.environ["LEDGER_BENCH_N"])
    return quick if os.environ.get("LEDGER_BENCH_QUICK") == "1" else full
