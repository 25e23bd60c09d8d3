"""The operator commands in real subprocesses: enqueue, cancel, retry (one and in bulk),
pause, resume, queues; --json output, --by, one-line errors that write nothing."""

from __future__ import annotations

import getpass
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import EventType, JobStatus, Ledger
from tests.conftest import ROOT, run_cli


def _fail(db_path: str, queue: str = "default") -> str:
    with Ledger(db_path) as ledger:
        job_id = ledger.create_job(1, {"task": "x"}, queue=queue)
        ledger.claim("w", queues=[queue])
        ledger.fail(job_id, "boom", worker_id="w")
    return job_id


def _events(db_path: str, job_id: str) -> list:
    with Ledger(db_path, readonly=True) as ledger:
        return ledger.job_events(job_id)


def _one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_enqueue_with_every_option_and_json(db_path: str) -> None:
    result = run_cli(
        "enqueue",
        "mail",
        "--config",
        '{"to": "a@b", "n": [1, 2]}',
        "--chat",
        "7",
        "--priority",
        "5",
        "--run-at",
        "2030-01-02T03:04:05+00:00",
        "--max-attempts",
        "3",
        "--by",
        "alice",
        "--json",
        db=db_path,
        check=True,
    )
    job = json.loads(result.stdout)
    assert (job["queue"], job["chat_id"], job["priority"], job["max_attempts"]) == ("mail", 7, 5, 3)
    assert job["config"] == {"to": "a@b", "n": [1, 2]} and job["status"] == "pending"
    assert job["run_at"].startswith("2030-01-02T03:04:05")
    assert _events(db_path, job["id"])[0].payload["by"] == "alice"
    text = run_cli("enqueue", "mail", "--config", "{}", db=db_path, check=True).stdout
    assert text.startswith("enqueued job ") and "'mail'" in text


def test_enqueue_names_the_os_user_by_default(db_path: str) -> None:
    job = json.loads(run_cli("enqueue", "q", "--config", "1", "--json", db=db_path).stdout)
    assert _events(db_path, job["id"])[0].payload["by"] == getpass.getuser()


def test_enqueue_refuses_bad_config_and_writes_nothing(db_path: str) -> None:
    Ledger(db_path).close()
    _one_line_error(run_cli("enqueue", "q", "--config", "{nope", db=db_path), "is not JSON")
    _one_line_error(run_cli("enqueue", "", "--config", "{}", db=db_path), "invalid queue")
    bad = run_cli("enqueue", "q", "--config", "{}", "--run-at", "someday", db=db_path)
    assert bad.returncode == 2 and "expected an ISO time" in bad.stderr
    with Ledger(db_path, readonly=True) as ledger:
        assert ledger.last_position() == 0


