"""The minimal raw-APSW baseline of issue 17: the least I/O each workload needs.

create: a job row and its created event in one transaction; claim+complete: two such
transactions, each moving one job and appending its event; append: one bare event insert; batch:
100 event inserts in one transaction; read: a full scan decoding every event. No projection
checkpoint, no version index, no validation; the same JSON encoding and time stamps as the
ledger's events. `benchmarks/raw.py` is the other baseline (the ledger's own rows and indexes).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import apsw
import msgspec

from ledger.backends.sqlite import checkpoints

SCHEMA = (
    "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, data TEXT NOT NULL, "
    "version INTEGER NOT NULL)",
    "CREATE INDEX jobs_status ON jobs (status)",
    "CREATE TABLE events (position INTEGER PRIMARY KEY, job_id TEXT NOT NULL, "
    "version INTEGER NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL, recorded_at TEXT NOT NULL)",
)
EVENT = "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?)"
BATCH = 100
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_fromiso = datetime.fromisoformat


def connect(path: str, durability: str) -> apsw.Connection:
    """A new file with the minimal schema, WAL, at ``durability`` ("full" or "normal")."""
    conn = apsw.Connection(path)
    conn.set_busy_timeout(30_000)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    for statement in SCHEMA:
        conn.execute(statement)
    # WAL checkpoints the ledger's way (a background thread; the writer only copies the tail at
    # 4000 pages), so both sides do the same checkpoint work in the same place
    checkpoints.attach(conn, path, 30_000)
    return conn


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _created(config: Any) -> str:
    return _encode({"type": "created", "chat_id": 7, "config": config}).decode()


def create(conn: apsw.Connection, config: Any) -> str:
    job_id = str(uuid.uuid4())
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO jobs VALUES (?, 'pending', ?, 1)", (job_id, _encode(config).decode()))
    conn.execute(EVENT, (job_id, 1, "created", _created(config), _now()))
    conn.execute("COMMIT")
    return job_id


def fill(conn: apsw.Connection, config: Any, n: int) -> None:
    """``n`` pending jobs in one transaction (a backlog to claim; not timed)."""
    data, created = _encode(config).decode(), _created(config)
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(n):
        job_id = str(uuid.uuid4())
        conn.execute("INSERT INTO jobs VALUES (?, 'pending', ?, 1)", (job_id, data))
        conn.execute(EVENT, (job_id, 1, "created", created, _now()))
    conn.execute("COMMIT")


def _move(conn: apsw.Connection, kind: str, status: str, data: dict[str, Any], find: str) -> str:
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute(find).fetchone()
    assert row is not None, "nothing to move"
    job_id, version = row
    conn.execute(
        "UPDATE jobs SET status = ?, version = ? WHERE id = ?", (status, version + 1, job_id)
    )
    conn.execute(EVENT, (job_id, version + 1, kind, _encode(data).decode(), _now()))
    conn.execute("COMMIT")
    return job_id  # type: ignore[no-any-return]


def claim_complete(conn: apsw.Connection) -> None:
    """Claim one pending job and complete it: two transactions."""
    _move(
        conn,
        "claimed",
        "running",
        {"type": "claimed", "worker_id": "bench-worker"},
        "SELECT id, version FROM jobs WHERE status = 'pending' LIMIT 1",
    )
    _move(
        conn,
        "completed",
        "completed",
        {"type": "completed", "summary": "done", "result_status": "success"},
        "SELECT id, version FROM jobs WHERE status = 'running' LIMIT 1",
    )


def append(conn: apsw.Connection, job_id: str, version: int, payload: Any) -> None:
    """One bare event insert (its own autocommit transaction)."""
    data = _encode({"type": "progress", "payload": payload}).decode()
    conn.execute(EVENT, (job_id, version, "progress", data, _now()))


def batch(conn: apsw.Connection, config: Any) -> None:
    """100 event inserts in one transaction."""
    created = _created(config)
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(BATCH):
        conn.execute(EVENT, (str(uuid.uuid4()), 1, "created", created, _now()))
    conn.execute("COMMIT")


def read_all(conn: apsw.Connection) -> list[tuple[Any, ...]]:
    """Scan + decode: each row's JSON decoded, its time parsed."""
    return [
        (position, job_id, version, kind, _decode(data), _fromiso(recorded_at))
        for position, job_id, version, kind, data, recorded_at in conn.execute(
            "SELECT position, job_id, version, type, data, recorded_at FROM events "
            "ORDER BY position"
        )
    ]
