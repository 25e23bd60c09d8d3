"""A ledger file with two names (hard links) is refused: SQLite's locks and WAL follow the name
a file was opened by, so two writers using two names would corrupt it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ledger import Ledger, StorageError
from tests.conftest import run_cli


def test_a_hard_linked_ledger_is_refused_by_every_name_until_the_link_goes(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "jobs.db")
    with Ledger(path) as ledger:
        job_id = ledger.create_job(1, {"a": 1})
    other = str(tmp_path / "same-file.db")
    os.link(path, other)
    before = Path(path).read_bytes()
    for name in (path, other):
        for readonly in (False, True):
            with pytest.raises(StorageError, match="2 hard links") as raised:
                Ledger(name, readonly=readonly)
            assert "remove the extra links" in str(raised.value)
    assert Path(path).read_bytes() == before
    assert not Path(other + "-wal").exists()
    result = run_cli("jobs", db=other)
    assert result.returncode == 1 and "hard links" in result.stderr
    assert "Traceback" not in result.stderr
    os.unlink(other)
    with Ledger(path) as ledger:
        assert ledger.get_job(job_id) is not None
        assert ledger.verify().ok


def test_a_symbolic_link_to_a_ledger_opens(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with Ledger(str(path)) as ledger:
        ledger.create_job(1, {})
    alias = tmp_path / "alias.db"
    alias.symlink_to(path)
    with Ledger(str(alias)) as ledger:  # SQLite resolves symbolic links to the one real name
        assert ledger.count_jobs() == 1
        assert ledger.verify().ok
