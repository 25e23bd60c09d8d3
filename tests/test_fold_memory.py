"""A fold keeps what each job's state needs, not the events: a job's last activity event (its
payload can be 16 MiB) must not stay alive until the flush (a replay batch of 20,000 jobs, or
verify's whole log)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from ledger import Ledger
from ledger.domain.logrules import LogCheck
from ledger.rebuild import fold_events
from projections.jobs import JobsFold

JOBS = 200
PAYLOAD = 100_000  # bytes of text in each job's last tool_call (the limit is 16 MiB)


def test_a_fold_does_not_hold_the_payloads_of_the_jobs_last_activity(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path, durability="normal") as lg:
        ids = lg.create_jobs([{"chat_id": 1, "config": {"i": i}} for i in range(JOBS)])
        for i, job_id in enumerate(ids):  # pending jobs whose last event is a big activity event
            lg.log_event(job_id, "tool_call", {"output": f"{i:06d}" * (PAYLOAD // 6)})
        fold = JobsFold()  # verify's fold: no save, every state in memory until the end
        tracemalloc.start()
        try:  # the log streamed from the file, as verify reads it: only what the fold keeps stays
            lg._backend.read("log", lambda s: fold_events(s.iter_events(0), fold, LogCheck()))
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    log_bytes = JOBS * PAYLOAD
    states = list(fold.states())
    assert len(states) == JOBS and all(s.version == 2 for s in states)
    # the states themselves: about 1 KB each; the payloads would be JOBS * PAYLOAD (20 MB)
    assert held < log_bytes / 10, f"the fold holds {held} bytes ({log_bytes} of payloads)"
