"""The CLI on a PostgreSQL URL (moving a SQLite ledger up, errors a person can read) and
wake-ups: an idle worker starts a job another process created within moments, not a poll
interval, on PostgreSQL (LISTEN/NOTIFY) and on SQLite (PRAGMA data_version)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ledger import Ledger, Result, Worker

pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test]'")

CONFIG = {"role": "coder", "task": "cli"}
DEADLINE = 60.0  # a generous bound for subprocesses and waits, never a timing assertion


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def test_export_from_sqlite_import_into_postgres_then_verify(
    tmp_path: Path, postgres_schema: str
) -> None:
    db = str(tmp_path / "app.db")
    with Ledger(db) as ledger:
        ids = [ledger.create_job(n, {**CONFIG, "n": n}) for n in range(5)]
        job = ledger.claim("w1")
        assert job is not None
        ledger.log_event(job.id, "progress", {"step": 1, "ünï": "çødé"})
        ledger.complete(job.id, "done", "success", 2.5, 3, worker_id="w1")
        ledger.cancel(ids[4])
        before_events = ledger.read_all()
        before_jobs = sorted(ledger.jobs(limit=100), key=lambda j: j.id)
    exported = cli("export", "--db", db)
    assert exported.returncode == 0, exported.stderr
    imported = cli("import", "--db", postgres_schema, "-", stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    verified = cli("verify", "--db", postgres_schema)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with Ledger(postgres_schema) as moved:
        assert moved.read_all() == before_events
        assert sorted(moved.jobs(limit=100), key=lambda j: j.id) == before_jobs
        assert moved.verify().ok
    # the moved ledger exports exactly what the SQLite one did
    again = cli("export", "--db", postgres_schema)
    assert again.returncode == 0 and again.stdout == exported.stdout


@pytest.mark.parametrize(
    "bad",
    [
        "postgresql://postgres:s3cr3t-pw@/ledger_test?host=/nonexistent-dir&port=5432",
        "postgresql://nobody_here:s3cr3t-pw@/{db}?host={host}",
    ],
    ids=["wrong-host", "wrong-user"],
)
def test_unreachable_server_is_a_one_line_error_without_the_password(
    postgres_url: str, bad: str
) -> None:
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(postgres_url)
    url = bad.format(db=parts.path.lstrip("/"), host=parse_qs(parts.query)["host"][0])
    result = cli("jobs", "--db", url)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "s3cr3t-pw" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "PostgreSQL" in lines[0]


# -- wake-ups -------------------------------------------------------------------------------------

_CREATOR = """
import sys
from ledger import Ledger
with Ledger(sys.argv[1]) as ledger:
    print(ledger.create_job(7, {"role": "coder", "task": "wake"}))
"""


def _wakes_up(target: str) -> None:
    """A worker idling with poll_interval=30 runs a job another process creates; it would
    take 30 s without a wake-up, and the test's deadline is far below that."""
    idle = threading.Event()
    handled: list[str] = []

    class IdleProbe(Worker):
        def _idle(self) -> None:  # the moment it found nothing to claim and starts waiting
            idle.set()
            super()._idle()

    def handler(job: Any, ctx: Any) -> Result:
        handled.append(job.id)
        return Result("woke", "success")

    with Ledger(target) as ledger:
        worker = IdleProbe(ledger, handler, poll_interval=30, heartbeat_every=10)
        thread = threading.Thread(target=lambda: worker.run(max_jobs=1))
        thread.start()
        assert idle.wait(DEADLINE), "the worker never went idle"
        begun = time.monotonic()
        created = subprocess.run(
            [sys.executable, "-c", _CREATOR, target], capture_output=True, text=True, timeout=60
        )
        assert created.returncode == 0, created.stderr
        thread.join(20)  # well below the 30 s poll interval
        waited = time.monotonic() - begun
        if thread.is_alive():
            worker.stop()
            thread.join(DEADLINE)
        assert handled == [created.stdout.strip()], f"not woken within {waited:.1f} s"
        assert ledger.verify().ok


def test_idle_worker_wakes_on_postgres_notify(postgres_database: str) -> None:
    _wakes_up(postgres_database)


def test_idle_worker_wakes_on_sqlite_commit(tmp_path: Path) -> None:
    _wakes_up(str(tmp_path / "wake.db"))
