"""A combiner's commands on PostgreSQL: their jobs read ahead in one statement, their errors
found after them.

The combiner of a group (`ledger.backends.group`) reads the rows of the jobs that the command
it is about to run and the commands queued behind it load first, in one statement (``FOR
UPDATE SKIP LOCKED``), and runs those commands without a sync each: their writes go out with
what follows. What is proved here, each by a test that fails without the promise:
- the queued commands' jobs are read in one statement, and none of those commands reads its
  job again; each caller gets its own result, all in one transaction;
- a row another transaction holds is left out of the read ahead: its command locks it itself
  (it steps back, the commands before it commit, and it waits in the next transaction), and
  finishes once the row is free;
- a row read ahead and then written by an earlier command of the group (a charge moves its
  parent's subtree cost) is read again by the later command, not given as read: the parent's
  cost holds both charges, and replay rebuilds the same;
- an `AsyncLedger`'s run of queued commands reads their jobs in one statement too, and a
  command of the run that fails (rolled back to its savepoint) leaves the rest of that read
  to the commands after it;
- a command whose error arrives only with the COMMIT (nothing after it in the group synced)
  fails alone: the COMMIT did not run, the commands since the mark run again each with its own
  sync, and the others commit together.

Grouping is forced with `Gate`, as in test_group_commit.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from ledger import AsyncLedger, InvalidTransition, Ledger, StorageError

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres import jobs_table  # noqa: E402
from tests.backends.postgres.test_group_commit import (  # noqa: E402
    Caller,
    Commits,
    backend_of,
    finish_all,
    led,
    waiting_on_a_lock,
)
from tests.group_support import WAIT, Gate, log_of, wait_until  # noqa: E402

CONFIG = {"role": "coder", "task": "read ahead"}


@pytest.fixture
def ledger(postgres_schema: str) -> Iterator[Ledger]:
    with Ledger(postgres_schema, durability="full") as opened:
        yield opened


class Reads:
    """Records the writer's job reads: each read ahead's ids, and each job loaded alone."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ahead: list[list[str]] = []
        self.alone: list[str] = []
        send_locked, load = jobs_table.send_locked, jobs_table.load

        def recorded_send(conn: Any, job_ids: list[str]) -> Any:
            self.ahead.append(list(job_ids))
            return send_locked(conn, job_ids)

        def recorded_load(conn: Any, job_id: str, **kwargs: Any) -> Any:
            if kwargs.get("lock"):
                self.alone.append(job_id)
            return load(conn, job_id, **kwargs)

        monkeypatch.setattr(jobs_table, "send_locked", recorded_send)
        monkeypatch.setattr(jobs_table, "load", recorded_load)


def test_the_queued_commands_jobs_are_read_in_one_statement(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader_job = ledger.create_job(1, CONFIG)
    jobs = [ledger.create_job(1, CONFIG) for _ in range(4)]
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger, postgres_schema, monkeypatch)
    reads = Reads(monkeypatch)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(leader_job, "progress", {"leader": True}),
        [lambda j=j: ledger.log_event(j, "progress", {"n": j}) for j in jobs],  # type: ignore[misc]
    )
    gate.open()
    finish_all([first, *rest])
    assert first.error is None and all(c.error is None for c in rest), [c.error for c in rest]
    assert [c.result for c in rest] == [2, 2, 2, 2]
    assert reads.ahead == [jobs]  # one statement for the four queued commands
    assert not set(reads.alone) & set(jobs)  # none of them read its job again
    commits.one_transaction(5)
    assert all(ledger.job_events(j)[-1].payload == {"n": j} for j in jobs)
    assert ledger.verify().ok


