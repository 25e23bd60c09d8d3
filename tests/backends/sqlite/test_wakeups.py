"""The SQLite backend's wake-up: a commit of another connection (another process, another
`Ledger`) is seen by the next wait, however the waits are sliced."""

from __future__ import annotations

from pathlib import Path

from ledger import Ledger
from ledger.backends.sqlite.backend import SqliteBackend


def test_a_commit_between_two_waits_wakes_the_next_one(tmp_path: Path) -> None:
    """A worker waits in short slices. A commit that lands after one slice ended and before
    the next began is seen by the next slice (its first look at ``data_version`` is the one
    that moved); it used to be swallowed by that first look, and the worker slept on until its
    poll interval."""
    path = tmp_path / "ledger.db"
    with Ledger(path) as waiting, Ledger(path) as other:
        backend = waiting._backend
        assert isinstance(backend, SqliteBackend)
        assert backend.wait_for_change(0.01) is True  # the first call starts watching
        assert backend.wait_for_change(0.01) is False  # nothing since
        other.create_job(1, {"task": "between two waits"})
        assert backend.wait_for_change(0.05) is True
        assert backend.wait_for_change(0.01) is False  # seen once, not again
