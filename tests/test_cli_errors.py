"""User errors in the CLI: one line on stderr and a non-zero exit, never a traceback; and the
global options (--db, --debug) before or after the command name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import Ledger, cli
from tests.conftest import ROOT, run_cli


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ledger: error: ")
    return result.stderr


def test_a_directory_as_db_is_one_line(tmp_path: Path) -> None:
    for command in (["jobs"], ["verify"], ["replay"], ["work", "x:y", "--max-jobs", "1"]):
        message = one_line_error(run_cli(*command, db=str(tmp_path)))
        assert "is a directory" in message, command


def test_a_db_path_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "jobs", "--db", b"\xff.db"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert "not valid UTF-8" in one_line_error(result) and "\\xff" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise ValueError('boom at import')", "ValueError: boom at import"),
        ("import no_such_module_here", "ModuleNotFoundError"),
        ("import sys\nsys.exit(3)", "SystemExit"),
        ("handle = 5", "is not callable"),
    ],
)
def test_a_handler_module_that_fails_to_load_is_one_line(
    tmp_path: Path, source: str, expected: str
) -> None:
    (tmp_path / "broken_handlers.py").write_text(source + "\n")
    result = run_cli(
        "work", "broken_handlers:handle", "--max-jobs", "1", db="x.db", cwd=str(tmp_path)
    )
    assert expected in one_line_error(result)


def test_a_missing_import_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli("import", str(tmp_path / "missing.jsonl"), db=str(tmp_path / "new.db"))
    assert "missing.jsonl" in one_line_error(result)


def test_global_options_before_or_after_the_command(db_path: str, tmp_path: Path) -> None:
    with Ledger(db_path) as ledger:
        job_id = ledger.create_job(1, {})
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DB"}
    base = [sys.executable, "-m", "ledger"]
    for argv in (["--db", db_path, "jobs"], ["jobs", "--db", db_path]):
        out = subprocess.run(
            [*base, *argv],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT)},
        )
        assert out.returncode == 0 and job_id[:8] in out.stdout, argv
    # a value after the command name wins over one before it
    assert job_id[:8] in run_cli("--db", "elsewhere.db", "jobs", db=db_path, check=True).stdout
    for argv in (["--debug", "show", "zzzz"], ["show", "zzzz", "--debug"]):
        debug = run_cli(*argv, db=db_path)
        assert debug.returncode == 1 and "Traceback" in debug.stderr, argv
    one_line_error(run_cli("show", "zzzz", db=db_path))


def test_an_unexpected_error_is_one_line_that_says_bug_and_debug_shows_it(
    db_path: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Ledger(db_path) as ledger:
        ledger.create_job(1, {})

    def broken(args: object) -> int:
        raise TypeError("a bug in a command")

    monkeypatch.setattr(cli.inspect, "cmd_stats", broken)
    assert cli.main(["stats", "--db", db_path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: TypeError: a bug in a command" in err
    assert "--debug" in err
    with pytest.raises(TypeError):
        cli.main(["stats", "--db", db_path, "--debug"])


def test_bad_numbers_are_usage_errors(db_path: str) -> None:
    for argv in (["jobs", "--limit", "-1"], ["jobs", "--limit", "x"], ["events", "--count", "-2"]):
        result = run_cli(*argv, db=db_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, argv
