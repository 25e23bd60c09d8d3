"""`active_jobs_summary` prints what the original's getActiveJobsSummary printed."""

from __future__ import annotations

from ledger import Ledger
from tests.conftest import FakeClock


def test_nothing_to_report(ledger: Ledger) -> None:
    assert ledger.active_jobs_summary(1) == "No active or recent subagents."


def test_running_and_recent_sections(ledger: Ledger, clock: FakeClock) -> None:
    long_task = "t" * 80
    running = ledger.create_job(1, {"role": "coder", "task": long_task})
    done = ledger.create_job(1, {"role": "reviewer", "task": "review"})
    no_role = ledger.create_job(1, ["not", "an", "object"])
    ledger.create_job(2, {"role": "elsewhere"})  # another chat: not shown
    ledger.claim("w1")  # running
    ledger.claim("w2")  # done
    ledger.claim("w3")  # no_role
    ledger.complete(done, "s" * 100, "success", 3.0, 9)
    clock.advance(1)
    ledger.fail(no_role, "broke")
    clock.advance(41.5)
    expected = (
        "## Running Subagents\n"
        f'- {running[:8]} (coder): running 42s - "{"t" * 50}"\n'
        "\n"
        "## Recent Subagents\n"
        f"- {no_role[:8]} (unknown): failed - broke\n"
        f"- {done[:8]} (reviewer): success - {'s' * 60}\n"
    )
    assert ledger.active_jobs_summary(1) == expected


def test_only_recent_shows_three_newest(ledger: Ledger, clock: FakeClock) -> None:
    ids = []
    for n in range(5):
        job_id = ledger.create_job(1, {"role": f"r{n}"})
        ledger.claim("w")
        clock.advance(1)
        ledger.complete(job_id, f"summary {n}", "success", 0.0, 1)
        ids.append(job_id)
    lines = ledger.active_jobs_summary(1).splitlines()
    assert lines[:2] == ["", "## Recent Subagents"]
    assert lines[2:] == [f"- {ids[n][:8]} (r{n}): success - summary {n}" for n in (4, 3, 2)]


def test_a_failed_job_names_its_error_on_one_line(ledger: Ledger, clock: FakeClock) -> None:
    failed = ledger.create_job(1, {"role": "tester", "task": "t"})
    ledger.claim("w")
    ledger.fail(failed, "KeyError: 'x'\n  in handle()" + "!" * 80)
    clock.advance(1)
    done = ledger.create_job(1, {"role": "coder"})
    ledger.claim("w")
    ledger.complete(done, "ok", "success", 0.0, 1)
    lines = ledger.active_jobs_summary(1).splitlines()
    assert lines[2] == f"- {done[:8]} (coder): success - ok"  # the original's line, unchanged
    error = ("KeyError: 'x'   in handle()" + "!" * 80)[:60]
    assert lines[3] == f"- {failed[:8]} (tester): failed - {error}"
