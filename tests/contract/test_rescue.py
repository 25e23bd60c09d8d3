"""Contract: claims record where their holder runs, and a live holder keeps its job (issue 18,
section 3), on every backend. The rescue of a dead holder, with real processes, is in
``tests/test_rescue.py``."""

from __future__ import annotations

import os

import pytest

from ledger import EventType, JobStatus, Ledger, holder

pytestmark = pytest.mark.skipif(holder.current() is None, reason="needs Linux /proc")


def test_a_claim_records_its_holder_process(ledger: Ledger) -> None:
    """Promise: the claimed event names the host, boot id, pid and process start time."""
    job_id = ledger.create_job(1, {})
    assert ledger.claim("w1", lease=60) is not None
    [claimed] = ledger.job_events(job_id, types=[EventType.CLAIMED])
    me = holder.current()
    assert me is not None
    assert claimed.payload["pid"] == os.getpid()
    assert (claimed.payload["host"], claimed.payload["boot_id"]) == (me.host, me.boot_id)
    assert claimed.payload["process_start"] == me.start


def test_a_live_holder_keeps_its_job_without_heartbeats(ledger: Ledger) -> None:
    """Promise: claims on the same host never take a job whose holder process runs, however
    often they look; the lease still decides for it."""
    job_id = ledger.create_job(1, {}, max_attempts=3)
    assert ledger.claim("holder", lease=60) is not None
    for n in range(10):
        assert ledger.claim(f"other-{n}", lease=60) is None
    job = ledger.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.RUNNING and job.worker_id == "holder" and job.attempts == 1
