"""The README stays true: its set-up commands, and a CLI reference equal to ``--help``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ledger.cli import cli_reference
from ledger.domain.transitions import transition_table

README = Path(__file__).resolve().parent.parent / "README.md"
CI = Path(__file__).resolve().parent.parent / ".ci" / "run"
TEST_COMMAND = "python -m pip install -e '.[test]' && python -m pytest"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def test_first_screen_has_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:20])
    assert "python -m pip install . && python -m ledger demo" in first_screen
    assert TEST_COMMAND in first_screen
    assert TEST_COMMAND in CI.read_text()


def test_cli_reference_matches_help() -> None:
    text = README.read_text()
    expected = f"{START}\n{cli_reference()}\n{END}"
    current = re.search(re.escape(START) + ".*?" + re.escape(END), text, re.S)
    assert current is not None
    if os.environ.get("LEDGER_UPDATE_README") == "1":
        README.write_text(text.replace(current.group(0), expected))
        return
    assert current.group(0) == expected, "README CLI reference is stale: LEDGER_UPDATE_README=1"


def _section(start: str, end: str, body: str) -> None:
    """Keep the README between two markers equal to ``body`` (LEDGER_UPDATE_README=1 writes it)."""
    text = README.read_text()
    expected = f"{start}\n{body}\n{end}"
    current = re.search(re.escape(start) + ".*?" + re.escape(end), text, re.S)
    assert current is not None, f"README has no {start}"
    if os.environ.get("LEDGER_UPDATE_README") == "1":
        README.write_text(text.replace(current.group(0), expected))
        return
    assert current.group(0) == expected, "README section is stale: LEDGER_UPDATE_README=1"


def test_job_states_table_is_the_transition_table() -> None:
    _section("<!-- transitions:start -->", "<!-- transitions:end -->", transition_table())


def test_quick_start_runs(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README quick start", "exec"), {})
    from ledger import JobStatus, Ledger

    with Ledger(str(tmp_path / "jobs.db"), readonly=True) as ledger:
        (job,) = ledger.jobs()
        assert job.status is JobStatus.COMPLETED and job.result_summary == "fixed it"
        assert [e.type.value for e in ledger.job_events(job.id)] == [
            "created",
            "claimed",
            "progress",
            "completed",
        ]
