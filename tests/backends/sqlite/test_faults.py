"""Faults: apply failing mid-command, a full disk, a read-only database. Each leaves nothing
written, raises a `LedgerError` a person can act on, and the ledger stays usable."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import projections.jobs
from ledger import JobStatus, Ledger, LedgerBusy, LedgerError, StorageError
from tests.conftest import FakeClock, snapshot

CONFIG = {"role": "coder"}


def _fail_at(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """Make the projection's apply raise at the k-th event it sees from now on."""
    real = projections.jobs.advance
    seen = {"n": 0}

    def flaky(row, stored):  # type: ignore[no-untyped-def]
        seen["n"] += 1
        if seen["n"] == k:
            raise RuntimeError(f"injected fault at event {k}")
        return real(row, stored)

    monkeypatch.setattr(projections.jobs, "advance", flaky)


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_create_many_with_apply_failing_at_event_k(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    ledger.create_job(1, CONFIG)
    before = snapshot(ledger.path)
    _fail_at(monkeypatch, k)
    with pytest.raises(RuntimeError, match="injected"):
        ledger.create_jobs([{"chat_id": n, "config": CONFIG} for n in range(10)])
    assert snapshot(ledger.path) == before
    monkeypatch.undo()
    assert len(ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * 3)) == 3
    assert ledger.verify().ok


@pytest.mark.parametrize("k", [1, 3, 4])
def test_claim_with_rescue_and_apply_failing_at_event_k(
    ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    """Three expired leases to rescue plus the claim itself: four events in one command."""
    ids = [ledger.create_job(1, CONFIG, max_attempts=3) for _ in range(3)]
    for n in range(3):
        ledger.claim(f"w{n}", lease=5)
    clock.advance(10)
    before = snapshot(ledger.path)
    _fail_at(monkeypatch, k)
    with pytest.raises(RuntimeError, match="injected"):
        ledger.claim("rescuer")
    assert snapshot(ledger.path) == before
    assert all(ledger.get_job(i).status is JobStatus.RUNNING for i in ids)  # type: ignore[union-attr]
    monkeypatch.undo()
    job = ledger.claim("rescuer")
    assert job is not None and job.attempts == 2
    assert ledger.verify().ok


def test_full_disk_is_a_clear_error_and_writes_nothing(ledger: Ledger) -> None:
    ledger.create_job(1, CONFIG)
    pages = ledger._backend._conn.execute("PRAGMA page_count").get
    ledger._backend._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now "full"
    big = {"blob": "x" * 200_000}
    before = snapshot(ledger.path)
    with pytest.raises(StorageError, match="full") as raised:
        ledger.create_job(1, big)
    assert "free space" in str(raised.value)
    assert snapshot(ledger.path) == before
    ledger._backend._conn.execute("PRAGMA max_page_count = 1073741823")
    assert ledger.create_job(1, big)  # usable again once there is room
    assert ledger.verify().ok


def test_read_only_database_is_a_clear_error(db_path: str) -> None:
    with Ledger(db_path) as writer:
        job_id = writer.create_job(1, CONFIG)
    before = snapshot(db_path)
    with Ledger(db_path, readonly=True) as reader:
        assert reader.get_job(job_id) is not None
        calls: list[Callable[[], object]] = [
            lambda: reader.create_job(1, CONFIG),
            lambda: reader.claim("w"),
            lambda: reader.cancel(job_id),
            lambda: reader.replay(),
        ]
        for call in calls:
            with pytest.raises(LedgerError, match=r"read-only|readonly"):
                call()
    assert snapshot(db_path) == before


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open"):
        Ledger(str(tmp_path / "no" / "such" / "dir" / "ledger.db"))


def test_a_ledger_copied_while_closed_is_complete(db_path: str, tmp_path: Path) -> None:
    with Ledger(db_path) as ledger:
        ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * 5)
    copy = tmp_path / "copy.db"
    shutil.copy(db_path, copy)
    with Ledger(str(copy)) as copied:
        assert copied.count_jobs() == 5 and copied.verify().ok
    conn = apsw.Connection(str(copy))
    assert conn.execute("PRAGMA integrity_check").get == "ok"
    conn.close()


def test_a_closed_ledger_says_so(db_path: str) -> None:
    ledger = Ledger(db_path)
    ledger.close()
    with pytest.raises(StorageError, match="closed"):
        ledger.create_job(1, CONFIG)
    with pytest.raises(StorageError, match="closed"):
        ledger.get_job("x")


def test_a_new_file_held_open_by_another_reader_waits_then_says_why(tmp_path: Path) -> None:
    """Switching a new file to WAL needs it to itself: while another connection reads it, the
    open retries up to the busy timeout, then says what held it (not an instant, vague BUSY)."""
    path = str(tmp_path / "new.db")
    other = apsw.Connection(path)  # a new file, still in rollback-journal mode
    other.execute("BEGIN")
    other.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # holds a shared lock
    with pytest.raises(LedgerBusy, match="switching the ledger to WAL mode") as raised:
        Ledger(path, busy_timeout=0.2)
    assert "busy timeout (0.2 s)" in str(raised.value)
    other.execute("COMMIT")
    other.close()
    with Ledger(path) as ledger:  # the lock is gone: the same open succeeds
        ledger.create_job(1, CONFIG)
        assert ledger.verify().ok
