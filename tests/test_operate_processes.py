"""A pause is honoured by every worker: a worker in another process, started on every queue,
never claims a job of a paused queue, and takes it once the queue is resumed."""

from __future__ import annotations

from ledger import Job, JobContext, JobStatus, Ledger, Result
from tests.conftest import run_cli


def ok(job: Job, ctx: JobContext) -> Result:
    """The worker process's handler: every job succeeds."""
    return Result(summary=f"did {job.config}")


def _statuses(db_path: str, ids: list[str]) -> list[JobStatus]:
    with Ledger(db_path, readonly=True) as ledger:
        return [ledger.get_job(j).status for j in ids]  # type: ignore[union-attr]


def test_a_worker_process_skips_a_paused_queue_until_it_is_resumed(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        mail = [ledger.create_job(1, {"n": n}, queue="mail", priority=10) for n in range(3)]
        other = [ledger.create_job(1, {"n": n}, queue="other") for n in range(2)]
    run_cli("pause", "mail", "--by", "ops", db=db_path, check=True)  # another process pauses
    worker = "tests.test_operate_processes:ok"
    run_cli("work", worker, "--stop-when-idle", "--quiet", db=db_path, check=True)
    assert _statuses(db_path, other) == [JobStatus.COMPLETED] * 2
    assert _statuses(db_path, mail) == [JobStatus.PENDING] * 3  # first in line, but paused
    run_cli("work", worker, "--queue", "mail", "--stop-when-idle", db=db_path, check=True)
    assert _statuses(db_path, mail) == [JobStatus.PENDING] * 3
    run_cli("resume", "mail", db=db_path, check=True)
    run_cli("work", worker, "--stop-when-idle", "--quiet", db=db_path, check=True)
    assert _statuses(db_path, mail) == [JobStatus.COMPLETED] * 3
    with Ledger(db_path, readonly=True) as ledger:
        assert ledger.verify().ok
