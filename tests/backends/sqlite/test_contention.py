"""Contention: 4 processes x 2 threads working thousands of jobs on one file, while readers in
other processes check every snapshot they see."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ledger import EventType, JobStatus, Ledger
from tests.conftest import ROOT

JOBS = 2000


@pytest.mark.slow
def test_many_writers_no_busy_errors_each_job_once_readers_see_whole_commands(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "ledger.db")
    stop = tmp_path / "stop"
    with Ledger(db) as ledger:
        for start in range(0, JOBS, 500):
            ledger.create_jobs(
                [{"chat_id": n, "config": {"n": n}} for n in range(start, start + 500)]
            )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def spawn(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.contention_child", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    readers = [spawn("reader", db, str(stop)) for _ in range(2)]
    workers = [spawn("worker", db, f"p{n}") for n in range(4)]
    results = []
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
        results.append(json.loads(out))
    stop.write_text("done")
    seen = []
    for r in readers:
        out, err = r.communicate(timeout=120)
        assert r.returncode == 0, err
        seen.append(json.loads(out))

    assert [e for r in results for e in r["errors"]] == []  # no BusyError reached a caller
    assert sum(r["done"] for r in results) == JOBS
    assert all(r["violations"] == [] for r in seen), seen
    assert all(r["snapshots"] > 0 for r in seen)
    with Ledger(db) as ledger:
        completed = Counter(e.job_id for e in ledger.read_all() if e.type is EventType.COMPLETED)
        assert len(completed) == JOBS and set(completed.values()) == {1}
        assert ledger.count_jobs(status=JobStatus.COMPLETED) == JOBS
        assert ledger.verify().ok
