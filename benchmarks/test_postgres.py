"""PostgreSQL workloads: the ledger against two raw psycopg baselines, both durabilities, one run.

Each group (create, claim+complete, append (log_event), read-all and batch create (create_jobs
x100), at ``full`` and at ``normal``: ``synchronous_commit = off``) has three entries:

- ``ledger``: `Ledger(url, durability=...)`;
- ``raw``: raw psycopg running the statements the backend runs (an event INSERT whose trigger
  hands out the position, the jobs row, the checkpoint: one statement where a lone caller's
  command sends them as one, `postgres.combined`; a lone create is that statement alone, no
  BEGIN or COMMIT), with the backend writer's session settings (`WRITER_STATEMENTS`: generic
  plans), in one transaction per command, without
  the ledger's decide/fold/validation, pipelined as tightly as those statements allow (`Raw`):
  the ratio is what the library costs on top of the least I/O of its own statements;
- ``minimal``: issue 17's baseline, the least I/O each workload needs (`benchmarks.minimal_pg`:
  a 4-column job row and its event, a bare event insert, ...): the ratio is what the laws and the
  library cost together.

Each side has a schema of its own on the same server. The ledger entry also times one call of
each baseline before each of its rounds (``paired_raw_median``, ``paired_minimal_median``), so
drift on a noisy machine hits all three alike; `report.py` prints those "interleaved" ratios.
Skips when no server can start; quick under ``LEDGER_BENCH_QUICK=1``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest

from benchmarks.conftest import CONFIG, interleaved, size
from ledger import EventType, Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
from benchmarks import minimal_pg  # noqa: E402
from ledger.backends.postgres import events_table, jobs_table  # noqa: E402
from ledger.backends.postgres.backend import WRITER_STATEMENTS  # noqa: E402
from ledger.backends.postgres.combined import Combined  # noqa: E402
from ledger.backends.postgres.connection import SYNCHRONOUS_COMMIT, schema_text  # noqa: E402
from tests import postgres_cluster  # noqa: E402

# More rounds where a call is fast (no wait for the WAL flush): short medians are noisy.
ROUNDS = {"full": size(300, 3), "normal": size(1000, 3)}
WARMUP = size(20, 0)  # untimed calls first: psycopg prepares a statement from its fifth run
BATCH = 100
BATCH_ROUNDS = size(40, 2)
READ_JOBS = size(1000, 20)
READ_ROUNDS = size(60, 2)
IMPLS = ["ledger", "raw", "minimal"]


class Raw:
    """Raw psycopg on the backend's own statements, doing the least I/O they allow: the
    connection stays in autocommit and pipeline mode and each transaction sends its own BEGIN
    and COMMIT, so it waits only where a read needs its answer and once for the COMMIT (the
    ledger's writer waits for its BEGIN too: psycopg syncs a transaction's start)."""

    def __init__(self, conn: Any, pipeline: Any) -> None:
        self.conn = conn
        self.pipeline = pipeline

    def execute(self, statement: str, params: Any = None) -> Any:
        return self.conn.execute(statement, params)

    def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(statement, rows)

    def commit(self) -> None:
        """The checkpoint to the head and the COMMIT, sent after the writes; one wait."""
        self.conn.execute(events_table.checkpoint_to_head_statement, ("jobs",))
        self.conn.execute("COMMIT")
        self.pipeline.sync()

    def commit_with(self, combined: Combined, *, alone: bool = False) -> Kept:
        """A command's events and job row, the checkpoint folded in (the one statement a lone
        caller's COMMIT sends, `postgres.combined`, returning what the backend keeps of the
        row: its xmin, created_position, the transaction's id and the server's start), then
        the COMMIT (none where the statement is the whole transaction, ``alone``); one wait."""
        cursor = self.conn.execute(*combined.statement("jobs", returning=True))
        if not alone:
            self.conn.execute("COMMIT")
        self.pipeline.sync()
        row = cursor.fetchone()
        assert row is not None
        return Kept(*row)

    def guard(self, job_id: str, version: int, kept: Kept) -> None:
        """The first statement of a lone command on a job this connection wrote last (the
        backend decides on the row it kept): the row locked, still at that version and xmin;
        nothing waited for."""
        params = jobs_table.guard_params(job_id, version, kept.xmin, kept.xid, kept.started)
        self.execute(jobs_table.guard_statement, params)


class Kept(NamedTuple):
    """What the held write returns of its row (`Raw.commit_with`)."""

    xmin: str
    created_position: int
    xid: str
    started: str


@dataclass
class Trio:
    """The ledger, the same-statements raw connection and the minimal one, at ``durability``."""

    ledger: Ledger
    raw: Raw
    least: minimal_pg.Minimal
    durability: str


@pytest.fixture(params=["full", "normal"])
def pg(request: pytest.FixtureRequest, pg_server: str) -> Iterator[Trio]:
    """The three sides, each in a fresh schema of its own, at the durability of the param."""
    durability = request.param
    ledger_url = postgres_cluster.create_schema(pg_server, prefix="bench")
    raw_url = postgres_cluster.create_schema(pg_server, prefix="benchraw")
    least_url = postgres_cluster.create_schema(pg_server, prefix="benchmin")
    ledger = Ledger(ledger_url, durability=durability)
    conn = psycopg.connect(raw_url, autocommit=True)
    conn.execute("SET TimeZone TO 'UTC'")
    conn.execute(f"SET synchronous_commit TO {SYNCHRONOUS_COMMIT[durability]}")
    for statement in WRITER_STATEMENTS:  # the writer's planner settings, as the backend's
        conn.execute(statement)
    conn.execute(schema_text().encode())
    conn.execute(events_table.checkpoint_upsert_statement, ("jobs", 1, 0))
    least = minimal_pg.connect(least_url, durability)
    with conn.pipeline() as pipeline:
        yield Trio(ledger, Raw(conn, pipeline), least, durability)
    ledger.close()
    conn.close()
    least.close()
    for url in (ledger_url, raw_url, least_url):
        postgres_cluster.drop_schema(url)


def _run(
    benchmark: Any,
    impl: str,
    rounds: int,
    ledger_call: Callable[[], object],
    raw_call: Callable[[], object],
    minimal_call: Callable[[], object],
) -> None:
    """Time ``impl``'s call. The ledger entry runs one call of each baseline before each of its
    rounds and records their medians (paired_*_median), as benchmarks/test_writes.py does."""
    calls = {"ledger": ledger_call, "raw": raw_call, "minimal": minimal_call}
    for _ in range(WARMUP):
        if impl == "ledger":
            raw_call()
            minimal_call()
        calls[impl]()
    if impl != "ledger":
        benchmark.pedantic(calls[impl], rounds=rounds, iterations=1)
        return
    interleaved(benchmark, ledger_call, raw_call, minimal_call, rounds)


# -- the raw side: the backend's own statements ------------------------------------------------


def _row(job_id: str, now: datetime) -> tuple[Any, ...]:
    """A new job's row for `jobs_table.insert_created_statement`, which takes its
    created_position from its created event (the job id in that column's place)."""
    return (
        job_id, 1, None, None, json.dumps(CONFIG), "pending", None, None, None, None, None, None,
        None, None, now, now, 1, "default", 0, now, 0, 1, None, None, job_id, None, *_LATER,
    )  # fmt: skip


# Columns added after the first 26 (results, trees and budgets, holders): their new-job values.
_LATER = tuple(0.0 if c == "subtree_cost_cents" else None for c in jobs_table.COLUMNS[26:])
_HOLDER = (socket.gethostname(), str(uuid.uuid4()), os.getpid(), 123456789)
_POSITION = jobs_table.COLUMNS.index("created_position")
_CREATED = json.dumps({"chat_id": 1, "config": CONFIG})


def raw_create(raw: Raw, now: datetime, kept: list[Kept] | None = None) -> str:
    """One statement, outside a transaction block, as a lone create is (``kept``: gets what
    the backend keeps of the row)."""
    job_id = str(uuid.uuid4())
    row = _row(job_id, now)
    written = raw.commit_with(
        Combined(
            [(job_id, 1, "created", _CREATED, now)],
            jobs_table.insert_created_from_statement,
            row[:_POSITION] + row[_POSITION + 1 :],
        ),
        alone=True,
    )
    if kept is not None:
        kept[:] = [written]
    return job_id


def raw_create_many(raw: Raw, n: int, now: datetime) -> None:
    """``n`` jobs in one transaction, as `create_jobs` writes them."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    raw.execute("BEGIN")
    raw.executemany(
        events_table.insert_deferred_statement,
        [(job_id, 1, "created", _CREATED, now) for job_id in ids],
    )
    raw.executemany(jobs_table.insert_created_statement, [_row(job_id, now) for job_id in ids])
    raw.commit()


def raw_claim_complete(raw: Raw, now: datetime) -> None:
    """Two transactions, as the ledger's two commands: the claim (the expired-lease look, the
    holder look and the claim query that locks and returns the row, sent together and then
    read, as `before_claim` does) and the completion (on the row the claim wrote: the guard
    locks it, nothing read before the COMMIT, as the backend's lone command does)."""
    raw.execute("BEGIN")
    expired = raw.execute(jobs_table.expired_limit_statement, (now, 100))
    held = raw.execute(jobs_table.held_on_statement, (_HOLDER[0],))
    claimed = raw.execute(jobs_table.claim_any_statement, (now,))
    expired.fetchall()
    held.fetchall()
    job_id = claimed.fetchone()[0]
    kept = raw.commit_with(
        Combined(
            [(job_id, 2, "claimed", "{}", now)],
            "UPDATE jobs SET version = 2, updated_at = %s, status = 'running', worker_id = 'w', "
            "started_at = %s, lease_expires_at = %s, attempts = 1, lease_seconds = 300, "
            "holder_host = %s, holder_boot_id = %s, holder_pid = %s, holder_start = %s "
            "WHERE id = %s",
            (now, now, now, *_HOLDER, job_id),
        )
    )
    raw.execute("BEGIN")
    raw.guard(job_id, 2, kept)
    raw.commit_with(
        Combined(
            [(job_id, 3, "completed", "{}", now)],
            "UPDATE jobs SET version = 3, updated_at = %s, status = 'completed', "
            "completed_at = %s, lease_expires_at = NULL, result_summary = 'ok', "
            "result_status = 'success', cost_cents = 1.0, duration_seconds = 1 WHERE id = %s",
            (now, now, job_id),
        )
    )


def raw_append(raw: Raw, job_id: str, version: int, now: datetime, kept: list[Kept]) -> None:
    """An event on a job this connection wrote last, as the backend's lone command: the guard
    (the row locked, still as ``kept``), then the event, the row's version and the checkpoint
    in one statement, and the COMMIT; one wait. ``kept`` gets the row as written now."""
    raw.execute("BEGIN")
    raw.guard(job_id, version - 1, kept[0])
    kept[0] = raw.commit_with(
        Combined(
            [(job_id, version, "progress", json.dumps({"step": 1}), now)],
            jobs_table.update_statement(("version", "updated_at")),
            (version, now, job_id),
        )
    )


def raw_append_many(raw: Raw, job_id: str, version: int, n: int, now: datetime) -> int:
    """``n`` events on one job in one transaction, as `log_events` writes them: the row
    locked, the event inserts (in one statement here), the row's version and the checkpoint.
    Returns the version."""
    raw.execute("BEGIN")
    raw.execute(jobs_table.lock_row_statement, (job_id,)).fetchone()
    data = json.dumps({"step": 1})
    raw.execute(  # one multi-row INSERT: the fewest statements these rows can take
        events_table.insert_rows_statement(n),
        [value for i in range(n) for value in (job_id, version + i, "progress", data, now)],
    )
    last = version + n - 1
    raw.execute("UPDATE jobs SET version = %s, updated_at = %s WHERE id = %s", (last, now, job_id))
    raw.commit()  # the checkpoint to the head, then the COMMIT
    return last + 1


def raw_read(raw: Raw) -> list[Any]:
    rows: list[Any] = raw.execute(events_table.after_statement, (0,)).fetchall()
    return rows  # psycopg has parsed each json data already


# -- the workloads -------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_pg_create(benchmark: Any, pg: Trio, impl: str) -> None:
    benchmark.group = f"pg-create [{pg.durability}]"
    now = datetime.now(UTC)
    _run(
        benchmark,
        impl,
        ROUNDS[pg.durability],
        lambda: pg.ledger.create_job(7, CONFIG),
        lambda: raw_create(pg.raw, now),
        lambda: minimal_pg.create(pg.least, CONFIG),
    )
    assert pg.ledger.verify().ok


@pytest.mark.parametrize("impl", IMPLS)
def test_pg_claim_complete(benchmark: Any, pg: Trio, impl: str) -> None:
    benchmark.group = f"pg-claim+complete [{pg.durability}]"
    now = datetime.now(UTC)
    backlog = ROUNDS[pg.durability] + WARMUP + 5
    pg.ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * backlog)
    raw_create_many(pg.raw, backlog, now)
    minimal_pg.fill(pg.least, CONFIG, backlog)

    def claim_complete() -> None:
        job = pg.ledger.claim("w")
        assert job is not None
        pg.ledger.complete(job.id, "ok", "success", worker_id="w")

    _run(
        benchmark,
        impl,
        ROUNDS[pg.durability],
        claim_complete,
        lambda: raw_claim_complete(pg.raw, now),
        lambda: minimal_pg.claim_complete(pg.least),
    )
    assert pg.ledger.verify().ok


