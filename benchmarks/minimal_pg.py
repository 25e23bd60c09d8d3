"""The minimal raw-psycopg baseline of issue 17 on PostgreSQL: the least I/O each workload needs.

create: a job row and its created event in one transaction; claim+complete: two such
transactions, each moving one job and appending its event (the claim takes the first pending job
with ``FOR UPDATE SKIP LOCKED`` and sets it running in one statement); append: one bare event
insert; batch: 100 event inserts in one transaction; read: a full scan decoding every event. No
projection checkpoint, no position counter, no version index, no triggers, no validation; the
same JSON encoding and time stamps as the ledger's events, on a schema of its own (the URL's
``search_path``) on the same server. `benchmarks/minimal.py` is its SQLite twin; `Raw` in
`benchmarks/test_postgres.py` is the other baseline (the backend's own statements).

The connection is pipelined as tightly as psycopg allows, as `Raw` is: autocommit and pipeline
mode for good, each transaction sends its own BEGIN and COMMIT and waits once, for the COMMIT
(and the claim once more, for the id its UPDATE returns). ``durability="normal"`` is
``synchronous_commit = off`` on this connection, as the ledger's.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg

from ledger.backends.postgres.connection import SYNCHRONOUS_COMMIT

SCHEMA = (
    "CREATE TABLE jobs (id text PRIMARY KEY, status text NOT NULL, data text NOT NULL, "
    "version integer NOT NULL)",
    "CREATE INDEX jobs_status ON jobs (status)",
    "CREATE TABLE events (position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "job_id text NOT NULL, version integer NOT NULL, type text NOT NULL, data text NOT NULL, "
    "recorded_at timestamptz NOT NULL)",
)
JOB = "INSERT INTO jobs (id, status, data, version) VALUES (%s, 'pending', %s, 1)"
EVENT = "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES (%s, %s, %s, %s, %s)"
# One statement: the first pending job (the status index, in insertion order), locked, set running.
CLAIM = (
    "UPDATE jobs SET status = 'running', version = version + 1 WHERE id = "
    "(SELECT id FROM jobs WHERE status = 'pending' LIMIT 1 FOR UPDATE SKIP LOCKED) "
    "RETURNING id, version"
)
COMPLETE = "UPDATE jobs SET status = 'completed', version = %s WHERE id = %s"
READ = "SELECT position, job_id, version, type, data, recorded_at FROM events ORDER BY position"
BATCH = 100
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_CLAIMED = _encode({"type": "claimed", "worker_id": "bench-worker"}).decode()
_COMPLETED = _encode({"type": "completed", "summary": "done", "result_status": "success"}).decode()


class Minimal:
    """One connection in autocommit and pipeline mode, with the minimal schema."""

    def __init__(self, url: str, durability: str) -> None:
        self.conn: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
        execute = self.conn.execute
        execute("SET TimeZone TO 'UTC'")  # timestamptz loads as datetime.UTC, as the ledger's
        execute(f"SET synchronous_commit TO {SYNCHRONOUS_COMMIT[durability]}")
        for statement in SCHEMA:
            execute(statement)
        self._block = self.conn.pipeline()
        self.pipeline = self._block.__enter__()
        self.execute = execute

    def commit(self) -> None:
        """COMMIT, sent with whatever the pipeline holds, then waited for once."""
        self.execute("COMMIT")
        self.pipeline.sync()

    def close(self) -> None:
        self._block.__exit__(None, None, None)
        self.conn.close()


def connect(url: str, durability: str) -> Minimal:
    """The minimal schema on ``url`` (an empty schema of its own), at ``durability``."""
    return Minimal(url, durability)


def _created(config: Any) -> str:
    return _encode({"type": "created", "chat_id": 7, "config": config}).decode()


def create(db: Minimal, config: Any) -> str:
    job_id = str(uuid.uuid4())
    execute = db.execute
    execute("BEGIN")
    execute(JOB, (job_id, _encode(config).decode()))
    execute(EVENT, (job_id, 1, "created", _created(config), datetime.now(UTC)))
    db.commit()
    return job_id


def fill(db: Minimal, config: Any, n: int) -> None:
    """``n`` pending jobs in one transaction (a backlog to claim; not timed)."""
    data, created, now = _encode(config).decode(), _created(config), datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    db.execute("BEGIN")
    with db.conn.cursor() as cursor:
        cursor.executemany(JOB, [(job_id, data) for job_id in ids])
        cursor.executemany(EVENT, [(job_id, 1, "created", created, now) for job_id in ids])
    db.commit()


def claim_complete(db: Minimal) -> None:
    """Claim one pending job and complete it: two transactions (three waits: the claim's id,
    then each COMMIT)."""
    execute = db.execute
    execute("BEGIN")
    row = execute(CLAIM).fetchone()
    assert row is not None, "nothing to claim"
    job_id, version = row
    execute(EVENT, (job_id, version, "claimed", _CLAIMED, datetime.now(UTC)))
    db.commit()
    execute("BEGIN")
    execute(COMPLETE, (version + 1, job_id))
    execute(EVENT, (job_id, version + 1, "completed", _COMPLETED, datetime.now(UTC)))
    db.commit()


def append(db: Minimal, job_id: str, version: int, payload: Any) -> None:
    """One bare event insert (its own transaction: autocommit, one wait)."""
    data = _encode({"type": "progress", "payload": payload}).decode()
    db.execute(EVENT, (job_id, version, "progress", data, datetime.now(UTC)))
    db.pipeline.sync()


def batch(db: Minimal, config: Any) -> None:
    """100 event inserts in one transaction."""
    created, now = _created(config), datetime.now(UTC)
    db.execute("BEGIN")
    with db.conn.cursor() as cursor:
        cursor.executemany(
            EVENT, [(str(uuid.uuid4()), 1, "created", created, now) for _ in range(BATCH)]
        )
    db.commit()


def read_all(db: Minimal) -> list[tuple[Any, ...]]:
    """Scan + decode: each row's JSON decoded with msgspec; its time loaded by psycopg's C
    timestamptz loader into an aware UTC datetime, as the ledger's reads get it."""
    return [
        (position, job_id, version, kind, _decode(data), recorded_at)
        for position, job_id, version, kind, data, recorded_at in db.execute(READ).fetchall()
    ]
