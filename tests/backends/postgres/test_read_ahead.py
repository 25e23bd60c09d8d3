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
- an `AsyncLedger`'s run of queued commands reads their jobs in one statement too and goes
  without a sync per command; a command of the run that the rules refuse (rolled back to
  its savepoint) leaves the rest of that read to the commands after it; one whose statement
  fails at the server (its error arriving with a later command or the COMMIT) rolls the
  run's transaction back, its calls run again each with its own sync, and it alone fails; a
  neighbour's lock timeout stays its own;
- an error that reaches a later command (a neighbour's event that waited for the log's
  counter past ``busy_timeout``, raised by the next command's lock, which would take it for
  its own and step back) is its command's: each runs again with its own sync, and nobody is
  told an event was written that is not in the log;
- an interrupt while the combiner goes back to the mark after a skipped COMMIT loses the
  group (its callers are told nothing was written) and leaves the writer usable; an interrupt
  in a command run without a sync reaches the combining thread and is not run again;
- a transaction's first command reads nothing ahead (it may wait for its own row, and must
  not hold the queued commands' rows meanwhile: another session holding its row and then
  wanting one of them deadlocked with it);
- a command whose error arrives only with the COMMIT (nothing after it in the group synced)
  fails alone: the COMMIT did not run, the commands since the mark run again each with its own
  sync, and the others commit together.

Grouping is forced with `Gate`, as in test_group_commit.py.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest

from ledger import (
    AsyncLedger,
    InvalidTransition,
    Ledger,
    LedgerBusy,
    LedgerError,
    StorageError,
)

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


