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

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ledger import AsyncLedger, JobStatus, Ledger, StorageError, StorageUnavailable, Worker

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres.backend import WRITER_STATEMENTS, PostgresBackend  # noqa: E402
from ledger.backends.postgres.connection import connect  # noqa: E402
from tests.backends.postgres.test_group_commit import AnswerLosingProxy, events_of  # noqa: E402
from tests.outage_support import Blocked, logged, running  # noqa: E402
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


@contextlib.contextmanager
def handler_ends_in_an_outage(
    cluster: Cluster, handler: Blocked, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """The server goes down while the worker's handler runs, and the handler ends meanwhile:
    the body runs once the worker found the storage unavailable; the server is back after."""
    assert handler.started.wait(30)
    cluster.pause()
    try:
        handler.go.set()
        assert logged(caplog, "the storage is unavailable")
        yield
    finally:
        cluster.resume()


@pytest.mark.parametrize("outcome", ["done", "raise"])
def test_a_worker_keeps_an_outcome_through_an_outage_and_records_it_once(
    cluster: Cluster, url: str, caplog: pytest.LogCaptureFixture, outcome: str
) -> None:
    """The server goes down while a handler runs; the handler ends meanwhile. The worker does
    not die (as it did: the first failed write ended its loop and abandoned every job): it
    keeps the outcome, says the storage is unavailable once, and records the outcome, once,
    when the server is back; then it claims and runs the next job."""
    caplog.set_level(logging.WARNING, logger="ledger.worker")
    handler = Blocked(outcome)
    with Ledger(url, busy_timeout=10) as ledger, Ledger(url, busy_timeout=10) as watcher:
        first = ledger.create_job(1, CONFIG, max_attempts=1)
        worker = Worker(ledger, handler, lease=60, poll_interval=0.05)
        with running(worker) as thread:
            with handler_ends_in_an_outage(cluster, handler, caplog):
                assert thread.is_alive()
            status = JobStatus.COMPLETED if outcome == "done" else JobStatus.FAILED
            assert watcher.wait(first, timeout=30).status == status
            assert logged(caplog, "the storage is available again")
            second = watcher.create_job(1, CONFIG, max_attempts=1)
            assert watcher.wait(second, timeout=30).status == status
        assert not thread.is_alive() and worker.exit_status == 0
        types = [e.type for e in watcher.job_events(first)]
        final = "completed" if outcome == "done" else "failed"
        assert types.count(final) == 1
        assert types.count("error") == (0 if outcome == "done" else 1)
        unavailable = [r for r in caplog.records if "storage is unavailable" in r.getMessage()]
        assert len(unavailable) == 1  # once as it began; further failures at DEBUG
        assert watcher.verify().ok


def test_a_worker_stopped_during_an_outage_says_which_outcomes_it_could_not_record(
    cluster: Cluster, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped before the server is back, the worker stops (within its grace period), names
    the jobs whose outcomes it could not record and exits with status 1; each job is still
    running (its lease decides), not recorded as anything it did not do."""
    caplog.set_level(logging.WARNING, logger="ledger.worker")
    handler = Blocked()
    with Ledger(url, busy_timeout=10) as ledger:
        job_id = ledger.create_job(1, CONFIG)
        worker = Worker(ledger, handler, lease=60, poll_interval=0.05, grace_period=0.5)
        with running(worker) as thread, handler_ends_in_an_outage(cluster, handler, caplog):
            worker.stop()
            thread.join(30)
            assert not thread.is_alive()
        assert worker.exit_status == 1
        assert logged(caplog, f"not recorded (the storage is unavailable or busy): jobs {job_id}")
    with Ledger(url, busy_timeout=10) as after:
        assert after.get_job(job_id).status == JobStatus.RUNNING
        assert after.verify().ok


def test_an_async_ledgers_watcher_listens_again_after_an_outage(
    cluster: Cluster, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher thread wakes an `AsyncLedger`'s waiting tasks on the server's NOTIFY. While
    the server is down it cannot listen; it used to end there for good (every later wait fell
    back to its one-second re-reads). It now listens again once the server is back."""
    caplog.set_level(logging.DEBUG, logger="ledger.aio")

    async def finished(aledger: AsyncLedger) -> None:
        job_id = await aledger.create_job(1, CONFIG)
        waiting = asyncio.ensure_future(aledger.wait(job_id, timeout=60))
        await asyncio.sleep(0)  # the wait starts (and with it the watcher)
        claimed = await aledger.claim("w")
        assert claimed is not None and claimed.id == job_id
        await aledger.complete(job_id, "done", worker_id="w")
        assert (await waiting).status == JobStatus.COMPLETED

    async def main() -> None:
        async with AsyncLedger(url, busy_timeout=10) as aledger:
            await finished(aledger)
            await asyncio.to_thread(cluster.pause)
            try:
                assert await asyncio.to_thread(logged, caplog, "watching for changes")
            finally:
                await asyncio.to_thread(cluster.resume)
            await finished(aledger)
            assert aledger._watcher is not None and aledger._watcher.is_alive()

    asyncio.run(main())


def test_a_server_that_is_down_is_storage_unavailable_and_a_refused_row_is_not(
    cluster: Cluster, url: str
) -> None:
    """`StorageUnavailable` says the same call may succeed later: a server that is down. An
    error the server gives the same way every time (here a trigger an operator added that
    refuses one queue's jobs) is a plain `StorageError`, so a worker does not wait it out for
    ever."""
    with Ledger(url, busy_timeout=10) as ledger:
        job_id = ledger.create_job(1, CONFIG)
        with psycopg.connect(url, autocommit=True) as operator:
            operator.execute(
                "CREATE FUNCTION refuse_closed() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN RAISE EXCEPTION 'queue closed is closed for good'; END $$"
            )
            operator.execute(
                "CREATE TRIGGER refuse_closed BEFORE INSERT ON jobs FOR EACH ROW"
                " WHEN (NEW.queue = 'closed') EXECUTE FUNCTION refuse_closed()"
            )
        with pytest.raises(StorageError) as refused:
            ledger.create_job(1, CONFIG, queue="closed")
        assert not isinstance(refused.value, StorageUnavailable)
        assert "closed for good" in str(refused.value)
        assert not refused.value.maybe_committed
        cluster.pause()
        try:
            with pytest.raises(StorageUnavailable, match="cannot reach the PostgreSQL server"):
                ledger.log_event(job_id, "progress", {"n": 1})
        finally:
            cluster.resume()
        assert ledger.log_event(job_id, "progress", {"n": 1}) == 2


def test_an_error_event_whose_commit_answer_was_lost_is_not_written_twice(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection is cut after the server ran the COMMIT of a failure's error event and
    before its answer came back (a proxy): the worker is told the write may have committed
    (`StorageError.maybe_committed`), keeps the failure for later and, recording it again,
    finds its error event in the log and writes only the fail: one error event, one fail."""
    caplog.set_level(logging.WARNING, logger="ledger.worker")
    handler = Blocked("raise")
    proxy = AnswerLosingProxy(url)
    try:
        with Ledger(proxy.url, busy_timeout=10) as ledger:
            job_id = ledger.create_job(1, CONFIG, max_attempts=1)
            worker = Worker(ledger, handler, lease=60, poll_interval=0.05)
            with running(worker):
                assert handler.started.wait(30)
                proxy.lose_answer(lambda: events_of(url, job_id) == 3)  # the error event
                handler.go.set()
                assert ledger.wait(job_id, timeout=30).status == JobStatus.FAILED
            assert proxy.cut.is_set()
            assert logged(caplog, "may have committed or not")
            types = [e.type for e in ledger.job_events(job_id)]
            assert types == ["created", "claimed", "error", "failed"]
            assert ledger.verify().ok
    finally:
        proxy.close()
