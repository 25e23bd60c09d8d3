"""Shared fixtures: a movable clock and ledgers on real files (tmp_path), opened with APSW only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apsw
import pytest

from ledger import Ledger

# The session's throwaway PostgreSQL server: fixtures postgres_url, postgres_database.
pytest_plugins = ["tests.postgres_cluster"]

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """A clock tests move by hand, so leases expire without sleeping."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "ledger.db")


@pytest.fixture
def ledger(db_path: str, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger(db_path, clock=clock) as opened:
        yield opened


def table_dump(path: str, table: str = "jobs") -> list[tuple]:
    """Every row of a table, exactly as stored, read through a separate APSW connection."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
    finally:
        conn.close()


def event_count(path: str) -> int:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(conn.execute("SELECT count(*) FROM events").get)
    finally:
        conn.close()


def snapshot(path: str) -> tuple[int, list[tuple], list[tuple]]:
    """What a failed command must leave unchanged: event count, jobs and checkpoints."""
    return event_count(path), table_dump(path, "jobs"), table_dump(path, "projection_checkpoints")


def run_cli(
    *args: str,
    db: str | None = None,
    check: bool = False,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m ledger ARGS`` in a real subprocess."""
    command = [sys.executable, "-m", "ledger", *args]
    if db is not None:
        command += ["--db", db]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    result = subprocess.run(
        command,
        capture_output=True,
        env=environment,
        cwd=cwd,
        input=input.decode() if input else None,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}: {result.stderr}")
    return result
