"""A server that restarts or crashes under an open `Ledger`: the next command and the next read
run on new connections, with an outcome that is known, and no row kept from before is trusted.

A server ends every connection when it shuts down or crashes; an idle client learns of it only
when it next sends. The writer used to send its next command into the dead connection and
report an outcome it could not know ("it may have committed or not"), and the first read from
each pooled connection failed. Now each idle connection's socket is polled (no round trip)
before a command or a read is given it, and a closed one is replaced first.

The rows the writer keeps in memory (`test_known_rows.py`) name the server's run: its start,
which a restart changes, and a token in an UNLOGGED table, which crash recovery empties
(recovery keeps the start). A client whose connection a pooler replaced without telling it
still finds its kept rows failing the guard after a crash.

Each test runs on its own cluster (this module's), restarted or crashed for real.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ledger import Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres.backend import WRITER_STATEMENTS, PostgresBackend  # noqa: E402
from ledger.backends.postgres.connection import connect  # noqa: E402
from tests.postgres_cluster import (  # noqa: E402
    Cluster,
    ClusterUnavailable,
    create_schema,
    start_cluster,
)

CONFIG = {"role": "coder", "task": "survive a restart"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    try:
        running = start_cluster()
    except ClusterUnavailable as e:
        pytest.skip(str(e))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def url(cluster: Cluster) -> str:
    return create_schema(cluster.url(), "restart")


def backend_of(ledger: Ledger) -> PostgresBackend:
    backend = ledger._backend
    assert isinstance(backend, PostgresBackend)
    return backend


def ran_again(caplog: pytest.LogCaptureFixture) -> int:
    return sum("changed since this process last wrote it" in r.getMessage() for r in caplog.records)


def run_token(url: str) -> str | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT token FROM ledger_run").fetchone()
        return None if row is None else str(row[0])


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_the_first_command_and_read_after_the_server_went_away_succeed(
    cluster: Cluster, url: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection of the `Ledger` (the writer, the pooled readers) was ended while idle;
    the next write, read and claim each succeed at once, the write's outcome known (one
    event, at the next version), and the row kept from before is not trusted (read under
    its lock, not guarded)."""
    caplog.set_level(logging.DEBUG, logger="ledger.backends.postgres.backend")
    with Ledger(url, busy_timeout=10) as ledger:
        job_id = ledger.create_job(1, CONFIG)
        other = ledger.create_job(1, CONFIG)
        assert ledger.get_job(job_id).version == 1  # a reader in the pool
        assert job_id in backend_of(ledger)._transactions.known
        getattr(cluster, how)()
        assert ledger.log_event(job_id, "progress", {"n": 1}) == 2
        assert job_id in backend_of(ledger)._transactions.known  # kept anew, on the new run
        assert ran_again(caplog) == 0  # not guessed: every row was forgotten with the writer
        assert [e.version for e in ledger.job_events(job_id)] == [1, 2]
        claimed = ledger.claim("w")
        assert claimed is not None and claimed.id in (job_id, other)
        assert ledger.verify().ok


def test_a_crash_the_client_is_not_told_of_fails_the_guard_on_every_kept_row(
    cluster: Cluster, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Recovery from a crash keeps the server's start time, and a transaction-mode pooler
    replaces its client's server connection without telling it, so neither the start nor the
    reconnect's forget covers a crash there. Crash recovery empties the UNLOGGED run token:
    the writer is given a new connection after a real crash the way a pooler would (its kept
    rows left in place), and the row, though unchanged, is read again; the next held write
    makes a new token."""
    caplog.set_level(logging.DEBUG, logger="ledger.backends.postgres.backend")
    with Ledger(url, busy_timeout=10) as ledger:
        job_id = ledger.create_job(1, CONFIG)
        backend = backend_of(ledger)
        before = backend._transactions.known[job_id].started
        assert before.split(" ")[1] == run_token(url)
        cluster.crash()
        assert run_token(url) is None  # what crash recovery did, not the ledger
        backend._drop_writer()  # the pooler's new server connection, the client not told
        backend._conn = connect(url, backend._statements + WRITER_STATEMENTS, "reconnecting")
        assert backend._transactions.known[job_id].started == before
        assert ledger.log_event(job_id, "progress", {"n": 1}) == 2
        assert ran_again(caplog) == 1
        after: Any = backend._transactions.known[job_id].started
        assert after.split(" ")[0] == before.split(" ")[0]  # the same start of the server
        assert after != before and after.split(" ")[1] == run_token(url)
        assert [e.version for e in ledger.job_events(job_id)] == [1, 2]
        assert ledger.verify().ok
