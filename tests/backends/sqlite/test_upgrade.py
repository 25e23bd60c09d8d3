"""Upgrades: a ledger written by release 0.1.0 (committed under tests/data) opens, replays and
verifies with the current code, and reads back exactly the jobs it held."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec

from ledger import EventType, Ledger
from tests.conftest import table_dump

DATA = Path(__file__).resolve().parents[2] / "data"


def test_release_0_1_0_ledger_opens_replays_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(DATA / "ledger-0.1.0.db", path)
    expected = json.loads((DATA / "ledger-0.1.0.expected.json").read_text())
    with Ledger(str(path)) as ledger:
        assert ledger.verify().ok
        for name, job in expected.items():
            live = msgspec.to_builtins(ledger.get_job(job["id"]))
            assert live == job, name
        seen = {e.type for e in ledger.read_all()}
        assert seen == set(EventType)  # every tag of 0.1.0 is in the file and still readable
        before = table_dump(str(path))
        report = ledger.replay()
        assert report.jobs == len(expected) and table_dump(str(path)) == before
        assert ledger.verify().ok
        ledger.create_job(1, {"after": "upgrade"})  # and it keeps working
        assert ledger.verify().ok
