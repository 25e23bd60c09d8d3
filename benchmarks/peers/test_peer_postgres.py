"""Issue 12's peer comparison on PostgreSQL: the ledger, raw psycopg (the backend's statements),
procrastinate and pgqueuer, enqueue and fetch+finish with 4 workers, on fresh databases of the
cluster the tests start (``tests/postgres_cluster.py``). N: ``LEDGER_BENCH_N`` or 2,000."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.peers import pg_workloads as workloads
from benchmarks.peers.conftest import peer_n

N = peer_n(2_000, 50)


CASES = [
    pytest.param(impl, workload, id=f"{workload}-{impl}")
    for workload in workloads.WORKLOADS
    for impl in workloads.IMPLS
]


@pytest.mark.parametrize(("impl", "workload"), CASES)
def test_postgres_peer(benchmark: Any, pg_server: str, impl: str, workload: str) -> None:
    pytest.importorskip("psycopg")
    if impl in ("procrastinate", "pgqueuer"):
        pytest.importorskip(impl)
    from tests import postgres_cluster

    url = postgres_cluster.create_database(pg_server, prefix="peerbench")
    outcome: dict[str, Any] = {}
    benchmark.group = f"peers-postgres {workload}"
    try:
        benchmark.pedantic(
            lambda: outcome.update(workloads.run(impl, workload, url, N)), rounds=1, iterations=1
        )
    finally:
        postgres_cluster.drop_database(url)
    benchmark.extra_info.update(
        outcome, impl=impl, workload=workload, durability="postgres", backend="postgres"
    )
    assert outcome["ops"] == N