def at_the_end(backend: Any) -> Any:
    """A write whose statement fails at the server only once it is sent, after its command."""

    def write() -> Any:
        def work(tx: Any) -> str:
            tx._later.execute("SELECT 1/0")
            return "queued"

        return backend.write("dividing at the end", work)

    return write


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

    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(leader_job, "progress", {}),
        [
            lambda: ledger.log_event(a, "progress", {}),
            lambda: ledger.log_event(b, "progress", {}),
            at_the_end(backend),
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

    def calls(n: int) -> tuple[list[int], list[BaseException]]:
        logged: list[int] = []
        failed: list[BaseException] = []
        for i in range(60):
            if (i * 7 + n) % 5 == 0:
                try:
                    at_the_end(backend)()
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


async def in_one_run(
    lg: AsyncLedger, calls: list[Awaitable[Any]], before_release: Callable[[], object] = list
) -> list[Any]:
    """The ``calls``' outcomes (results or exceptions), the calls queued, in order, behind a
    call that holds the AsyncLedger's thread, so the thread takes them all as one run.

    Each call is a coroutine (every `AsyncLedger` method is one, and `grouped`) that puts its
    call on the thread's queue at its first step; the tasks' first steps run in the order
    they were made once this coroutine yields, and the queue's length says they all have
    (`before_release` then runs, say to take a lock), before the thread is let go."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> bool:
        holding.set()
        return release.wait(WAIT)

    held = lg._executor.submit(hold)
    assert holding.wait(WAIT)  # the thread is in it: its queue holds only what follows
    queue = lg._executor._queue
    try:
        tasks = [asyncio.ensure_future(call) for call in calls]
        for _ in range(10):  # one loop turn starts them all (a yield to the loop, no sleep)
            if queue.qsize() >= len(calls):
                break
            await asyncio.sleep(0)
        assert queue.qsize() == len(calls), "a call did not reach the thread's queue"
        before_release()
    finally:
        release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert held.result(WAIT) is True
    return outcomes


async def grouped(lg: AsyncLedger, fn: Any) -> Any:
    """``fn`` as one grouped write on the AsyncLedger's thread (as `log_event` is)."""
    return await lg._executor.call_on(True, None, fn, (), {})


def test_an_async_ledgers_run_of_commands_reads_their_jobs_in_one_statement(
    postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger(postgres_schema) as setup:
        jobs = [setup.create_job(1, CONFIG) for _ in range(16)]
        done = setup.create_job(1, CONFIG, priority=9)
        assert setup.claim("w", lease=60) is not None
        setup.complete(done, "done", "success", 0.0, 1, worker_id="w")
    reads = Reads(monkeypatch)
    syncs: list[None] = []

    async def main() -> list[Any]:
        async with AsyncLedger(postgres_schema) as lg:
            await lg.log_event(jobs[0], "progress", {"warm": True})  # opened, thread started
            transactions_ = backend_of(lg.ledger)._transactions
            sync = transactions_.sync
            monkeypatch.setattr(transactions_, "sync", lambda: (syncs.append(None), sync())[1])
            reads.ahead.clear()
            reads.alone.clear()
            calls = [lg.log_event(j, "progress", {"n": n}) for n, j in enumerate(jobs)]
            calls.insert(8, lg.log_event(done, "progress", {}))  # refused: rolled back alone
            return await in_one_run(lg, calls)

    results = asyncio.run(main())
    refused = results.pop(8)
    assert isinstance(refused, InvalidTransition), refused
    assert results == [3] + [2] * 15
    # One run: its first command loads its own row (it may wait for it, so nothing else may
    # be locked by then); the second reads every job of the run ahead, in one statement, and
    # the commands after it take theirs from there, those after the refusal included.
    assert reads.ahead == [[*jobs[:8], done, *jobs[8:]]]
    assert [j for j in reads.alone if j in jobs] == [jobs[0]]
    # and without a wait each (17 commands): the first command's, the refusal's check and
    # its rollback to its savepoint (two), the COMMIT's
    assert len(syncs) <= 5, len(syncs)
    with Ledger(postgres_schema) as ledger:
        assert ledger.verify().ok


def test_a_neighbours_lock_timeout_is_its_own_and_nothing_acknowledged_is_lost(
    postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger(postgres_schema, busy_timeout=0.3) as ledger:
        done, logged, parent = (ledger.create_job(1, CONFIG) for _ in range(3))
        ledger.cancel(done)  # final: cancelling it again appends nothing
        gate = Gate(ledger, monkeypatch)
        with psycopg.connect(postgres_schema) as other:
            first, rest = led(
                ledger,
                gate,
                lambda: ledger.cancel(done),
                [
                    lambda: ledger.log_event(logged, "progress", {"mine": True}),
                    lambda: ledger.create_job(1, CONFIG, parent_id=parent),
                ],
            )
            other.execute("SELECT * FROM event_counter FOR UPDATE")  # held past busy_timeout
            gate.open()
            finish_all([first, *rest])
        assert first.error is None and first.result is False
        log, create = rest
        assert isinstance(log.error, LedgerBusy), log.error  # its own wait, its own error
        assert isinstance(create.error, LedgerBusy), create.error
        assert [e.version for e in ledger.job_events(logged)] == [1]
        assert ledger.children(parent) == []
        assert ledger.verify().ok
        assert ledger.log_event(logged, "progress", {}) == 2  # the writer goes on


def test_an_interrupt_going_back_to_the_mark_loses_the_group_and_the_writer_goes_on(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_of(ledger)
    leader_job, logged = (ledger.create_job(1, CONFIG) for _ in range(2))
    transactions_ = backend._transactions
    recover = transactions_.recover
    fired: list[None] = []

    def interrupted() -> None:
        if not fired:
            fired.append(None)
            raise KeyboardInterrupt  # as a signal handler would, in psycopg's wait
        recover()

    monkeypatch.setattr(transactions_, "recover", interrupted)

    gate = Gate(ledger, monkeypatch)
    gate.fail = RuntimeError("the leader fails: the queued commands start a new transaction")
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(leader_job, "progress", {}),
        [lambda: ledger.log_event(logged, "progress", {}), at_the_end(backend)],
    )
    gate.open()
    finish_all([first, *rest])
    assert fired
    log, failed = rest
    assert isinstance(log.error, StorageError) and "nothing of it was written" in str(log.error)
    assert failed.error is not None
    assert [e.version for e in ledger.job_events(logged)] == [1]
    assert ledger.log_event(logged, "progress", {}) == 2  # the writer is out of the failed block
    assert ledger.verify().ok


def test_an_interrupt_in_an_unsynced_command_reaches_the_combiner_and_is_not_rerun(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_of(ledger)
    leader_job, logged = (ledger.create_job(1, CONFIG) for _ in range(2))
    runs: list[None] = []

    def interrupting() -> Any:
        def work(tx: Any) -> str:
            runs.append(None)
            tx._later.execute("SELECT 1")
            raise KeyboardInterrupt

        return backend.write("interrupted", work)

    gate = Gate(ledger, monkeypatch)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(leader_job, "progress", {}),
        [lambda: ledger.log_event(logged, "progress", {}), at_the_end(backend), interrupting],
    )
    gate.open()
    finish_all([first, *rest])
    assert isinstance(first.error, KeyboardInterrupt)  # the combining thread's
    log, failed, interrupted = rest
    assert len(runs) == 1
    assert isinstance(interrupted.error, StorageError) and "interrupted" in str(interrupted.error)
    assert failed.error is not None
    versions = [e.version for e in ledger.job_events(logged)]
    assert (log.error is None and versions == [1, 2]) or (log.error and versions == [1])
    assert ledger.verify().ok


def test_a_transactions_first_command_reads_nothing_ahead(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader_job, held, queued = (ledger.create_job(1, CONFIG) for _ in range(3))
    gate = Gate(ledger, monkeypatch)
    gate.fail = RuntimeError("the leader fails: the queued commands start a new transaction")
    with psycopg.connect(postgres_schema) as other:
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (held,))
        first, rest = led(
            ledger,
            gate,
            lambda: ledger.log_event(leader_job, "progress", {}),
            [
                lambda: ledger.log_event(held, "progress", {}),
                lambda: ledger.log_event(queued, "progress", {}),
            ],
        )
        gate.open()
        wait_until(lambda: waiting_on_a_lock(postgres_schema, "SELECT%FROM jobs%"), "a wait")
        # the other session now wants the queued command's row: free, not read ahead
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE NOWAIT", (queued,))
    finish_all([first, *rest])
    assert [caller.result for caller in rest] == [2, 2]
    assert ledger.verify().ok


@pytest.mark.parametrize("place", ["middle", "last"])
def test_an_async_ledgers_unsynced_commands_fail_alone(postgres_schema: str, place: str) -> None:
    """A run of an AsyncLedger's calls goes without a sync per command; one whose statement
    fails at the server (its error arriving with the next command, or with the COMMIT) makes
    the run's transaction roll back and its calls run again, each with its own sync: the
    failing call alone gets the error, every other is in the log with the version it was
    told."""
    with Ledger(postgres_schema) as setup:
        jobs = [setup.create_job(1, CONFIG) for _ in range(10)]

    async def main() -> list[Any]:
        async with AsyncLedger(postgres_schema) as lg:
            await lg.log_event(jobs[0], "progress", {})
            backend = backend_of(lg.ledger)
            calls = [lg.log_event(j, "progress", {"n": n}) for n, j in enumerate(jobs)]
            calls.insert(5 if place == "middle" else 10, grouped(lg, at_the_end(backend)))
            return await in_one_run(lg, calls)

    results = asyncio.run(main())
    failed = results.pop(5 if place == "middle" else 10)
    assert isinstance(failed, StorageError) and "DivisionByZero" in str(failed), failed
    assert str(failed).startswith("dividing at the end") and "shared with" not in str(failed)
    assert results == [3] + [2] * 9
    with Ledger(postgres_schema) as ledger:
        assert [len(ledger.job_events(j)) for j in jobs] == [3] + [2] * 9
        assert ledger.verify().ok


def test_a_redone_run_sees_a_generators_items_again(postgres_schema: str) -> None:
    """A call given a generator (of `log_events`' pairs, of `create_jobs`' specs) may run twice
    when its run is redone; it is drawn into a list on the event loop, so the second run writes
    the same items and the caller's answer is true (an exhausted generator would write an empty
    batch and be acknowledged)."""
    with Ledger(postgres_schema) as setup:
        jobs = [setup.create_job(1, CONFIG) for _ in range(3)]

    async def main() -> list[Any]:
        async with AsyncLedger(postgres_schema) as lg:
            await lg.log_event(jobs[0], "progress", {})
            backend = backend_of(lg.ledger)
            calls = [
                lg.log_event(jobs[0], "progress", {}),
                lg.create_jobs({"chat_id": 9, "config": {"n": n}} for n in range(3)),
                lg.log_events(jobs[1], (("progress", {"n": n}) for n in range(4))),
                grouped(lg, at_the_end(backend)),
                lg.log_event(jobs[2], "progress", {}),
            ]
            return await in_one_run(lg, calls)

    results = asyncio.run(main())
    assert isinstance(results.pop(3), StorageError)
    assert results[0] == 3 and len(results[1]) == 3 and results[2:] == [5, 2]
    with Ledger(postgres_schema) as ledger:
        logged = ledger.job_events(jobs[1], types=["progress"])
        assert [e.payload for e in logged] == [{"n": n} for n in range(4)]
        configs = [ledger.get_job(j).config for j in results[1]]  # type: ignore[union-attr]
        assert configs == [{"n": n} for n in range(3)]
        assert ledger.count_jobs() == 6 and ledger.verify().ok


def test_an_async_ledgers_run_keeps_a_neighbours_lock_timeout_its_own(
    postgres_schema: str,
) -> None:
    with Ledger(postgres_schema) as setup:
        a, b = setup.create_job(1, CONFIG), setup.create_job(1, CONFIG)

    async def main() -> list[Any]:
        async with AsyncLedger(postgres_schema, busy_timeout=0.3) as lg:
            await lg.log_event(a, "progress", {})  # opened, thread started
            with psycopg.connect(postgres_schema) as other:
                calls = [
                    lg.create_job(1, CONFIG),  # the run's first: it waits, and times out
                    lg.log_event(a, "progress", {}),
                    lg.log_event(b, "progress", {}),
                ]
                lock = functools.partial(other.execute, "SELECT * FROM event_counter FOR UPDATE")
                return await in_one_run(lg, calls, lock)

    results = asyncio.run(main())
    assert all(isinstance(r, LedgerBusy) for r in results), results
    with Ledger(postgres_schema) as ledger:
        assert [len(ledger.job_events(j)) for j in (a, b)] == [2, 1]
        assert ledger.verify().ok


def test_a_commit_the_server_turns_into_a_rollback_is_a_failure(ledger: Ledger) -> None:
    """A COMMIT of a transaction left in its failed state (an error swallowed, the pipeline
    synced) ends it as a ROLLBACK without an error from the server: the caller is told nothing
    of it was written, never that it committed."""
    backend = backend_of(ledger)
    job_id = ledger.create_job(1, CONFIG)

    def swallowing(tx: Any) -> str:
        tx.conn.execute("UPDATE jobs SET priority = 7 WHERE id = %s", (job_id,))
        with suppress(psycopg.Error):
            tx.conn.execute("SELECT 1/0").fetchone()
        with suppress(psycopg.Error):
            tx._transactions.sync()
        return "done"

    with pytest.raises(LedgerError, match="nothing of it was written"):
        backend.write("swallowing an error", swallowing)
    assert ledger.get_job(job_id).priority == 0
    assert ledger.log_event(job_id, "progress", {}) == 2  # the writer goes on