def test_a_row_held_elsewhere_is_left_out_and_its_command_waits_its_turn(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader_job, a, b, c = (ledger.create_job(1, CONFIG) for _ in range(4))
    gate = Gate(ledger, monkeypatch)
    reads = Reads(monkeypatch)
    with psycopg.connect(postgres_schema) as other:
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (b,))  # held until commit
        first, rest = led(
            ledger,
            gate,
            lambda: ledger.log_event(leader_job, "progress", {}),
            [lambda j=j: ledger.log_event(j, "progress", {}) for j in (a, b, c)],  # type: ignore[misc]
        )
        gate.open()
        # a committed with the leader and was answered, while b's command waits for its row
        # (in a transaction of its own, first: it may wait there)
        assert rest[0].finish() == 2
        wait_until(lambda: waiting_on_a_lock(postgres_schema, "SELECT%FROM jobs%"), "b waits")
        assert rest[1].is_alive()
        assert [e.version for e in ledger.job_events(a)] == [1, 2]
        assert [e.version for e in ledger.job_events(b)] == [1]
    finish_all([first, *rest])  # the other transaction ended: b's row is free
    assert all(caller.error is None for caller in [first, *rest])
    assert [caller.result for caller in rest] == [2, 2, 2]
    assert reads.ahead[0] == [a, b, c]
    assert b in reads.alone  # left out of the read ahead (held), locked by its own command
    assert log_of(ledger)[b] == [1, 2]
    assert ledger.verify().ok


def test_a_row_written_after_it_was_read_ahead_is_read_again(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = ledger.create_job(1, CONFIG, priority=2)
    child = ledger.create_job(1, CONFIG, parent_id=parent, priority=1)
    leader_job = ledger.create_job(1, CONFIG)
    assert ledger.claim("w", lease=60) is not None  # parent
    assert ledger.claim("w", lease=60) is not None  # child
    gate = Gate(ledger, monkeypatch)
    reads = Reads(monkeypatch)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(leader_job, "progress", {}),
        [
            lambda: ledger.charge(child, 5, worker_id="w"),  # moves the parent's subtree cost
            lambda: ledger.charge(parent, 7, worker_id="w"),
        ],
    )
    gate.open()
    finish_all([first, *rest])
    assert all(caller.error is None for caller in [first, *rest])
    assert reads.ahead == [[child, parent]]
    assert parent in reads.alone  # written by the child's charge: read again, not as read ahead
    assert ledger.get_job(parent).subtree_cost_cents == 12
    assert ledger.get_job(child).subtree_cost_cents == 5
    ledger.replay()
    assert ledger.get_job(parent).subtree_cost_cents == 12
    assert ledger.verify().ok


def test_an_error_that_arrives_with_the_commit_is_its_commands_alone(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_of(ledger)
    leader_job, a, b = (ledger.create_job(1, CONFIG) for _ in range(3))
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger, postgres_schema, monkeypatch)

    def at_the_end() -> Any:
        def work(tx: Any) -> str:
            tx._later.execute("SELECT 1/0")  # sent at the end; nothing after it syncs
            return "queued"

        return backend.write("dividing at the end", work)

    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(leader_job, "progress", {}),
        [
            lambda: ledger.log_event(a, "progress", {}),
            lambda: ledger.log_event(b, "progress", {}),
            at_the_end,
        ],
    )
    gate.open()
    finish_all([first, *rest])
    logged_a, logged_b, failed = rest
    assert first.error is None and logged_a.error is None and logged_b.error is None
    assert (logged_a.result, logged_b.result) == (2, 2)
    assert isinstance(failed.error, StorageError), failed.error
    message = str(failed.error)
    assert message.startswith("dividing at the end") and "DivisionByZero" in message, message
    assert "shared with" not in message  # its own error, not a lost group's
    commits.one_transaction(3)
    assert ledger.verify().ok
    assert ledger.log_event(a, "progress", {}) == 3  # the writer goes on


