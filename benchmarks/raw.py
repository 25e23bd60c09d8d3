"""The raw-APSW baselines: the same rows, indexes and pragmas as the ledger, hand-written.

Each function issues the statements the ledger issues for the same call (event row, projection
row, checkpoint row), with no validation, no state machine and no abstraction, so that the ratio
ledger/raw measures what the library costs on top of the I/O it cannot avoid.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import apsw
import msgspec

from ledger.backends.sqlite import checkpoints
from ledger.backends.sqlite.jobs_table import COLUMNS
from ledger.domain.timeutil import to_text as to_db

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
INSERT_EVENT = (
    "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?)"
)
# Columns added after the first 26 (results, trees and budgets, holders): a new job's values.
_LATER = tuple(0.0 if c == "subtree_cost_cents" else None for c in COLUMNS[26:])
INSERT_JOB = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# The ledger keeps its checkpoint LIVE (in step with the log, stored once as -1) and each command
# runs this statement, which finds nothing to change: the same statement, the same (no) write.
CHECKPOINT = (
    "UPDATE projection_checkpoints SET position = -1 WHERE name = 'jobs' AND position != -1"
)
# A claim looks at this host's running jobs (the instant rescue of a dead process's jobs) and
# records its holder (host, boot id, pid, process start) on the job row.
HOLDERS = (
    "SELECT holder_boot_id, holder_pid, holder_start FROM jobs INDEXED BY jobs_lease "
    "WHERE status = 'running' AND holder_host = ? LIMIT 65"
)
_HOLDER = (socket.gethostname(), str(uuid.uuid4()), os.getpid(), 123456789)
SELECT_JOB = f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?"
EXPIRED = (
    "SELECT id FROM jobs INDEXED BY jobs_lease WHERE status = 'running' "
    "AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT 100"
)
CANDIDATE = (
    "SELECT id FROM jobs INDEXED BY jobs_claim WHERE status = 'pending' AND run_at <= ? "
    "ORDER BY priority DESC, created_at, created_position LIMIT 1"
)


def connect(path: str, durability: str = "full") -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.set_busy_timeout(30_000)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    checkpoints.attach(conn, path, 30_000)  # WAL checkpoints the ledger's way, in the same place
    return conn


def _now() -> str:
    return to_db(datetime.now(UTC))


def _insert_created(conn: apsw.Connection, chat_id: int, config: Any, at: str) -> str:
    job_id = str(uuid.uuid4())
    data = _enc.encode({"type": "created", "chat_id": chat_id, "config": config}).decode()
    conn.execute(INSERT_EVENT, (job_id, 1, "created", data, at))
    position = conn.last_insert_rowid()
    # fmt: off
    conn.execute(INSERT_JOB, (
        job_id, chat_id, None, None, _enc.encode(config).decode(), "pending", None, None, None,
        None, None, None, None, None, at, at, 1, "default", 0, at, 0, 1, None, None, position, None,
        *_LATER,
    ))
    # fmt: on
    return job_id


def create_job(conn: apsw.Connection, chat_id: int, config: Any) -> str:
    at = _now()
    conn.execute("BEGIN IMMEDIATE")
    job_id = _insert_created(conn, chat_id, config, at)
    conn.execute(CHECKPOINT)
    conn.execute("COMMIT")
    return job_id


def create_jobs(conn: apsw.Connection, specs: list[tuple[int, Any]]) -> list[str]:
    at = _now()
    conn.execute("BEGIN IMMEDIATE")
    ids = [_insert_created(conn, chat_id, config, at) for chat_id, config in specs]
    conn.execute(CHECKPOINT)
    conn.execute("COMMIT")
    return ids


def _append_update(
    conn: apsw.Connection, job_id: str, kind: str, data: bytes, at: str, sets: str, values: tuple
) -> None:
    row = conn.execute(SELECT_JOB, (job_id,)).fetchone()
    version = row[16] + 1
    conn.execute(INSERT_EVENT, (job_id, version, kind, data, at))
    conn.execute(
        f"UPDATE jobs SET {sets}, version = ?, updated_at = ? WHERE id = ?",
        (*values, version, at, job_id),
    )
    conn.execute(CHECKPOINT)


def claim(conn: apsw.Connection, worker_id: str, lease: float = 300.0) -> str | None:
    now = datetime.now(UTC)
    at = to_db(now)
    until = now + timedelta(seconds=lease)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(EXPIRED, (at,)).fetchall()
    conn.execute(HOLDERS, (_HOLDER[0],)).fetchall()
    found = conn.execute(CANDIDATE, (at,)).fetchone()
    if found is None:
        conn.execute("COMMIT")
        return None
    job_id = found[0]
    data = _enc.encode(
        {"type": "claimed", "worker_id": worker_id, "lease_expires_at": until}
    ).decode()
    _append_update(
        conn,
        job_id,
        "claimed",
        data,
        at,
        "status = 'running', worker_id = ?, started_at = ?, lease_expires_at = ?, "
        "attempts = attempts + 1, lease_seconds = ?, holder_host = ?, holder_boot_id = ?, "
        "holder_pid = ?, holder_start = ?",
        (worker_id, at, to_db(until), lease, *_HOLDER),
    )
    conn.execute("COMMIT")
    return job_id  # type: ignore[no-any-return]


def complete(conn: apsw.Connection, job_id: str, summary: str) -> None:
    at = _now()
    data = _enc.encode(
        {
            "type": "completed",
            "summary": summary,
            "result_status": "success",
            "cost_cents": 1.0,
            "duration_seconds": 1,
        }
    ).decode()
    conn.execute("BEGIN IMMEDIATE")
    _append_update(
        conn,
        job_id,
        "completed",
        data,
        at,
        "status = 'completed', completed_at = ?, lease_expires_at = NULL, "
        "result_summary = ?, result_status = 'success', cost_cents = 1.0, "
        "duration_seconds = 1, error_message = NULL",
        (at, summary),
    )
    conn.execute("COMMIT")


def log_event(conn: apsw.Connection, job_id: str, kind: str, payload: Any) -> None:
    at = _now()
    data = _enc.encode({"type": kind, "payload": payload}).decode()
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute(SELECT_JOB, (job_id,)).fetchone()
    version = row[16] + 1
    conn.execute(INSERT_EVENT, (job_id, version, kind, data, at))
    conn.execute("UPDATE jobs SET updated_at = ?, version = ? WHERE id = ?", (at, version, job_id))
    conn.execute(CHECKPOINT)
    conn.execute("COMMIT")


def log_events(conn: apsw.Connection, job_id: str, kind: str, payloads: list[Any]) -> None:
    """`log_event`'s rows for many events in one transaction: the job row read once, the
    events inserted with consecutive versions, the job row and the checkpoint moved once."""
    at = _now()
    rows = [_enc.encode({"type": kind, "payload": payload}).decode() for payload in payloads]
    conn.execute("BEGIN IMMEDIATE")
    version = conn.execute(SELECT_JOB, (job_id,)).fetchone()[16]
    for data in rows:
        version += 1
        conn.execute(INSERT_EVENT, (job_id, version, kind, data, at))
    conn.execute("UPDATE jobs SET updated_at = ?, version = ? WHERE id = ?", (at, version, job_id))
    conn.execute(CHECKPOINT)
    conn.execute("COMMIT")


_fromiso = datetime.fromisoformat


def read_all(conn: apsw.Connection) -> list[tuple]:
    """Scan + decode: each row's JSON decoded, its time parsed."""
    return [
        (position, job_id, version, kind, _dec.decode(data), _fromiso(recorded_at))
        for position, job_id, version, kind, data, recorded_at in conn.execute(
            "SELECT position, job_id, version, type, data, recorded_at FROM events "
            "WHERE position > 0 ORDER BY position"
        )
    ]


