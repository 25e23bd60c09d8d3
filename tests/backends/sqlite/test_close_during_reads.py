"""`Ledger.close` while other threads read: the reads under way finish, later ones are refused
with StorageError, and close itself completes (it used to raise APSW's ThreadingViolationError
at the first busy read connection and leave the write connection open)."""

from __future__ import annotations

import threading
from pathlib import Path

import apsw

from ledger import Ledger, StorageError
from ledger.backends.sqlite.backend import SqliteBackend


def test_close_while_threads_read_closes_everything(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.db"))
    ledger.create_jobs([{"chat_id": 1, "config": {"n": n}} for n in range(2000)])
    backend = ledger._backend
    assert isinstance(backend, SqliteBackend)
    started = [threading.Event() for _ in range(3)]
    outcomes: list[str] = []

    def reader(ready: threading.Event) -> None:
        reads = 0
        try:
            while True:
                assert len(ledger.jobs(limit=2000)) == 2000
                reads += 1
                ready.set()
        except StorageError as e:
            assert "closed" in str(e)
            outcomes.append("refused" if reads else "refused before reading")
        except BaseException as e:  # recorded: the assertion below names it
            outcomes.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=reader, args=(ready,), daemon=True) for ready in started]
    for thread in threads:
        thread.start()
    for ready in started:
        assert ready.wait(60)
    ledger.close()  # raises nothing, whatever the readers are doing
    for thread in threads:
        thread.join(60)
    assert outcomes == ["refused"] * 3
    assert backend._readers == []
    try:
        backend._conn.execute("SELECT 1")
    except apsw.ConnectionClosedError:
        pass
    else:
        raise AssertionError("the write connection is still open")
