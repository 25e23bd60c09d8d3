"""Replay at scale: its memory does not grow with the job states it folded (they are written
out in batches), and it reports progress, to a callback and as the CLI's bar on a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from ledger import Ledger, rebuild
from tests.conftest import ROOT, FakeClock


def _fill(ledger: Ledger, jobs: int) -> None:
    for start in range(0, jobs, 1000):
        ledger.create_jobs(
            [
                {"chat_id": i % 7, "config": {"task": f"task {start + i}"}}
                for i in range(min(1000, jobs - start))
            ]
        )


def _replay_peak(path: Path, jobs: int, clock: FakeClock) -> int:
    """The most memory (Python's allocations) a replay of ``jobs`` created jobs held at once."""
    with Ledger(str(path), clock=clock, durability="normal") as ledger:
        _fill(ledger, jobs)
        tracemalloc.start()
        try:
            report = ledger.replay()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert report.events == report.jobs == jobs
        assert ledger.verify().ok
    return peak


def test_replay_memory_does_not_grow_with_the_job_states(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With batches of 200 states, 6,000 more jobs cost what the log check keeps per job (its
    last version, about 110 bytes), far below the ~900 bytes a job's state takes when the fold
    keeps them all (as it does with batches larger than the log: the check of this test)."""
    monkeypatch.setattr(rebuild, "_BATCH", 200)
    monkeypatch.setattr(rebuild, "_SIZE_EVERY", 100)
    small = _replay_peak(tmp_path / "small.db", 2000, clock)
    large = _replay_peak(tmp_path / "large.db", 8000, clock)
    per_job = (large - small) / 6000
    assert per_job < 300, f"{per_job:.0f} bytes more per job"
    monkeypatch.setattr(rebuild, "_BATCH", 100_000)  # every state kept: the same measure sees it
    kept = (_replay_peak(tmp_path / "kept.db", 2000, clock) - small) / 2000
    assert kept > 2 * per_job, f"{kept:.0f} bytes per job kept vs {per_job:.0f} batched"


def test_replay_reports_progress_up_to_every_event(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rebuild, "_PROGRESS_EVERY", 1000)
    _fill(ledger, 2500)
    seen: list[tuple[int, int]] = []
    report = ledger.replay(progress=lambda done, total: seen.append((done, total)))
    assert [done for done, _ in seen] == [1000, 2000, 2500]
    assert all(total == report.position == report.events == 2500 for _, total in seen)
    assert ledger.verify().ok


def test_the_replay_command_draws_a_bar_on_a_terminal(ledger: Ledger) -> None:
    """On a terminal's stderr the command draws its bar and ends it with a newline; piped, it
    prints the summary alone (`run_cli` captures stderr: see the CLI tests)."""
    _fill(ledger, 12_000)
    ledger.close()
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ledger", "replay", "--db", ledger.path],
            stdout=subprocess.PIPE,
            stderr=terminal,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=120,
            check=False,
        )
        os.close(terminal)
        terminal = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's side is closed: everything was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert done.returncode == 0, drawn
    assert b"replayed 12000 events into 12000 jobs" in done.stdout
    text = drawn.decode()
    assert "replaying [" in text and "10000/12000 events" in text
    assert text.rstrip("\r\n").endswith(f"[{'#' * 30}] 12000/12000 events")
    assert "Traceback" not in text
