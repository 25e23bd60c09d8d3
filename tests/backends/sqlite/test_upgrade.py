"""Upgrades: a ledger written by release 0.1.0 (committed under tests/data) opens, replays and
verifies with the current code, and reads back exactly the jobs it held."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec

from ledger import Job, Ledger
from tests.conftest import table_dump

DATA = Path(__file__).resolve().parents[2] / "data"


TAGS_OF_0_1_0 = {
    "created",
    "claimed",
    "heartbeat",
    "completed",
    "failed",
    "cancelled",
    "retry_scheduled",
    "lease_expired",
    "released",
    "started",
    "progress",
    "tool_call",
    "error",
}
_NEW_FIELD_DEFAULTS: dict[str, object] = {
    f: msgspec.to_builtins(d)
    for f, d in zip(
        Job.__struct_fields__[-len(Job.__struct_defaults__) :],
        Job.__struct_defaults__,
        strict=True,
    )
}


def test_release_0_1_0_ledger_opens_replays_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(DATA / "ledger-0.1.0.db", path)
    expected = json.loads((DATA / "ledger-0.1.0.expected.json").read_text())
    with Ledger(str(path)) as ledger:
        assert ledger.verify().ok
        for name, job in expected.items():
            live = msgspec.to_builtins(ledger.get_job(job["id"]))
            assert {k: v for k, v in live.items() if k in job} == job, name
            # fields added since 0.1.0 read as their defaults on a job of that release
            added = {k: v for k, v in live.items() if k not in job}
            defaults = {k: _NEW_FIELD_DEFAULTS[k] for k in added}
            if "subtree_cost_cents" in defaults:  # derived: a job without children, its own cost
                defaults["subtree_cost_cents"] = job["cost_cents"] or 0.0
            assert added == defaults, name
        seen = {e.type.value for e in ledger.read_all()}
        assert seen == TAGS_OF_0_1_0  # every tag of 0.1.0 is in the file and still readable
        before = table_dump(str(path))
        report = ledger.replay()
        assert report.jobs == len(expected) and table_dump(str(path)) == before
        assert ledger.verify().ok
        ledger.create_job(1, {"after": "upgrade"})  # and it keeps working
        assert ledger.verify().ok


def test_a_read_only_open_of_a_0_1_0_file_says_how_to_upgrade_it(tmp_path: Path) -> None:
    """Its jobs table has 0.1.0's columns: read-only, the log still reads, and a read of jobs
    refuses in words (writing nothing); one read-write open rebuilds it, then read-only works."""
    from ledger import SchemaError
    from tests.conftest import run_cli

    path = str(tmp_path / "old.db")
    shutil.copy(DATA / "ledger-0.1.0.db", path)
    before = (tmp_path / "old.db").read_bytes()
    with Ledger(path, readonly=True) as old:
        assert old.last_position() == 23  # the log reads
        try:
            old.jobs()
        except SchemaError as e:
            assert "open it once for writing" in str(e)
        else:
            raise AssertionError("a 0.1.0 projection read read-only without a word")
    assert (tmp_path / "old.db").read_bytes() == before
    listed = run_cli("jobs", db=path)
    assert listed.returncode == 1 and listed.stderr.count("\n") == 1
    assert "ledger replay" in listed.stderr and "Traceback" not in listed.stderr
    assert run_cli("replay", db=path).returncode == 0
    with Ledger(path, readonly=True) as ledger:
        assert len(ledger.jobs()) == 6 and ledger.verify().ok


_FULL_STATUS_INDEX = "CREATE INDEX jobs_status ON jobs (status, created_at, created_position)"


def test_a_projection_with_the_full_status_index_gets_the_partial_one_on_open(
    tmp_path: Path,
) -> None:
    """jobs_status used to index every job; now it leaves running jobs out. A file with the
    old index gets the new one on its next writable open, in place (no replay: the projection
    keeps its version), and holds the same rows afterwards."""
    import apsw

    path = str(tmp_path / "v4.db")
    with Ledger(path) as ledger:
        ledger.create_jobs([{"chat_id": 1, "config": {}}] * 3)
        done = ledger.claim("w")
        assert done is not None
        ledger.complete(done.id, "ok")
        ledger.claim("w")
    rows = table_dump(path)
    conn = apsw.Connection(path)
    conn.execute("DROP INDEX jobs_status")
    conn.execute(_FULL_STATUS_INDEX)
    conn.close()
    with Ledger(path, readonly=True) as ledger:  # an old file reads as it is until then
        assert len(ledger.jobs()) == 3
    with Ledger(path) as ledger:
        assert ledger.verify().ok
        statuses = [j.status.value for j in ledger.jobs(limit=10)]
        assert sorted(statuses) == ["completed", "pending", "running"]
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'jobs_status'").get
    conn.close()
    assert "WHERE" in str(sql) and "'running'" not in str(sql)
    assert table_dump(path) == rows


def test_a_projection_without_jobs_chat_status_gets_it_on_open(tmp_path: Path) -> None:
    """jobs_chat_status came after projection version 4: a file without it reads as it is
    (the summary walks the chat in jobs_chat, same answer), and its next writable open builds
    it from the jobs table, without a replay; the summary then reads through it."""
    import apsw

    from ledger.backends.protocol import JobFilter
    from ledger.backends.sqlite import jobs_table
    from ledger.domain.model import JobStatus

    path = str(tmp_path / "old.db")
    with Ledger(path) as ledger:
        ledger.create_jobs([{"chat_id": 7, "config": {"n": n}} for n in range(4)])
        done = ledger.claim("w")
        assert done is not None
        ledger.complete(done.id, "ok")
        ledger.claim("w")
        summary = ledger.active_jobs_summary(7)
    rows = table_dump(path)
    conn = apsw.Connection(path)
    conn.execute("DROP INDEX jobs_chat_status")
    conn.close()
    with Ledger(path, readonly=True) as ledger:
        assert ledger.active_jobs_summary(7) == summary
    with Ledger(path) as ledger:
        assert ledger.active_jobs_summary(7) == summary and ledger.verify().ok
    running = JobFilter(statuses=(JobStatus.RUNNING,), chat_id=7, order="started")
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    plan = " | ".join(
        str(r[3])
        for r in conn.execute("EXPLAIN QUERY PLAN " + jobs_table.statement_for(running), (7,))
    )
    conn.close()
    assert "INDEX jobs_chat_status" in plan, plan
    assert table_dump(path) == rows