@pytest.mark.parametrize("impl", IMPLS)
def test_pg_append(benchmark: Any, pg: Trio, impl: str) -> None:
    benchmark.group = f"pg-append [{pg.durability}]"
    now = datetime.now(UTC)
    payload = {"step": 1, "note": "progress"}
    job_id = pg.ledger.create_job(1, CONFIG)
    raw_kept: list[Kept] = []
    raw_job, raw_versions = raw_create(pg.raw, now, raw_kept), itertools.count(2)
    least_job, least_versions = minimal_pg.create(pg.least, CONFIG), itertools.count(2)
    _run(
        benchmark,
        impl,
        ROUNDS[pg.durability],
        lambda: pg.ledger.log_event(job_id, EventType.PROGRESS, payload),
        lambda: raw_append(pg.raw, raw_job, next(raw_versions), now, raw_kept),
        lambda: minimal_pg.append(pg.least, least_job, next(least_versions), payload),
    )
    assert pg.ledger.verify().ok


@pytest.mark.parametrize("impl", IMPLS)
def test_pg_read_all(benchmark: Any, pg: Trio, impl: str) -> None:
    """Every event read and decoded, READ_JOBS created events on each side."""
    benchmark.group = f"pg-read-all [{pg.durability}]"
    benchmark.extra_info["items"] = READ_JOBS
    pg.ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * READ_JOBS)
    raw_create_many(pg.raw, READ_JOBS, datetime.now(UTC))
    minimal_pg.fill(pg.least, CONFIG, READ_JOBS)
    assert len(pg.ledger.read_all()) == len(raw_read(pg.raw)) == READ_JOBS
    assert len(minimal_pg.read_all(pg.least)) == READ_JOBS
    _run(
        benchmark,
        impl,
        READ_ROUNDS,
        pg.ledger.read_all,
        lambda: raw_read(pg.raw),
        lambda: minimal_pg.read_all(pg.least),
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_pg_log_events(benchmark: Any, pg: Trio, impl: str) -> None:
    """Issue 17's "append 100 events per commit" as the ledger's own call (`log_events`: 100
    activity events to one job); minimal: the same 100 bare event inserts in one transaction."""
    benchmark.group = f"pg-log-events x100 [{pg.durability}]"
    benchmark.extra_info["items"] = BATCH
    now = datetime.now(UTC)
    pairs = [("progress", {"step": n, "note": "progress"}) for n in range(BATCH)]
    job_id = pg.ledger.create_job(1, CONFIG)
    raw_job = raw_create(pg.raw, now)
    raw_version = [2]

    def raw_call() -> None:
        raw_version[0] = raw_append_many(pg.raw, raw_job, raw_version[0], BATCH, now)

    _run(
        benchmark,
        impl,
        BATCH_ROUNDS,
        lambda: pg.ledger.log_events(job_id, pairs),
        raw_call,
        lambda: minimal_pg.batch(pg.least, CONFIG),
    )
    assert pg.ledger.verify().ok


@pytest.mark.parametrize("impl", IMPLS)
def test_pg_batch_create(benchmark: Any, pg: Trio, impl: str) -> None:
    benchmark.group = f"pg-batch-create x100 [{pg.durability}]"
    benchmark.extra_info["items"] = BATCH
    now = datetime.now(UTC)
    batch = [{"chat_id": 1, "config": CONFIG}] * BATCH
    _run(
        benchmark,
        impl,
        BATCH_ROUNDS,
        lambda: pg.ledger.create_jobs(batch),
        lambda: raw_create_many(pg.raw, BATCH, now),
        lambda: minimal_pg.batch(pg.least, CONFIG),
    )
    assert pg.ledger.verify().ok
