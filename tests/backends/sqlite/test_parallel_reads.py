"""Reads run in parallel with writes and with each other: a read on one thread never waits for
a write transaction (or another read) that another thread holds open on the same `Ledger`."""

from __future__ import annotations

import threading

from ledger import Ledger
from tests.conftest import FakeClock


def test_a_read_does_not_wait_for_a_write_in_progress(db_path: str, clock: FakeClock) -> None:
    with Ledger(db_path, clock=clock) as ledger:
        job_id = ledger.create_job(1, {"role": "coder"})
        inside, release = threading.Event(), threading.Event()

        def long_write(tx: object) -> None:
            inside.set()  # the write lock is held from here until `release`
            assert release.wait(30)

        writer = threading.Thread(target=ledger._backend.write, args=("holding", long_write))
        writer.start()
        try:
            assert inside.wait(30)
            read: list[object] = []
            reader = threading.Thread(target=lambda: read.append(ledger.get_job(job_id)))
            reader.start()
            reader.join(30)
            assert read and read[0] is not None  # answered while the write was still open
            assert writer.is_alive()
        finally:
            release.set()
            writer.join(30)
        assert ledger.verify().ok


def test_readers_on_several_threads_each_see_committed_writes(
    db_path: str, clock: FakeClock
) -> None:
    with Ledger(db_path, clock=clock) as ledger:
        ids = [ledger.create_job(n, {}) for n in range(8)]
        seen: dict[int, list[str]] = {}

        def read(n: int) -> None:
            seen[n] = [job.id for job in ledger.jobs(limit=100)]

        threads = [threading.Thread(target=read, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(sorted(v) == sorted(ids) for v in seen.values()) and len(seen) == 4
        ledger.create_job(99, {})  # a write after the readers' connections exist
        assert len(ledger.jobs(limit=100)) == 9


def test_the_layers_import_on_their_own() -> None:
    """`projections` (the folds) and `ledger.domain` import without the faces or a backend
    (no import cycle), and only the SQLite backend imports apsw."""
    import subprocess
    import sys

    for module in ("projections", "projections.jobs", "ledger.domain.decide", "ledger"):
        code = f"import sys, {module}; print('apsw' in sys.modules)"
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
