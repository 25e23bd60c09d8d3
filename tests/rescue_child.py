"""The rescue tests' holder: claims one job with a 300 s lease and never heartbeats.

Prints the claimed job's id (or ``none``) on stdout, then waits until its stdin is closed and
exits without releasing the job, as a process that dies would leave it.
"""

from __future__ import annotations

import sys

from ledger import Ledger


def main(db: str, worker_id: str) -> None:
    ledger = Ledger(db)
    job = ledger.claim(worker_id, lease=300)
    print(job.id if job is not None else "none", flush=True)
    sys.stdin.read()  # alive, holding the job, until the test closes our stdin
    ledger.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
