"""Building big ledgers for the benchmarks: valid event logs written straight into the events
table (in big transactions, which the one-commit-per-call API would take an hour for), then
opened with `Ledger`, whose catch-up folds them into the projection through the normal code."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apsw

from ledger import Ledger
from ledger.domain import events as ev
from ledger.domain.timeutil import to_text as to_db

BASE = datetime(2026, 1, 1, tzinfo=UTC)
FAR = datetime(2100, 1, 1, tzinfo=UTC)  # leases of running jobs: never rescued mid-benchmark
ROLES = ("coder", "researcher", "reviewer", "tester")
INSERT = "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?)"


def _job_events(i: int, chats: int) -> list[ev.Event]:
    """5% pending, 5% running, 5% failed, 85% completed; about 10.45 events per job."""
    role = ROLES[i % 4]
    out: list[ev.Event] = [
        ev.JobCreated(chat_id=i % chats, config={"role": role, "task": f"task number {i}"})
    ]
    if i % 20 == 0:
        return out
    out += [
        ev.JobClaimed(worker_id=f"w{i % 8}", lease_expires_at=FAR),
        ev.Started(payload={"role": role}),
        *(ev.Progress(payload={"message": f"step {k} of 4"}) for k in range(4)),
        *(ev.ToolCall(payload={"tool": "search", "args": {"q": f"q{k}"}}) for k in range(2)),
        ev.HeartbeatRecorded(lease_expires_at=FAR),
    ]
    if i % 20 == 1:
        return out
    if i % 20 == 2:
        return [*out, ev.JobFailed(error="the model gave up")]
    return [
        *out,
        ev.JobCompleted(
            summary=f"finished task {i}",
            result_status="success",
            cost_cents=1.5,
            duration_seconds=i % 300,
        ),
    ]


def _finished_then_pending(i: int, finished: int) -> list[ev.Event]:
    created = ev.JobCreated(chat_id=i % 1000, config={"role": "coder", "task": f"t{i}"})
    return [created, ev.JobCancelled()] if i < finished else [created]


def _rows(jobs: int, make) -> Iterator[tuple[str, int, str, str, str]]:  # type: ignore[no-untyped-def]
    moment = BASE
    step = timedelta(milliseconds=1)
    for i in range(jobs):
        job_id = str(uuid.UUID(int=i + 1, version=4))
        for version, event in enumerate(make(i), start=1):
            moment += step
            yield job_id, version, ev.tag_of(event), ev.encode_text(event), to_db(moment)


def build(path: Path, jobs: int, make) -> Path:  # type: ignore[no-untyped-def]
    if path.exists():
        # Cached by an older release, its projection may have another shape: opening it for
        # writing rebuilds it once, here (a no-op when current), so the raw baselines and the
        # read-only opens of the benchmarks find the current columns.
        Ledger(str(path)).close()
        return path
    partial = path.with_suffix(".partial")
    for suffix in ("", "-wal", "-shm"):
        Path(str(partial) + suffix).unlink(missing_ok=True)
    Ledger(str(partial)).close()  # schema
    conn = apsw.Connection(str(partial))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT, _rows(jobs, make))
    conn.execute("DELETE FROM projection_checkpoints")  # projection stale: Ledger rebuilds it
    conn.execute("COMMIT")
    conn.close()
    Ledger(str(partial)).close()  # catch-up: the replay code folds the log into `jobs`
    partial.rename(path)
    for suffix in ("-wal", "-shm"):
        Path(str(partial) + suffix).unlink(missing_ok=True)
    return path


def big_ledger(directory: Path, jobs: int, chats: int) -> Path:
    return build(directory / f"big-v2-{jobs}-{chats}.db", jobs, lambda i: _job_events(i, chats))


def finished_ledger(directory: Path, finished: int, pending: int) -> Path:
    return build(
        directory / f"finished-v2-{finished}-{pending}.db",
        finished + pending,
        lambda i: _finished_then_pending(i, finished),
    )
