"""Several processes opening one new ledger file at the same moment (workers started together)
all succeed: no false "not a ledger" while another is initialising it, no instant LedgerBusy
from the switch to WAL mode."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

from ledger import Ledger
from tests.open_child import open_rounds

PROCESSES = 6
ROUNDS = 12


def test_processes_opening_a_new_file_together_all_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited SQLite state
    paths = [str(tmp_path / f"round{n}.db") for n in range(ROUNDS)]
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    children = [
        context.Process(target=open_rounds, args=(paths, barrier, results))
        for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in range(PROCESSES * ROUNDS)]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    failures = Counter(outcome for _, outcome in outcomes if outcome != "ok")
    assert not failures, failures
    for path in paths:
        with Ledger(path) as ledger:
            assert ledger.count_jobs() == PROCESSES
            assert ledger.verify().ok
