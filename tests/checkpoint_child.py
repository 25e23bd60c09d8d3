"""The checkpoint kill test's child: creates jobs one at a time, without a pause, on a ledger at
durability normal (a process kill loses nothing the OS was handed), printing each job's id only
once create_job returned. The parent kills it with SIGKILL while it runs."""

from __future__ import annotations

import sys

from ledger import Ledger

if __name__ == "__main__":
    ledger = Ledger(sys.argv[1], durability="normal")
    i = 0
    while True:
        i += 1
        job_id = ledger.create_job(7, {"task": "fill the WAL", "i": i})
        sys.stdout.write(job_id + "\n")
        sys.stdout.flush()