def test_cancel_by_prefix_json_and_twice(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        job_id = ledger.create_job(1, {})
    result = run_cli("cancel", job_id[:8], "--by", "bob", "--reason", "dup", "--json", db=db_path)
    body = json.loads(result.stdout)
    assert body["cancelled"] is True and body["job"]["status"] == "cancelled"
    payload = _events(db_path, job_id)[-1].payload
    assert (payload["reason"], payload["by"]) == ("dup", "bob")
    again = run_cli("cancel", job_id, db=db_path, check=True).stdout
    assert "already cancelled" in again


def test_unknown_job_ids_are_one_line_errors(db_path: str) -> None:
    Ledger(db_path).close()
    for command in (["cancel", "zzzz"], ["retry", "zzzz"]):
        _one_line_error(run_cli(*command, db=db_path), "no job with id 'zzzz'")


def test_retry_one_job(db_path: str) -> None:
    job_id = _fail(db_path)
    job = json.loads(run_cli("retry", job_id, "--by", "carol", "--json", db=db_path).stdout)
    assert job["status"] == "pending" and job["attempts"] == 1 and job["max_attempts"] == 2
    last = _events(db_path, job_id)[-1]
    assert last.type is EventType.RETRIED and last.payload["by"] == "carol"
    _one_line_error(run_cli("retry", job_id, db=db_path), "only a failed or cancelled job")


def test_bulk_retry_counts_without_yes_and_retries_with_it(db_path: str) -> None:
    mail = [_fail(db_path, "mail"), _fail(db_path, "mail")]
    other = _fail(db_path, "other")
    dry = json.loads(run_cli("retry", "--failed", "--queue", "mail", "--json", db=db_path).stdout)
    assert dry == {"retried": 0, "would_retry": 2, "dry_run": True}
    with Ledger(db_path, readonly=True) as ledger:
        assert all(ledger.get_job(j).status is JobStatus.FAILED for j in mail)  # type: ignore[union-attr]
    text = run_cli("retry", "--failed", "--queue", "mail", db=db_path, check=True).stdout
    assert "2 failed job(s) match; nothing written" in text
    done = run_cli(
        "retry", "--failed", "--queue", "mail", "--since", "1h", "--yes", "--json", db=db_path
    )
    assert json.loads(done.stdout) == {"retried": 2, "jobs": mail}
    with Ledger(db_path, readonly=True) as ledger:
        assert [ledger.get_job(j).status for j in [*mail, other]] == [  # type: ignore[union-attr]
            JobStatus.PENDING,
            JobStatus.PENDING,
            JobStatus.FAILED,
        ]
        assert ledger.verify().ok
    assert "retried 1 failed job(s)" in run_cli("retry", "--failed", "--yes", db=db_path).stdout


def test_retry_usage_errors_write_nothing(db_path: str) -> None:
    job_id = _fail(db_path)
    with Ledger(db_path, readonly=True) as ledger:
        before = ledger.last_position()
    _one_line_error(run_cli("retry", db=db_path), "give either a JOB id or --failed")
    _one_line_error(run_cli("retry", job_id, "--failed", db=db_path), "give either a JOB id")
    _one_line_error(run_cli("retry", job_id, "--queue", "q", db=db_path), "only go with --failed")
    bad_since = run_cli("retry", "--failed", "--since", "last tuesday", db=db_path)
    assert bad_since.returncode == 2
    with Ledger(db_path, readonly=True) as ledger:
        assert ledger.last_position() == before


def test_pause_resume_and_queues(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        ledger.create_job(1, {}, queue="mail")
    paused = json.loads(run_cli("pause", "mail", "--by", "dan", "--json", db=db_path).stdout)
    assert paused == {"queue": "mail", "paused": True, "changed": True}
    assert "already paused" in run_cli("pause", "mail", db=db_path, check=True).stdout
    listing = run_cli("queues", db=db_path, check=True).stdout
    assert "mail" in listing and "paused" in listing and "by dan" in listing
    with Ledger(db_path) as ledger:
        assert ledger.claim("w") is None
    states = json.loads(run_cli("queues", "--json", db=db_path).stdout)
    assert [(s["queue"], s["paused"], s["by"]) for s in states] == [("mail", True, "dan")]
    assert "queue 'mail' resumed" in run_cli("resume", "mail", db=db_path, check=True).stdout
    assert "already not paused" in run_cli("resume", "mail", db=db_path, check=True).stdout
    with Ledger(db_path) as ledger:
        assert ledger.claim("w") is not None
        assert [e.payload["by"] for e in ledger.job_events("queue:mail")] == [
            "dan",
            getpass.getuser(),
        ]
        assert ledger.verify().ok
    _one_line_error(run_cli("pause", "", db=db_path), "invalid queue")


def test_queues_on_a_ledger_never_paused(db_path: str) -> None:
    Ledger(db_path).close()
    assert run_cli("queues", db=db_path, check=True).stdout == "no queue was ever paused\n"


def _on_a_terminal(args: list[str], db_path: str, stdin: int | None = None) -> tuple[int, bytes]:
    """Run ``ledger ARGS`` with stderr on a pseudo-terminal; (exit code, what stderr showed)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "LEDGER_DB": db_path}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ledger", *args],
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
            cwd=ROOT,
            env=env,
            timeout=60,
        )
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    return done.returncode, seen


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_shows_on_a_terminal_only(db_path: str, tmp_path: Path) -> None:
    with Ledger(db_path) as ledger:
        ledger.create_jobs([{"chat_id": 1, "config": {"n": n}} for n in range(50)])
    quiet = run_cli("verify", db=db_path, check=True)
    assert quiet.stderr == ""  # not a terminal: silent
    export = run_cli("export", db=db_path, check=True)
    assert export.stderr == "" and len(export.stdout.splitlines()) == 50
    dump = tmp_path / "events.jsonl"
    dump.write_text(export.stdout)
    code, seen = _on_a_terminal(["verify"], db_path)
    assert code == 0 and b"verifying [" in seen and b"50/50 events" in seen
    code, seen = _on_a_terminal(["export"], db_path)
    assert code == 0 and b"exporting [" in seen and b"50/50 events" in seen
    copy = str(tmp_path / "copy.db")
    code, seen = _on_a_terminal(["import", str(dump), "--db", copy], db_path)
    assert code == 0 and b"importing [" in seen and b"50/50 events" in seen
    code, seen = _on_a_terminal(
        ["archive", "--older-than", "1d", "--to", str(tmp_path / "a.db")], db_path
    )
    assert code == 0 and b"archiving [" in seen and b"50/50 events" in seen
