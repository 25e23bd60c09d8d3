"""Every command through a real subprocess on a real file, with its output checked."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from ledger import Ledger
from ledger.cli import format as fmt
from tests.conftest import ROOT, run_cli, table_dump


@pytest.fixture
def filled(db_path: str) -> dict[str, str]:
    """A ledger with a completed, a failed, a running and a pending job in chat 5."""
    with Ledger(db_path) as ledger:
        done = ledger.create_job(5, {"role": "coder", "task": "write code"})
        broken = ledger.create_job(5, {"role": "tester", "task": "test code"})
        running = ledger.create_job(5, {"role": "reviewer", "task": "review"}, queue="review")
        pending = ledger.create_job(6, {"role": "writer", "task": "docs"})
        ledger.claim("w1")
        ledger.log_event(done, "tool_call", {"tool": "grep", "args": ["-r", "TODO"]})
        ledger.complete(done, "wrote the code", "success", 2.5, 30)
        ledger.claim("w2")
        ledger.fail(broken, "tests exploded: KeyError 'x'")
        ledger.claim("w3", queues=["review"])
    return {"done": done, "broken": broken, "running": running, "pending": pending}


def test_jobs_table_and_filters(db_path: str, filled: dict[str, str]) -> None:
    out = run_cli("jobs", db=db_path, check=True).stdout
    assert out.splitlines()[0].split() == [
        "ID",
        "STATUS",
        "QUEUE",
        "ROLE",
        "ATTEMPTS",
        "AGE",
        "SUMMARY/ERROR",
    ]
    assert f"{filled['broken'][:8]}  failed" in out and "tests exploded" in out
    assert "wrote the code" in out
    failed = run_cli("jobs", "--status", "failed", db=db_path, check=True).stdout
    assert filled["broken"][:8] in failed and filled["done"][:8] not in failed
    chat6 = json.loads(run_cli("jobs", "--chat", "6", "--json", db=db_path, check=True).stdout)
    assert [j["id"] for j in chat6] == [filled["pending"]]
    review = run_cli("jobs", "--queue", "review", db=db_path, check=True).stdout
    assert filled["running"][:8] in review and filled["pending"][:8] not in review


def test_show_by_prefix_with_history(db_path: str, filled: dict[str, str]) -> None:
    out = run_cli("show", filled["done"][:6], db=db_path, check=True).stdout
    assert f"id                {filled['done']}" in out or filled["done"] in out
    assert "result_summary" in out and "wrote the code" in out
    for event_type in ("created", "claimed", "tool_call", "completed"):
        assert event_type in out
    data = json.loads(run_cli("show", filled["done"], "--json", db=db_path, check=True).stdout)
    assert data["job"]["status"] == "completed"
    assert [e["type"] for e in data["events"]] == ["created", "claimed", "tool_call", "completed"]


def test_show_prints_a_failed_jobs_traceback(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        job_id = ledger.create_job(1, {"role": "coder"})
        ledger.claim("w")
        ledger.log_event(
            job_id, "error", {"error": "boom", "traceback": "Traceback:\n  line 1\nKeyError: 'x'"}
        )
        ledger.fail(job_id, "boom")
    out = run_cli("show", job_id[:8], db=db_path, check=True).stdout
    assert "          | KeyError: 'x'" in out and "error_message" in out and "boom" in out


def test_show_unknown_job_is_one_line_error(db_path: str, filled: dict[str, str]) -> None:
    result = run_cli("show", "zzzz", db=db_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no job with id 'zzzz'" in result.stderr
    assert "Traceback" not in result.stderr
    debug = run_cli("--debug", "show", "zzzz", db=db_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_events_filters_and_json(db_path: str, filled: dict[str, str]) -> None:
    out = run_cli("events", db=db_path, check=True).stdout.splitlines()
    positions = [int(line.split()[0]) for line in out]
    assert positions == sorted(positions) and len(positions) == 10
    after = run_cli("events", "--after", "8", db=db_path, check=True).stdout.splitlines()
    assert [int(line.split()[0]) for line in after] == [9, 10]
    tools = run_cli("events", "--type", "tool_call", "--json", db=db_path, check=True).stdout
    rows = [json.loads(line) for line in tools.splitlines()]
    assert [r["payload"]["tool"] for r in rows] == ["grep"]
    job = run_cli("events", "--job", filled["broken"][:8], db=db_path, check=True).stdout
    assert len(job.splitlines()) == 3 and "retry" not in job and "failed" in job
    chat = run_cli("events", "--chat", "6", db=db_path, check=True).stdout
    assert len(chat.splitlines()) == 1 and "created" in chat
    assert all(re.search(r"  \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  ", line) for line in out)


def test_jobs_says_when_the_list_is_cut(db_path: str, filled: dict[str, str]) -> None:
    cut = run_cli("jobs", "--limit", "2", db=db_path, check=True)
    assert len(cut.stdout.splitlines()) == 3  # header and two jobs
    assert "showing the newest 2 jobs; there are more: --limit N for more" in cut.stderr
    cut_json = run_cli("jobs", "--limit", "3", "--json", db=db_path, check=True)
    assert len(json.loads(cut_json.stdout)) == 3 and "showing the newest 3" in cut_json.stderr
    for limit in ("4", "50"):  # everything shown: nothing to say
        whole = run_cli("jobs", "--limit", limit, db=db_path, check=True)
        assert len(whole.stdout.splitlines()) == 5 and whole.stderr == ""


def test_jobs_columns_line_up_with_wide_text(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        ledger.create_job(1, {"role": "研究者"})
        ledger.create_job(1, {"role": "coder"})
    lines = run_cli("jobs", db=db_path, check=True).stdout.splitlines()
    starts = {fmt.width(line[: line.index("0/1")]) for line in lines[1:]}
    assert len(starts) == 1 and fmt.width(lines[0][: lines[0].index("ATTEMPTS")]) in starts


def test_events_follow_sees_another_process_append(db_path: str, filled: dict[str, str]) -> None:
    command = [
        sys.executable,
        "-m",
        "ledger",
        "events",
        "--follow",
        "--after",
        "10",
        "--interval",
        "0.02",
        "--db",
        db_path,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    follower = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        with Ledger(db_path) as ledger:  # this test process is the second, appending process
            ledger.log_event(filled["running"], "progress", {"message": "first"})
            first = follower.stdout.readline()  # type: ignore[union-attr]
            assert "progress" in first and '"first"' in first
            ledger.log_event(filled["running"], "progress", {"message": "second"})
            assert '"second"' in follower.stdout.readline()  # type: ignore[union-attr]
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            follower.kill()


def test_summary_matches_the_library(db_path: str, filled: dict[str, str]) -> None:
    out = run_cli("summary", "5", db=db_path, check=True).stdout
    assert "## Running Subagents" in out and f"- {filled['running'][:8]} (reviewer): running" in out
    assert f"- {filled['done'][:8]} (coder): success - wrote the code" in out
    assert f"- {filled['broken'][:8]} (tester): failed - tests exploded: KeyError 'x'" in out
    data = json.loads(run_cli("summary", "5", "--json", db=db_path, check=True).stdout)
    assert data["summary"].startswith("## Running Subagents")


def test_stats(db_path: str, filled: dict[str, str]) -> None:
    out = run_cli("stats", db=db_path, check=True).stdout
    assert "completed  default  1" in out and "failed     default  1" in out
    assert "total cost: 2.50 cents" in out and "p50 30.0s" in out  # tenths under a minute
    assert f"oldest pending: {filled['pending'][:8]}" in out
    data = json.loads(run_cli("stats", "--json", db=db_path, check=True).stdout)
    assert data["counts"]["running"] == {"review": 1}
    assert data["finished_last_hour"] == {"completed": 1, "failed": 1}


def _forge(db_path: str, job_id: str) -> None:
    raw = apsw.Connection(db_path)
    raw.execute("UPDATE jobs SET result_summary = 'forged' WHERE id = ?", (job_id,))
    raw.close()


def test_dry_run_counts_rows_not_columns(db_path: str, filled: dict[str, str]) -> None:
    raw = apsw.Connection(db_path)
    raw.execute(
        "UPDATE jobs SET result_summary = 'forged', cost_cents = 99 WHERE id = ?", (filled["done"],)
    )
    raw.close()
    dry = run_cli("replay", "--dry-run", db=db_path, check=True).stdout
    assert "1 projection rows would change (2 differing values)" in dry
    data = json.loads(run_cli("replay", "--dry-run", "--json", db=db_path, check=True).stdout)
    assert data["rows_that_would_change"] == 1 and data["differences"] == 2


def test_verify_says_how_many_differences_it_left_out(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        for n in range(30):
            ledger.create_job(n, {})
    raw = apsw.Connection(db_path)
    raw.execute("UPDATE jobs SET priority = 7, attempts = 9")  # 2 columns x 30 rows
    raw.close()
    out = run_cli("verify", db=db_path).stdout.splitlines()
    assert out[0] == "NOT OK: 60 difference(s) between the projection and the log"
    assert len([line for line in out if line.startswith("  jobs ")]) == 50
    assert "  ... and 10 more (`ledger verify --json` lists them all)" in out


def test_verify_replay_and_dry_run(db_path: str, filled: dict[str, str]) -> None:
    ok = run_cli("verify", db=db_path)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ") and "10 events" in ok.stdout
    _forge(db_path, filled["done"])
    bad = run_cli("verify", db=db_path)
    assert bad.returncode == 1 and "NOT OK" in bad.stdout and "result_summary" in bad.stdout
    forged = table_dump(db_path)
    dry = run_cli("replay", "--dry-run", db=db_path, check=True)
    assert "1 projection rows would change" in dry.stdout
    assert table_dump(db_path) == forged  # the live file was not touched
    replayed = run_cli("replay", db=db_path, check=True)
    assert replayed.stdout.startswith("replayed 10 events into 4 jobs")
    assert run_cli("verify", db=db_path).returncode == 0
    data = json.loads(run_cli("verify", "--json", db=db_path, check=True).stdout)
    assert data["ok"] is True and data["differences"] == []


def test_export_then_import_gives_identical_tables(
    tmp_path: Path, db_path: str, filled: dict[str, str]
) -> None:
    exported = run_cli("export", db=db_path, check=True).stdout
    lines = exported.splitlines()
    assert len(lines) == 10 and json.loads(lines[0])["type"] == "created"
    dump = tmp_path / "events.jsonl"
    dump.write_text(exported)
    copy = str(tmp_path / "copy.db")
    result = run_cli("import", str(dump), db=copy, check=True)
    assert "imported 10 events" in result.stdout
    assert table_dump(copy) == table_dump(db_path)
    assert table_dump(copy, "events") == table_dump(db_path, "events")
    again = run_cli("import", str(dump), db=copy)  # not empty any more: refused, nothing written
    assert again.returncode == 1 and "empty ledger" in again.stderr
    assert table_dump(copy, "events") == table_dump(db_path, "events")
    tail = run_cli("export", "--after", "8", db=db_path, check=True).stdout.splitlines()
    assert [json.loads(line)["position"] for line in tail] == [9, 10]


def test_export_pages_through_a_long_log(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger import api as core

    monkeypatch.setattr(core, "EXPORT_PAGE", 3)
    for n in range(7):
        ledger.create_job(n, {})
    positions = [json.loads(line)["position"] for line in ledger.export_events()]
    assert positions == [1, 2, 3, 4, 5, 6, 7]
    assert [json.loads(line)["position"] for line in ledger.export_events(after=3)] == [4, 5, 6, 7]


def test_import_rejects_garbage_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"position": 1}\n')
    target = str(tmp_path / "new.db")
    result = run_cli("import", str(bad), db=target)
    assert result.returncode == 1 and "line 1" in result.stderr
    with Ledger(target) as ledger:
        assert ledger.last_position() == 0


def test_read_only_commands_never_create_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for command in (
        ["jobs"],
        ["show", "abc"],
        ["events"],
        ["summary", "1"],
        ["stats"],
        ["verify"],
        ["export"],
        ["replay", "--dry-run"],
    ):
        result = run_cli(*command, db=str(missing))
        assert result.returncode == 1, command
        assert "Traceback" not in result.stderr and result.stderr.startswith("ledger: error:")
        assert not missing.exists()


def test_db_defaults_to_env_then_cwd(tmp_path: Path, filled: dict[str, str], db_path: str) -> None:
    via_env = run_cli("jobs", env={"LEDGER_DB": db_path}, cwd=str(tmp_path), check=True)
    assert filled["done"][:8] in via_env.stdout
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DB"}
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "jobs"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1 and "ledger.db" in result.stderr


def test_bad_usage_exits_2(db_path: str) -> None:
    assert run_cli("jobs", "--limit", "many", db=db_path).returncode == 2
    assert run_cli("frobnicate").returncode == 2
    assert run_cli().returncode == 2
