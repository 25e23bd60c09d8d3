"""Archiving (SQLite): finished jobs move into a sealed archive file, the live ledger continues
in a new segment; no event is lost, changed or duplicated; both files read and verify with the
usual commands; the live segment replays into the live jobs; the file shrinks."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import apsw
import pytest

from ledger import InvalidArgument, JobStatus, Ledger, LedgerError, StorageError
from tests.conftest import FakeClock, run_cli

DAY = 86400


def _history(ledger: Ledger, clock: FakeClock) -> dict[str, list[str]]:
    """Old finished jobs (completed, failed, cancelled), a paused queue, recent finished jobs
    and live ones (pending, running)."""
    old = []
    for n in range(30):
        job_id = ledger.create_job(1, {"n": n, "pad": "x" * 2000})
        claimed = ledger.claim("w")
        assert claimed is not None and claimed.id == job_id
        ledger.log_event(job_id, "progress", {"pad": "y" * 2000})
        if n % 3 == 0:
            ledger.fail(job_id, "boom", worker_id="w")
        elif n % 3 == 1:
            ledger.cancel(job_id, by="ops")
        else:
            ledger.complete(job_id, "done", worker_id="w")
        old.append(job_id)
    ledger.pause("slow", by="ops")
    clock.advance(40 * DAY)
    recent = ledger.create_job(2, {"recent": True})
    ledger.claim("w")
    ledger.complete(recent, "fresh", worker_id="w")
    pending = ledger.create_job(2, {"waiting": True}, queue="slow")
    running = ledger.create_job(2, {"running": True})
    assert ledger.claim("w2") is not None
    return {"old": old, "live": [recent, pending, running]}


def _all_events(path: str) -> list[tuple]:
    with Ledger(path, readonly=True) as ledger:
        return [(e.job_id, e.version, e.type, e.payload, e.created_at) for e in ledger.read_all()]


def test_archive_splits_the_log_and_both_parts_verify(
    tmp_path: Path, db_path: str, clock: FakeClock
) -> None:
    archive = str(tmp_path / "archive.db")
    with Ledger(db_path, clock=clock) as ledger:
        jobs = _history(ledger, clock)
        before = _all_events(db_path)
        report = ledger.archive(timedelta(days=30), archive)
        # the same Ledger carries on, on the new segment
        assert ledger.verify().ok
        assert sorted(j.id for j in ledger.jobs(limit=100)) == sorted(jobs["live"])
        assert ledger.paused_queues() == ["slow"]
        assert ledger.claim("w3") is None  # the only pending job is in the paused queue
        added = ledger.create_job(3, {"after": True})
        assert ledger.verify().ok
    assert (report.archived_jobs, report.live_jobs) == (30, 3)
    assert report.archived_events + report.live_events == len(before)
    assert report.size_after < report.size_before  # bounded disk: the live file shrank
    assert os.path.getsize(db_path) < report.size_before
    archived, live = _all_events(archive), _all_events(db_path)
    # every event in exactly one file, unchanged, in the old order; positions 1, 2, 3, ...
    assert sorted(archived + live[:-1], key=repr) == sorted(before, key=repr)
    assert {e[0] for e in archived} == set(jobs["old"])
    assert [e.position for e in Ledger(archive, readonly=True).read_all()] == list(
        range(1, len(archived) + 1)
    )
    with Ledger(archive, readonly=True) as old:
        assert old.verify().ok and old.count_jobs() == 30
        assert old.count_jobs(status="failed") == 10
    with Ledger(db_path, readonly=True) as ledger:
        assert ledger.get_job(added) is not None


def test_the_live_segment_replays_into_the_live_jobs(
    tmp_path: Path, db_path: str, clock: FakeClock
) -> None:
    with Ledger(db_path, clock=clock) as ledger:
        _history(ledger, clock)
        ledger.archive(timedelta(days=30), tmp_path / "a.db")
        live = [ledger.get_job(j.id) for j in ledger.jobs(limit=100)]
        report = ledger.replay()
        assert report.jobs == 3
        assert [ledger.get_job(j.id) for j in ledger.jobs(limit=100)] == live  # type: ignore[union-attr]
        assert ledger.paused_queues() == ["slow"]
        assert ledger.verify().ok


def test_an_archive_is_sealed_and_read_with_the_usual_commands(
    tmp_path: Path, db_path: str, clock: FakeClock
) -> None:
    archive = str(tmp_path / "archive.db")
    with Ledger(db_path, clock=clock) as ledger:
        jobs = _history(ledger, clock)
        ledger.archive(timedelta(days=30), archive)
    verified = run_cli("verify", db=archive, check=True).stdout
    assert verified.startswith("ok:") and "(30 jobs)" in verified
    shown = json.loads(run_cli("show", jobs["old"][0], "--json", db=archive, check=True).stdout)
    assert shown["job"]["status"] == "failed" and len(shown["events"]) == 4
    events = run_cli("events", "--job", jobs["old"][1], "--json", db=archive, check=True).stdout
    assert [json.loads(line)["type"] for line in events.splitlines()] == [
        "created",
        "claimed",
        "progress",
        "cancelled",
    ]
    missing = run_cli("show", jobs["live"][1], db=archive)
    assert missing.returncode == 1 and "no job with id" in missing.stderr
    with Ledger(archive) as opened, pytest.raises(StorageError, match="sealed"):
        opened.create_job(1, {})
    with Ledger(archive, readonly=True) as opened:
        assert opened.verify().ok


def test_archive_with_nothing_old_enough_keeps_everything_live(
    tmp_path: Path, db_path: str, clock: FakeClock
) -> None:
    with Ledger(db_path, clock=clock) as ledger:
        _history(ledger, clock)
        count = ledger.last_position()
        report = ledger.archive(timedelta(days=365), tmp_path / "a.db")
        assert (report.archived_jobs, report.archived_events) == (0, 0)
        assert ledger.last_position() == count and ledger.count_jobs() == 33
        assert ledger.verify().ok


def test_archive_refuses_while_another_process_has_the_ledger_open(
    tmp_path: Path, db_path: str, clock: FakeClock
) -> None:
    archive = tmp_path / "archive.db"
    with Ledger(db_path, clock=clock) as ledger:
        _history(ledger, clock)
        before = _all_events(db_path)
        other = apsw.Connection(db_path)  # another process's connection, idle
        other.execute("SELECT count(*) FROM events").fetchall()
        try:
            with pytest.raises(LedgerError, match="another process has this ledger open"):
                ledger.archive(timedelta(days=30), archive)
        finally:
            other.close()
        assert not archive.exists() and not os.path.exists(db_path + ".archiving")
        assert _all_events(db_path) == before and ledger.verify().ok
        ledger.create_job(1, {})  # still the live ledger, writable


def test_archive_refuses_bad_requests_and_writes_nothing(
    tmp_path: Path, db_path: str, clock: FakeClock
) -> None:
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"")
    with Ledger(db_path, clock=clock) as ledger:
        _history(ledger, clock)
        before = _all_events(db_path)
        with pytest.raises(InvalidArgument, match="already exists"):
            ledger.archive(timedelta(days=1), taken)
        with pytest.raises(InvalidArgument, match="the ledger itself"):
            ledger.archive(timedelta(days=1), db_path)
        with pytest.raises(InvalidArgument, match="timedelta"):
            ledger.archive(30, tmp_path / "n.db")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="timedelta"):
            ledger.archive(timedelta(days=-1), tmp_path / "n.db")
        assert _all_events(db_path) == before
    with Ledger(":memory:") as memory, pytest.raises(InvalidArgument, match="SQLite ledger file"):
        memory.archive(timedelta(days=1), tmp_path / "m.db")
    with Ledger(db_path, readonly=True) as ro, pytest.raises(InvalidArgument, match="read-only"):
        ro.archive(timedelta(days=1), tmp_path / "r.db")
    assert not (tmp_path / "n.db").exists()


def test_jobs_of_a_tree_or_a_budgeted_chat_stay_live(
    tmp_path: Path, db_path: str, clock: FakeClock
) -> None:
    with Ledger(db_path, clock=clock) as ledger:
        budgeted = ledger.create_job(9, {})
        ledger.claim("w")
        ledger.complete(budgeted, "ok", worker_id="w")
        ledger.set_budget(9, 1000)
        plain = ledger.create_job(1, {})
        ledger.claim("w")
        ledger.complete(plain, "ok", worker_id="w")
        parent = ledger.create_job(1, {"tree": "root"})
        ledger.claim("w")
        child = ledger.create_job(1, {"tree": "leaf"}, parent_id=parent)
        ledger.complete(parent, "ok", worker_id="w")
        clock.advance(20 * DAY)
        ledger.claim("w")
        ledger.complete(child, "ok", worker_id="w")  # 20 days before the archive: too recent
        clock.advance(20 * DAY)  # the parent finished 40 days before
        report = ledger.archive(timedelta(days=30), tmp_path / "a.db")
        assert report.archived_jobs == 1
        assert ledger.get_job(budgeted) is not None and ledger.get_job(plain) is None
        assert ledger.get_job(parent) is not None and ledger.get_job(child) is not None
        assert ledger.verify().ok


def test_archive_cli(tmp_path: Path, db_path: str, clock: FakeClock) -> None:
    with Ledger(db_path, clock=clock) as ledger:
        _history(ledger, clock)
    archive = str(tmp_path / "cli-archive.db")
    # the CLI's clock is the real one: everything finished "long" before now is archived
    result = run_cli("archive", "--older-than", "0s", "--to", archive, "--json", db=db_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["archived_jobs"] == 31 and report["live_jobs"] == 2
    assert result.stderr == ""  # no progress off a terminal
    assert run_cli("verify", db=db_path, check=True).stdout.startswith("ok:")
    again = run_cli("archive", "--older-than", "0s", "--to", archive, db=db_path)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert again.stderr.count("\n") == 1
    bad = run_cli("archive", "--older-than", "soon", "--to", "x.db", db=db_path)
    assert bad.returncode == 2 and "expected a duration" in bad.stderr
    with Ledger(db_path, readonly=True) as ledger:
        assert {j.status for j in ledger.jobs()} == {JobStatus.PENDING, JobStatus.RUNNING}


def test_a_file_replaced_by_archive_is_refused_with_what_to_do(db_path: str) -> None:
    """A process that opened the path just before the swap gets the old file, which the archive
    marked as replaced before letting go of it: the open is refused (before any WAL is touched)
    with a message saying to open the ledger again."""
    from ledger.backends.sqlite.events_table import REPLACED_ID

    Ledger(db_path).close()
    conn = apsw.Connection(db_path)
    conn.execute(f"PRAGMA application_id={REPLACED_ID}")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(LedgerError, match=r"replaced by `ledger archive`.*open the ledger"):
            Ledger(db_path, readonly=readonly)
