"""Group 9: four producer processes and four worker processes on one file, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.conftest import size
from ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
JOBS = size(2_000, 40)


def _run(impl: str, path: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "benchmarks.e2e"]
    per = JOBS // 4
    procs = [
        subprocess.Popen([*base, "producer", impl, path, str(per)], cwd=ROOT, env=env)
        for _ in range(4)
    ]
    procs += [
        subprocess.Popen([*base, "worker", impl, path, str(per * 4), f"w{n}"], cwd=ROOT, env=env)
        for n in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=600) == 0


@pytest.mark.parametrize("impl", ["ledger", "raw"])
def test_four_producers_four_workers(benchmark, tmp_path: Path, impl: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "9 e2e 4 producers + 4 workers (jobs)"
    benchmark.extra_info["items"] = JOBS
    paths = iter(str(tmp_path / f"e2e-{n}.db") for n in range(100))

    def setup() -> tuple[tuple[str, str], dict[str, object]]:
        path = next(paths)
        Ledger(path).close()
        return (impl, path), {}

    benchmark.pedantic(_run, setup=setup, rounds=size(3, 1), iterations=1)
