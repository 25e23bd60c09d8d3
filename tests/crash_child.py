"""The crash test's child: works the ledger in a loop and records every acknowledged write.

After each call returns, it appends ``job_id version`` to the side file and fsyncs it, so the
parent knows exactly which events were acknowledged before it killed this process.
"""

from __future__ import annotations

import os
import sys

from ledger import Ledger


def main(db: str, acks_path: str, seed: int) -> None:
    acks = open(acks_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def ack(job_id: str, version: int) -> None:
        acks.write(f"{job_id} {version}\n")
        acks.flush()
        os.fsync(acks.fileno())

    with Ledger(db) as ledger:
        n = 0
        while True:
            n += 1
            job_id = ledger.create_job(seed, {"round": seed, "n": n})
            ack(job_id, 1)
            job = ledger.claim(f"crash-{seed}", lease=600)
            if job is None:
                continue
            ack(job.id, job.version)
            version = ledger.log_event(job.id, "progress", {"n": n, "pad": "x" * (n % 50)})
            ack(job.id, version)
            if n % 3:
                ledger.complete(job.id, f"done {n}", "success", 0.5, 1)
            else:
                ledger.fail(job.id, f"failed {n}")
            ack(job.id, version + 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
