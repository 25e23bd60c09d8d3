"""The PostgreSQL workloads of the peer comparison (issue 12): the ledger, raw psycopg running
the backend's own statements, procrastinate and pgqueuer, each on a fresh database of the same
throwaway cluster the tests use.

enqueue: N jobs, one at a time, one client, one transaction each.
fetch_finish: N jobs already queued, drained by 4 workers; timed until every job is finished.
The ledger and raw psycopg use 4 threads, each with its own connection (psycopg releases the
GIL while it waits on the server); procrastinate runs one worker with ``concurrency=4`` (4
coroutines on one event loop); pgqueuer runs 4 QueueManagers, each on its own connection, on
one event loop, in its drain mode (each dequeues up to ``batch_size=10`` jobs per query).
Only the loop is timed; the schema and the backlog are built before.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

WORKLOADS = ("enqueue", "fetch_finish")
IMPLS = ("ledger", "raw", "procrastinate", "pgqueuer")
WORKERS = 4
CONFIG = {"role": "coder", "task": "benchmark the ledger against raw APSW"}
Result = dict[str, Any]


def run(impl: str, workload: str, url: str, n: int) -> Result:
    """One measurement on ``url``, a fresh, empty database."""
    return _REGISTRY[impl](workload, url, n)


def _timed(loop: Callable[[], object], ops: int) -> Result:
    started = time.perf_counter()
    loop()
    return {"ops": ops, "seconds": time.perf_counter() - started}


def _times(call: Callable[[], object], n: int) -> Callable[[], None]:
    """A loop calling ``call`` n times, for `_timed`."""

    def loop() -> None:
        for _ in range(n):
            call()

    return loop


def _threads(worker: Callable[[int], None]) -> None:
    """Run ``worker(i)`` on WORKERS threads released together; re-raise the first failure."""
    failures: list[BaseException] = []
    start = threading.Barrier(WORKERS)

    def body(i: int) -> None:
        try:
            start.wait()
            worker(i)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


# -- the ledger -----------------------------------------------------------------------------------


def _ledger(workload: str, url: str, n: int) -> Result:
    from ledger import Ledger

    ledger = Ledger(url)
    try:
        if workload == "enqueue":
            result = _timed(_times(lambda: ledger.create_job(7, CONFIG), n), n)
        else:
            for start in range(0, n, 1000):
                ledger.create_jobs([{"chat_id": 7, "config": CONFIG}] * min(1000, n - start))
            workers = [Ledger(url) for _ in range(WORKERS)]

            def drain(i: int) -> None:
                while (job := workers[i].claim(f"w{i}")) is not None:
                    workers[i].complete(job.id, "done", "success", worker_id=f"w{i}")

            try:
                result = _timed(lambda: _threads(drain), n)
            finally:
                for worker in workers:
                    worker.close()
            assert ledger.count_jobs(status="completed") == n
        assert ledger.verify().ok
        return result
    finally:
        ledger.close()


# -- raw psycopg: the backend's statements, no decide/fold/validation ---------------------------
# Autocommit and pipeline mode, each transaction sending its own BEGIN and COMMIT: it waits only
# where a read needs its answer and once for the COMMIT (as `benchmarks/test_postgres.py`'s
# `Raw`), the least I/O these statements allow.

_RAW_JOB = (
    "INSERT INTO jobs (id, chat_id, config, status, created_at, updated_at, version, queue, "
    "priority, run_at, attempts, max_attempts, created_position) "
    "VALUES (%s, %s, %s, 'pending', %s, %s, 1, 'default', 0, %s, 0, 1, "
    "(SELECT position FROM events WHERE job_id = %s AND version = 1))"
)


def _raw(workload: str, url: str, n: int) -> Result:
    import psycopg

    from ledger.backends.postgres import events_table, jobs_table
    from ledger.backends.postgres.connection import schema_text

    def connect() -> Any:
        conn = psycopg.connect(url, autocommit=True)
        conn.execute("SET TimeZone TO 'UTC'")
        return conn

    conn = connect()
    conn.execute(schema_text().encode())
    conn.execute(events_table.checkpoint_upsert_statement, ("jobs", 1, 0))

    pipelines: dict[int, Any] = {}  # id(connection) -> its open psycopg Pipeline

    def commit(c: Any) -> None:
        c.execute(events_table.checkpoint_to_head_statement, ("jobs",))
        c.execute("COMMIT")
        pipelines[id(c)].sync()

    now = datetime.now(UTC)
    created = json.dumps({"type": "created", "chat_id": 7, "config": CONFIG})
    config = json.dumps(CONFIG)

    def raw_create(c: Any, now: datetime) -> None:
        """The ledger's create: the event (its trigger hands out the position), the jobs row
        (the columns a new job sets; the rest take their defaults), the checkpoint."""
        job_id = str(uuid.uuid4())
        c.execute("BEGIN")
        c.execute(events_table.insert_deferred_statement, (job_id, 1, "created", created, now))
        c.execute(_RAW_JOB, (job_id, 7, config, now, now, now, job_id))
        commit(c)

    try:
        with conn.pipeline() as pipeline:
            pipelines[id(conn)] = pipeline
            if workload == "enqueue":
                return _timed(_times(lambda: raw_create(conn, now), n), n)
            for _ in range(n):
                raw_create(conn, now)
        conns = [connect() for _ in range(WORKERS)]

        def step(c: Any, job_id: str, version: int, kind: str, sets: str) -> None:
            c.execute(events_table.insert_deferred_statement, (job_id, version, kind, "{}", now))
            c.execute(f"UPDATE jobs SET {sets}, version = %s WHERE id = %s", (version, job_id))
            commit(c)

        def drain(i: int) -> None:
            c = conns[i]
            with c.pipeline() as pipeline:
                pipelines[id(c)] = pipeline
                while True:
                    c.execute("BEGIN")
                    row = c.execute(jobs_table.claim_any_statement, (now,)).fetchone()
                    if row is None:
                        c.execute("COMMIT")
                        return
                    step(c, row[0], 2, "claimed", "status = 'running', lease_expires_at = now()")
                    c.execute("BEGIN")
                    c.execute(jobs_table.lock_row_statement, (row[0],)).fetchone()
                    step(c, row[0], 3, "completed", "status = 'completed', lease_expires_at = NULL")

        try:
            result = _timed(lambda: _threads(drain), n)
        finally:
            for c in conns:
                c.close()
        (done,) = conn.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
        assert done == n
        return result
    finally:
        conn.close()


# -- procrastinate ------------------------------------------------------------------------------


def _procrastinate(workload: str, url: str, n: int) -> Result:
    return asyncio.run(_procrastinate_async(workload, url, n))


async def _procrastinate_async(workload: str, url: str, n: int) -> Result:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    done: list[int] = []

    @app.task(name="bench")
    async def bench(chat_id: int, config: Any) -> str:
        done.append(chat_id)
        return "done"

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        if workload == "enqueue":
            started = time.perf_counter()
            for _ in range(n):
                await bench.defer_async(chat_id=7, config=CONFIG)
            return {"ops": n, "seconds": time.perf_counter() - started}
        for start in range(0, n, 1000):
            jobs: list[dict[str, Any]] = [{"chat_id": 7, "config": CONFIG}] * min(1000, n - start)
            await bench.batch_defer_async(*jobs)
        started = time.perf_counter()
        await app.run_worker_async(
            concurrency=WORKERS, wait=False, install_signal_handlers=False, listen_notify=False
        )
        seconds = time.perf_counter() - started
        assert len(done) == n
        return {"ops": n, "seconds": seconds}


# -- pgqueuer -----------------------------------------------------------------------------------


def _pgqueuer(workload: str, url: str, n: int) -> Result:
    return asyncio.run(_pgqueuer_async(workload, url, n))


async def _pgqueuer_async(workload: str, url: str, n: int) -> Result:
    import psycopg
    from pgqueuer import PsycopgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    async def connect() -> Any:
        return await psycopg.AsyncConnection.connect(url, autocommit=True)

    admin = await connect()
    queries = Queries(PsycopgDriver(admin))
    await queries.install()
    payload = b'{"chat_id": 7, "config": {"role": "coder"}}'
    try:
        if workload == "enqueue":
            started = time.perf_counter()
            for _ in range(n):
                await queries.enqueue("bench", payload)
            return {"ops": n, "seconds": time.perf_counter() - started}
        for start in range(0, n, 1000):
            size = min(1000, n - start)
            await queries.enqueue(["bench"] * size, [payload] * size, [0] * size)
        done: list[int] = []
        managers = []
        connections = [await connect() for _ in range(WORKERS)]
        for connection in connections:
            manager = QueueManager(Queries(PsycopgDriver(connection)))

            @manager.entrypoint("bench")
            async def bench(job: Any) -> None:
                done.append(1)

            managers.append(manager)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                m.run(mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=1))
                for m in managers
            )
        )
        seconds = time.perf_counter() - started
        for connection in connections:
            await connection.close()
        assert len(done) == n
        return {"ops": n, "seconds": seconds}
    finally:
        await admin.close()


_REGISTRY: dict[str, Callable[[str, str, int], Result]] = {
    "ledger": _ledger,
    "raw": _raw,
    "procrastinate": _procrastinate,
    "pgqueuer": _pgqueuer,
}
