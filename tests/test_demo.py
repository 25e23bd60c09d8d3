"""`ledger demo`: every outcome, real command output, and it never deletes a file it did not
make (another program's database, a non-demo ledger, any other file stays byte-identical)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import apsw
import pytest

from ledger import Ledger
from ledger.demo import CHAT_ID
from tests.conftest import run_cli


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sections(out: str) -> dict[str, str]:
    """The demo's output by command: ``{"ledger stats --db demo.db": "what it printed"}``."""
    parts = out.split("\n$ ")[1:]
    return {p.split("\n", 1)[0]: p.split("\n", 1)[1].split("\nexplore it:")[0] for p in parts}


def test_demo_runs_every_outcome_and_prints_real_command_output(tmp_path: Path) -> None:
    result = run_cli("demo", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    shown = sections(result.stdout)
    db = ["--db", "demo.db"]
    # what the demo printed for each command is what running that command now prints
    for command in (["summary", str(CHAT_ID)], ["stats"], ["verify"]):
        typed = " ".join(["ledger", *command, *db])
        assert shown[typed] == run_cli(*command, *db, cwd=str(tmp_path), check=True).stdout
    (events_command,) = [c for c in shown if c.startswith("ledger events --job ")]
    argv = events_command.split()[1:]
    assert shown[events_command] == run_cli(*argv, cwd=str(tmp_path), check=True).stdout
    assert "retry_scheduled" in shown[events_command]
    assert shown["ledger replay --db demo.db"].startswith("replayed ")
    assert "## Recent Subagents" in shown[f"ledger summary {CHAT_ID} --db demo.db"]
    jobs = shown[f"ledger jobs --chat {CHAT_ID} --db demo.db"]
    assert "cancelled" in jobs and "failed" in jobs and "the model refused the task" in jobs
    with Ledger(str(tmp_path / "demo.db"), readonly=True) as ledger:
        statuses = {j.status.value for j in ledger.jobs(limit=100)}
        assert statuses == {"completed", "failed", "cancelled"}
        flaky = [j for j in ledger.jobs(limit=100) if j.config.get("flaky")]
        assert flaky[0].attempts == 2 and flaky[0].status.value == "completed"
        assert ledger.verify().ok
        first_ids = {j.id for j in ledger.jobs(limit=100)}
    # run again: its own ledger is replaced by a fresh one (twelve new jobs, not twenty-four)
    again = run_cli("demo", cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr
    with Ledger(str(tmp_path / "demo.db"), readonly=True) as ledger:
        ids = {j.id for j in ledger.jobs(limit=100)}
        assert len(ids) == 12 and not ids & first_ids and ledger.verify().ok


def _foreign_sqlite(path: Path) -> None:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('keep me')")
    conn.close()


def _other_ledger(path: Path) -> None:
    with Ledger(str(path)) as ledger:
        ledger.create_job(CHAT_ID, {"role": "mine"}, queue="demo")  # no demo mark: not the demo's


def _empty_ledger(path: Path) -> None:
    Ledger(str(path)).close()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_foreign_sqlite, "another program's SQLite database"),
        (lambda p: p.write_bytes(b"not a database at all\n" * 10), "not an SQLite file"),
        (lambda p: p.write_bytes(b""), "not an SQLite file"),
        (_other_ledger, "1 job(s) the demo did not make"),
        (_empty_ledger, "a ledger with no jobs"),
    ],
    ids=["foreign-sqlite", "text", "empty-file", "other-ledger", "empty-ledger"],
)
def test_demo_refuses_a_file_it_did_not_make_and_leaves_it_alone(
    tmp_path: Path,
    make,
    expected: str,  # type: ignore[no-untyped-def]
) -> None:
    target = tmp_path / "theirs.db"
    make(target)
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    result = run_cli("demo", "--db", str(target))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert "give --db a new path" in result.stderr and result.stdout == ""
    after = {p.name: digest(p) for p in tmp_path.iterdir()}
    if make in (_other_ledger, _empty_ledger):
        # A ledger is opened read-only to look at its jobs, and SQLite's read-only open of a WAL
        # file leaves its -shm and an empty -wal beside it, as every read-only command does.
        assert (target.parent / "theirs.db-wal").read_bytes() == b""
        after = {k: v for k, v in after.items() if k in before or k.endswith(".db")}
    assert after == before  # byte-identical; nothing new beside a file that is not a ledger


def test_demo_refuses_a_directory_and_a_stray_wal(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inside").write_text("x")
    result = run_cli("demo", "--db", str(folder))
    assert result.returncode == 1 and "is a directory" in result.stderr
    assert (folder / "inside").read_text() == "x"
    stray = tmp_path / "gone.db-wal"
    stray.write_bytes(b"someone's log")
    result = run_cli("--db", str(tmp_path / "gone.db"), "demo")  # global --db before the command
    assert result.returncode == 1 and "gone.db-wal exists" in result.stderr
    assert stray.read_bytes() == b"someone's log" and not (tmp_path / "gone.db").exists()