_FINAL = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}


def replay(conn: apsw.Connection, schema: list[str]) -> int:
    """Scan + decode + fold into rows by hand + bulk insert + index, in one transaction.
    ``schema``: the table statement first, then the index statements (run after the insert)."""
    rows: dict[str, list[Any]] = {}
    index = {c: i for i, c in enumerate(COLUMNS)}
    status, version, updated = index["status"], index["version"], index["updated_at"]
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DROP TABLE IF EXISTS jobs")
    conn.execute(schema[0])
    count = 0
    for position, job_id, ver, kind, data, at in conn.execute(
        "SELECT position, job_id, version, type, data, recorded_at FROM events ORDER BY position"
    ):
        e = _dec.decode(data)
        count += 1
        if kind == "created":
            rows[job_id] = [
                job_id,
                e["chat_id"],
                e.get("thread_id"),
                e.get("user_id"),
                _enc.encode(e["config"]).decode(),
                "pending",
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                at,
                at,
                ver,
                e.get("queue", "default"),
                e.get("priority", 0),
                e.get("run_at") or at,
                0,
                e.get("max_attempts", 1),
                None,
                e.get("idempotency_key"),
                position,
                None,
                *_LATER,
            ]
            continue
        row = rows[job_id]
        row[version] = ver
        row[updated] = at
        if kind == "claimed":
            row[status] = "running"
            row[index["worker_id"]] = e["worker_id"]
            row[index["started_at"]] = at
            row[index["lease_expires_at"]] = to_db(_fromiso(e["lease_expires_at"]))
            row[index["attempts"]] += 1
            row[index["lease_seconds"]] = (
                _fromiso(e["lease_expires_at"]) - _fromiso(at)
            ).total_seconds()
        elif kind == "heartbeat":
            if e.get("lease_expires_at"):
                row[index["lease_expires_at"]] = to_db(_fromiso(e["lease_expires_at"]))
        elif kind in _FINAL:
            row[status] = _FINAL[kind]
            row[index["completed_at"]] = at
            row[index["lease_expires_at"]] = None
            if kind == "completed":
                row[index["result_summary"]] = e["summary"]
                row[index["result_status"]] = e["result_status"]
                row[index["cost_cents"]] = e["cost_cents"]
                row[index["subtree_cost_cents"]] = e["cost_cents"]  # no parents here: its own
                row[index["duration_seconds"]] = e["duration_seconds"]
                row[index["error_message"]] = None
            elif kind == "failed":
                row[index["error_message"]] = e["error"]
    conn.executemany(INSERT_JOB, rows.values())
    for statement in schema[1:]:
        conn.execute(statement)
    conn.execute(CHECKPOINT)  # folded up to the head: LIVE, as the ledger leaves it
    conn.execute("COMMIT")
    return count
