"""Group 9's processes: ``python -m benchmarks.e2e producer|worker ledger|raw DB N``.

Producers create N jobs (one commit each); workers claim and complete jobs until N jobs in all
are completed. The same loop runs on the ledger and on the raw-APSW baseline."""

from __future__ import annotations

import sys
import time

from benchmarks import raw
from ledger import Ledger

CONFIG = {"role": "coder", "task": "end to end"}
COUNT_DONE = "SELECT count(*) FROM jobs WHERE status = 'completed'"


def produce(impl: str, path: str, count: int) -> None:
    if impl == "ledger":
        with Ledger(path) as ledger:
            for n in range(count):
                ledger.create_job(n, CONFIG)
    else:
        conn = raw.connect(path)
        for n in range(count):
            raw.create_job(conn, n, CONFIG)
        conn.close()


def work(impl: str, path: str, total: int, name: str) -> None:
    if impl == "ledger":
        with Ledger(path) as ledger:
            while True:
                job = ledger.claim(name)
                if job is not None:
                    ledger.complete(job.id, "done", "success", 0.0, 0, worker_id=name)
                elif ledger.count_jobs(status="completed") >= total:
                    return
                else:
                    time.sleep(0.001)
    else:
        conn = raw.connect(path)
        while True:
            job_id = raw.claim(conn, name)
            if job_id is not None:
                raw.complete(conn, job_id, "done")
            elif conn.execute(COUNT_DONE).get >= total:
                conn.close()
                return
            else:
                time.sleep(0.001)


if __name__ == "__main__":
    role, impl, db, n = sys.argv[1:5]
    if role == "producer":
        produce(impl, db, int(n))
    else:
        work(impl, db, int(n), sys.argv[5])
