"""The SQLite workloads of the peer comparison (issue 17): the ledger, a minimal raw APSW
baseline and the peers, each timed over the same N operations.

Every function builds what it needs first (a backlog to claim, a log to read), then times only
the loop of N operations with ``perf_counter`` and returns ``{"ops": ..., "seconds": ...}``.

The peers use the stdlib ``sqlite3`` module, and the team's rule is no stdlib ``sqlite3`` in a
process that opens ledger files (two SQLite libraries in one process break each other's POSIX
locks). So the tests run the peers' functions in a child process (see ``test_peer_sqlite.py``);
this module imports nothing from a peer or from the ledger at import time for that reason.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORKLOADS = ("create", "claim_finish", "append", "read_all", "batch100")
PEERS = ("persist-queue", "huey", "eventsourcing")
IMPLS = ("ledger", "raw", "same-rows", *PEERS)
BATCH = 100
# The same values as benchmarks/conftest.py's CONFIG (not imported: that module loads APSW).
CONFIG = {"role": "coder", "task": "benchmark the ledger against raw APSW"}
PAYLOAD = {"message": "step 3 of 10", "tokens": 1234}
Result = dict[str, Any]

# Which peer has an API for which workload; the rest are "n/a" in the tables.
SUPPORTED = {
    "ledger": set(WORKLOADS),
    "raw": set(WORKLOADS),
    "same-rows": set(WORKLOADS),
    "persist-queue": {"create", "claim_finish", "read_all", "batch100"},
    "huey": {"create", "claim_finish", "read_all"},
    "eventsourcing": {"create", "append", "read_all", "batch100"},
}


def supported(impl: str, workload: str) -> bool:
    return workload in SUPPORTED[impl]


def run(impl: str, workload: str, durability: str, n: int, directory: str) -> Result:
    """Run one measurement in a fresh ``directory``; the entry point for tests and children.
    ``n`` is rounded down to whole batches of 100 (at least one)."""
    function = _REGISTRY[impl]
    return function(workload, durability, rounded(n), Path(directory))


def rounded(n: int) -> int:
    return max(BATCH, n - n % BATCH)


def _timed(loop: Callable[[], object], ops: int) -> Result:
    """Time ``loop`` alone, after a full collection: the garbage the setup left (or earlier
    tests in this process) is not collected inside one implementation's loop but not another's
    (the read loops are a few milliseconds, shorter than a full collection of a large heap)."""
    gc.collect()
    started = time.perf_counter()
    loop()
    return {"ops": ops, "seconds": time.perf_counter() - started}


def _times(call: Callable[[], object], n: int) -> Callable[[], None]:
    """A loop calling ``call`` n times, for `_timed`."""

    def loop() -> None:
        for _ in range(n):
            call()

    return loop


# -- the ledger -----------------------------------------------------------------------------------


def _ledger(workload: str, durability: str, n: int, directory: Path) -> Result:
    from ledger import Ledger

    ledger = Ledger(str(directory / "ledger.db"), durability=durability)  # type: ignore[arg-type]
    try:
        result = _ledger_workload(ledger, workload, n)
        assert ledger.verify().ok
        return result
    finally:
        ledger.close()


def _ledger_fill(ledger: Any, n: int) -> None:
    for start in range(0, n, 1000):
        ledger.create_jobs([{"chat_id": 7, "config": CONFIG}] * min(1000, n - start))


def _ledger_workload(ledger: Any, workload: str, n: int) -> Result:
    if workload == "create":
        return _timed(_times(lambda: ledger.create_job(7, CONFIG), n), n)
    if workload == "claim_finish":
        _ledger_fill(ledger, n)

        def claim_finish() -> None:
            for _ in range(n):
                job = ledger.claim("bench-worker")
                ledger.complete(job.id, "done", "success", 1.0, 1)

        return _timed(claim_finish, n)
    if workload == "append":
        job_id = ledger.create_job(7, CONFIG)
        return _timed(_times(lambda: ledger.log_event(job_id, "progress", PAYLOAD), n), n)
    if workload == "read_all":
        _ledger_fill(ledger, n)
        events: list[Any] = []
        result = _timed(lambda: events.extend(ledger.read_all()), n)
        assert len(events) == n
        return result
    specs = [{"chat_id": 7, "config": CONFIG}] * BATCH
    return _timed(_times(lambda: ledger.create_jobs(specs), n // BATCH), n)


# -- the minimal raw APSW baseline (issue 17's definition: benchmarks/minimal.py) ---------------


def _raw(workload: str, durability: str, n: int, directory: Path) -> Result:
    """The least I/O each workload needs (`benchmarks.minimal`): no projection checkpoint, no
    version index, no validation; the same JSON encoding and time stamps as the ledger's."""
    from benchmarks import minimal

    conn = minimal.connect(str(directory / "raw.db"), durability)
    try:
        if workload == "create":
            return _timed(_times(lambda: minimal.create(conn, CONFIG), n), n)
        if workload == "claim_finish":
            minimal.fill(conn, CONFIG, n)  # the backlog, in one transaction (not timed)
            return _timed(_times(lambda: minimal.claim_complete(conn), n), n)
        if workload == "append":
            job_id = str(uuid.uuid4())
            return _timed(
                lambda: [minimal.append(conn, job_id, v, PAYLOAD) for v in range(2, n + 2)], n
            )
        if workload == "read_all":
            for _ in range(n // BATCH):
                minimal.batch(conn, CONFIG)
            rows: list[Any] = []
            result = _timed(lambda: rows.extend(minimal.read_all(conn)), n)
            assert len(rows) == n
            return result
        return _timed(_times(lambda: minimal.batch(conn, CONFIG), n // BATCH), n)
    finally:
        conn.close()


# -- the same rows by hand (benchmarks/raw.py: the ledger's own statements, schema and pragmas) --


def _same_rows(workload: str, durability: str, n: int, directory: Path) -> Result:
    """The ledger's own rows and statements written by hand (no validation, no fold): what the
    ledger's I/O alone reaches, so a peer ahead of this figure is ahead on I/O the laws need."""
    from benchmarks import raw
    from ledger import Ledger

    path = str(directory / "same-rows.db")
    Ledger(path).close()  # the ledger's schema, indexes and LIVE checkpoint
    conn = raw.connect(path, durability)
    try:
        if workload == "create":
            return _timed(_times(lambda: raw.create_job(conn, 7, CONFIG), n), n)
        if workload == "claim_finish":
            for start in range(0, n, 1000):
                raw.create_jobs(conn, [(7, CONFIG)] * min(1000, n - start))

            def claim_finish() -> None:
                for _ in range(n):
                    job_id = raw.claim(conn, "bench-worker")
                    assert job_id is not None
                    raw.complete(conn, job_id, "done")

            return _timed(claim_finish, n)
        if workload == "append":
            job_id = raw.create_job(conn, 7, CONFIG)
            return _timed(_times(lambda: raw.log_event(conn, job_id, "progress", PAYLOAD), n), n)
        if workload == "read_all":
            for _ in range(n // BATCH):
                raw.create_jobs(conn, [(7, CONFIG)] * BATCH)
            rows: list[Any] = []
            result = _timed(lambda: rows.extend(raw.read_all(conn)), n)
            assert len(rows) == n
            return result
        specs = [(7, CONFIG)] * BATCH
        return _timed(_times(lambda: raw.create_jobs(conn, specs), n // BATCH), n)
    finally:
        conn.close()


# -- the peers (run in a child process: they use stdlib sqlite3) ----------------------------------

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


def _persist_queue(workload: str, durability: str, n: int, directory: Path) -> Result:
    """persist-queue: SQLiteAckQueue (put; get + ack) and, for batches, SQLiteQueue with
    auto_commit=False (put x100 + task_done). It has no synchronous option: the pragma is set
    on its one connection (``_putter``, the same as ``_getter`` without multithreading)."""
    import persistqueue

    job = {"chat_id": 7, "config": CONFIG}
    if workload == "batch100":
        queue: Any = persistqueue.SQLiteQueue(str(directory / "pq"), auto_commit=False)
        queue._putter.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")

        def batch() -> None:
            for _ in range(n // BATCH):
                for _ in range(BATCH):
                    queue.put(job)
                queue.task_done()

        try:
            return _timed(batch, n)
        finally:
            queue.close()
    queue = persistqueue.SQLiteAckQueue(str(directory / "pq"), multithreading=False)
    queue._putter.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
    try:
        if workload == "create":
            return _timed(_times(lambda: queue.put(job), n), n)
        for _ in range(n):
            queue.put(job)
        if workload == "claim_finish":

            def claim_finish() -> None:
                for _ in range(n):
                    item = queue.get(block=False, raw=True)
                    queue.ack(id=item["pqid"])

            result = _timed(claim_finish, n)
            assert queue.acked_count() == n
            return result
        items: list[Any] = []
        result = _timed(lambda: items.extend(queue.queue()), n)
        assert len(items) == n
        return result
    finally:
        queue.close()


def _huey(workload: str, durability: str, n: int, directory: Path) -> Result:
    """huey: SqliteHuey; enqueue = calling a task; claim + finish = ``dequeue`` (which deletes
    the task row) + ``execute`` (runs it and stores its result in the kv table). ``fsync=True``
    is its FULL; it has no NORMAL option (``fsync=False`` is synchronous=OFF), so NORMAL uses
    a storage subclass that sets synchronous=NORMAL on each connection it opens."""
    from huey import SqliteHuey  # type: ignore[import-untyped]
    from huey.storage import SqliteStorage  # type: ignore[import-untyped]

    class NormalStorage(SqliteStorage):
        def _create_connection(self) -> Any:
            conn = super()._create_connection()
            conn.execute("pragma synchronous=1")
            return conn

    path = str(directory / "huey.db")
    if durability == "full":
        huey = SqliteHuey("bench", filename=path, fsync=True)
    else:
        huey = SqliteHuey("bench", filename=path, storage_class=NormalStorage)

    @huey.task()
    def job(chat_id: int, config: Any) -> str:
        return "done"

    if workload == "create":
        return _timed(_times(lambda: job(7, CONFIG), n), n)
    for _ in range(n):
        job(7, CONFIG)
    if workload == "claim_finish":

        def claim_finish() -> None:
            for _ in range(n):
                huey.execute(huey.dequeue())

        result = _timed(claim_finish, n)
        assert huey.pending_count() == 0 and huey.storage.result_store_size() == n
        return result
    tasks: list[Any] = []
    result = _timed(lambda: tasks.extend(huey.pending()), n)
    assert len(tasks) == n
    return result


def _eventsourcing(workload: str, durability: str, n: int, directory: Path) -> Result:
    """eventsourcing: an Application on its SQLite module; create = a new aggregate saved (one
    event), append = one event per save of the same aggregate, batch = 100 new aggregates in
    one ``save`` (one transaction), read = every notification mapped back to a domain event.
    It has no synchronous setting: stdlib sqlite3's default (FULL) at both durabilities."""
    from eventsourcing.application import Application

    from benchmarks.peers.es_model import BenchJob

    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(directory / "es.db")}
    app: Any = Application(env=env)
    try:
        if workload == "create":
            return _timed(_times(lambda: app.save(BenchJob(7, CONFIG)), n), n)
        if workload == "append":
            job = BenchJob(7, CONFIG)
            app.save(job)

            def append() -> None:
                for _ in range(n):
                    job.progress(PAYLOAD)
                    app.save(job)

            return _timed(append, n)

        def batch() -> None:
            for _ in range(n // BATCH):
                app.save(*[BenchJob(7, CONFIG) for _ in range(BATCH)])

        if workload == "batch100":
            return _timed(batch, n)
        batch()
        events: list[Any] = []

        def read() -> None:
            notifications = app.recorder.select_notifications(start=None, limit=n + 1)
            events.extend(app.mapper.to_domain_event(item) for item in notifications)

        result = _timed(read, n)
        assert len(events) == n
        return result
    finally:
        app.close()


_REGISTRY: dict[str, Callable[[str, str, int, Path], Result]] = {
    "ledger": _ledger,
    "same-rows": _same_rows,
    "raw": _raw,
    "persist-queue": _persist_queue,
    "huey": _huey,
    "eventsourcing": _eventsourcing,
}
