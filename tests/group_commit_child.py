"""The group-commit kill test's child: many concurrent callers on one ledger, each printing a
job's id only after both its calls returned (so only what was acknowledged is printed).

``threads``: 8 threads on one `Ledger`; ``async``: 64 coroutines on one `AsyncLedger`. Each
caller, forever: ``create_job`` then ``log_event`` on that job; then prints the id, flushed.
The parent kills this process with SIGKILL while it runs.
"""

from __future__ import annotations

import asyncio
import sys
import threading

from ledger import AsyncLedger, Ledger

THREADS = 8
COROUTINES = 64
_print_lock = threading.Lock()


def ack(job_id: str) -> None:
    with _print_lock:
        sys.stdout.write(job_id + "\n")
        sys.stdout.flush()


def run_threads(db: str) -> None:
    ledger = Ledger(db, durability="full")

    def caller(n: int) -> None:
        i = 0
        while True:
            i += 1
            job_id = ledger.create_job(n, {"caller": n, "i": i})
            ledger.log_event(job_id, "progress", {"i": i})
            ack(job_id)

    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


async def run_coroutines(db: str) -> None:
    async with AsyncLedger(db, durability="full") as lg:

        async def caller(n: int) -> None:
            i = 0
            while True:
                i += 1
                job_id = await lg.create_job(n, {"caller": n, "i": i})
                await lg.log_event(job_id, "progress", {"i": i})
                ack(job_id)

        await asyncio.gather(*(caller(n) for n in range(COROUTINES)))


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "threads":
        run_threads(path)
    else:
        asyncio.run(run_coroutines(path))
