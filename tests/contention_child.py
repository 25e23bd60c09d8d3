"""The contention test's processes.

``worker DB NAME``: two threads, each with its own connection, claim, heartbeat, log and complete
jobs until none is left; prints how many each finished and any error that reached the caller.
``reader DB STOPFILE``: checks, in read snapshots, that no half-applied command is ever visible.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import apsw

from ledger import Ledger, LedgerError


def worker(db: str, name: str) -> None:
    done: list[int] = []
    errors: list[str] = []

    def run(thread: int) -> None:
        worker_id = f"{name}-t{thread}"
        count = 0
        try:
            with Ledger(db) as ledger:
                while (job := ledger.claim(worker_id, lease=120)) is not None:
                    ledger.heartbeat(job.id, worker_id=worker_id)
                    ledger.log_event(job.id, "progress", {"by": worker_id})
                    ledger.complete(
                        job.id, f"by {worker_id}", "success", 0.1, 1, worker_id=worker_id
                    )
                    count += 1
        except (LedgerError, apsw.Error) as e:  # none may reach us: that is the assertion
            errors.append(f"{type(e).__name__}: {e}")
        done.append(count)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"done": sum(done), "errors": errors}))


SNAPSHOT_CHECKS = {
    "version ahead of or behind the log": (
        "SELECT count(*) FROM jobs j "
        "WHERE j.version != (SELECT max(version) FROM events e WHERE e.job_id = j.id)"
    ),
    "completed rows without exactly one completed event": (
        "SELECT (SELECT count(*) FROM jobs WHERE status = 'completed') - "
        "(SELECT count(*) FROM events WHERE type = 'completed')"
    ),
    "checkpoint not at the head of the log": (  # -1: LIVE, in step with the whole log
        "SELECT (SELECT max(position) FROM events) - "
        "(SELECT CASE position WHEN -1 THEN (SELECT max(position) FROM events) ELSE position END "
        "FROM projection_checkpoints WHERE name = 'jobs')"
    ),
}


def reader(db: str, stop_file: str) -> None:
    conn = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(30_000)
    snapshots = 0
    violations: list[str] = []
    while not Path(stop_file).exists():
        conn.execute("BEGIN")
        for what, statement in SNAPSHOT_CHECKS.items():
            if conn.execute(statement).get not in (0, None):
                violations.append(what)
        conn.execute("COMMIT")
        snapshots += 1
    conn.close()
    print(json.dumps({"snapshots": snapshots, "violations": violations}))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        reader(sys.argv[2], sys.argv[3])
