"""Crash: SIGKILL a working process at random moments; nothing acknowledged is ever lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from ledger import Ledger
from tests.conftest import ROOT, table_dump

ROUNDS = 24
SEED = 20261123


def _acked(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    out = set()
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():  # the last line may be torn by the kill
            out.add((parts[0], int(parts[1])))
    return out


def _wait_for_acks(path: Path, count: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while len(_acked(path)) < count:
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline, "child made no progress"
        time.sleep(0.002)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    db = str(tmp_path / "ledger.db")
    acks = tmp_path / "acks.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_number in range(ROUNDS):
        before = len(_acked(acks))
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_child", db, str(acks), str(round_number)],
            cwd=ROOT, env=env, stderr=subprocess.PIPE,
        )  # fmt: skip
        _wait_for_acks(acks, before + rng.randint(1, 40), child)
        time.sleep(rng.random() * 0.02)  # a random moment, likely inside a command
        child.send_signal(signal.SIGKILL)
        child.wait(30)

        conn = apsw.Connection(db)
        assert conn.execute("PRAGMA integrity_check").get == "ok"
        stored = set(conn.execute("SELECT job_id, version FROM events").fetchall())
        conn.close()
        missing = _acked(acks) - stored
        assert not missing, f"round {round_number}: acknowledged events lost: {sorted(missing)[:5]}"
        with Ledger(db) as ledger:
            assert ledger.verify().ok, f"round {round_number}"
            live = table_dump(db)
            ledger.replay()
            assert table_dump(db) == live
    assert len(_acked(acks)) > ROUNDS
