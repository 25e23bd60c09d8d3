"""The README's "Async and concurrency" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ledger import EventType, JobStatus, Ledger

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_async_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    text = README.read_text()
    block = re.search(r"<!-- async-example -->\n```python\n(.*?)```", text, re.S)
    assert block is not None, "README has no async example"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README async example", "exec"), {})
    assert "'answer': 'done: summarise'" in capsys.readouterr().out
    with Ledger(str(tmp_path / "agents.db")) as ledger:
        (job,) = ledger.jobs()
        assert job.status is JobStatus.COMPLETED and job.timeout == 60.0
        assert job.result == {"answer": "done: summarise", "words": 2}
        (step,) = ledger.job_events(job.id, types=[EventType.STEP])
        assert step.payload == {
            "name": "draft",
            "result": "done: summarise",
            "worker_id": job.worker_id,
            "attempt": 1,
        }
        assert ledger.verify().ok
