"""The concurrent-open test's processes (started with multiprocessing's "spawn").

`open_rounds`: for each path, wait at the barrier with the other processes, then open the (new)
ledger file at the same moment as they do, create one job and report what happened.
"""

from __future__ import annotations

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from ledger import Ledger, LedgerError


def open_rounds(paths: list[str], barrier: Barrier, results: Queue) -> None:  # type: ignore[type-arg]
    for path in paths:
        barrier.wait(timeout=60)
        try:
            with Ledger(path, busy_timeout=30) as ledger:
                ledger.create_job(1, {"round": path})
            results.put((path, "ok"))
        except LedgerError as e:
            results.put((path, f"{type(e).__name__}: {e}"))