def test_many_threads_on_few_jobs_keep_every_version(ledger: Ledger) -> None:
    """Eight threads, two per job, log concurrently: each acknowledged version is in the log
    once, gap-free (a row read ahead for one command and given to a second would repeat a
    version, which the log refuses)."""
    jobs = [ledger.create_job(1, CONFIG) for _ in range(4)]
    callers = [
        Caller(lambda j=jobs[n % 4]: [ledger.log_event(j, "progress", {}) for _ in range(30)])
        for n in range(8)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(WAIT * 2)
    assert all(caller.error is None for caller in callers), [c.error for c in callers]
    versions = log_of(ledger)
    assert all(versions[j] == list(range(1, 62)) for j in jobs)
    acked = sorted(v for caller in callers for v in caller.result)
    assert acked == sorted(list(range(2, 62)) * 4)
    assert ledger.verify().ok


def test_failing_commands_among_many_threads_fail_alone(ledger: Ledger) -> None:
    """Eight threads, one job each; a fifth of their commands fail at the server only at
    their end (``SELECT 1/0`` kept for the end). Each failing command gets its own error; every
    log succeeds with the next version, none is told a neighbour's error (a statement's first
    prepare, skipped after a neighbour's error, once made later runs of it fail with
    "prepared statement ... does not exist"), and the log verifies."""
    backend = backend_of(ledger)
    jobs = [ledger.create_job(1, CONFIG) for _ in range(8)]

    def failing() -> Any:
        def work(tx: Any) -> str:
            tx._later.execute("SELECT 1/0")
            return "queued"

        return backend.write("dividing", work)

    def calls(n: int) -> tuple[list[int], list[BaseException]]:
        logged: list[int] = []
        failed: list[BaseException] = []
        for i in range(60):
            if (i * 7 + n) % 5 == 0:
                try:
                    failing()
                except StorageError as e:
                    failed.append(e)
            else:
                logged.append(ledger.log_event(jobs[n], "progress", {"i": i}))
        return logged, failed

    callers = [Caller(lambda n=n: calls(n)) for n in range(8)]  # type: ignore[misc]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(WAIT * 2)
    assert all(caller.error is None for caller in callers), [c.error for c in callers]
    for n, caller in enumerate(callers):
        logged, failed = caller.result
        assert logged == list(range(2, len(logged) + 2))
        assert len(failed) == sum((i * 7 + n) % 5 == 0 for i in range(60))
        for error in failed:
            message = str(error)
            assert message.startswith("dividing") and "DivisionByZero" in message, message
            assert "shared with" not in message, message
    assert ledger.verify().ok


def test_an_async_ledgers_run_of_commands_reads_their_jobs_in_one_statement(
    postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger(postgres_schema) as setup:
        jobs = [setup.create_job(1, CONFIG) for _ in range(16)]
        done = setup.create_job(1, CONFIG, priority=9)
        assert setup.claim("w", lease=60) is not None
        setup.complete(done, "done", "success", 0.0, 1, worker_id="w")
    reads = Reads(monkeypatch)

    async def main() -> list[Any]:
        async with AsyncLedger(postgres_schema) as lg:
            await lg.log_event(jobs[0], "progress", {"warm": True})  # opened, thread started
            reads.ahead.clear()
            reads.alone.clear()
            calls = [lg.log_event(j, "progress", {"n": n}) for n, j in enumerate(jobs)]
            calls.insert(8, lg.log_event(done, "progress", {}))  # refused: rolled back alone
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    refused = results.pop(8)
    assert isinstance(refused, InvalidTransition), refused
    assert results == [3] + [2] * 15
    read_ahead = {job for ids in reads.ahead for job in ids}
    assert max(len(ids) for ids in reads.ahead) > 8  # a run's jobs, one statement
    assert {j for j in jobs if j not in read_ahead} == {j for j in jobs if j in reads.alone}
    after = [j for j in jobs[8:] if j in read_ahead]
    assert after and not set(after) & set(reads.alone)  # the refusal left them their rows
    with Ledger(postgres_schema) as ledger:
        assert ledger.verify().ok
