"""No write on PostgreSQL waits for a row lock while it holds the log's counter.

Every append takes the log's one counter row (the insert trigger), held until the COMMIT. A
command that locks a row (a job, a budget, a queue) and then appends waits for that row before
it holds the counter; one that appended first and then waited for a row held by another such
command, which waits for the counter at its COMMIT, was a deadlock (PostgreSQL broke it after
its 1 s ``deadlock_timeout``, and the loser ran again). A stress run of three worker processes
on subagent trees with charges logged 14 of them in 21 s. The shapes, and what is proved here
against a real server (another session holds the row, as a command of another process would
between its locked read and its COMMIT; the proof is that the log's counter row is free, to
another session, while the ledger's command waits for the held row):

- a lone command that locks a second row after its appends (a charge moves its parent's
  subtree cost): the locked read is sent ahead of the command's queued events, so it waits
  with the counter free, and the charge lands once the row is let go;
- a command of a shared transaction after another command appended (group commit, or an
  `AsyncLedger`'s calls), waiting for a job row or a budget row: it steps back, what came
  before it commits at once (seen by another session while it waits), and it runs again first
  in the next transaction, where it waits with the counter free;
- a claim rescuing a gone process's jobs passes over one that another transaction holds
  (another claimer rescuing the same process) instead of waiting for it;
- every write that locks several job rows locks them newest first (a job is created after its
  parent): a cascading cancel its subtree (one statement, the root last), `create_jobs` the
  parents of its specs, a charge or a completion with a cost its job and then the ancestors
  its cost rolls up to. Waiting for a held descendant, a cascade holds no ancestor of it, nor
  the counter, and charges racing a cascade never deadlock (locking the root first, a cascade
  against a charge on a child was a deadlock, broken after a second: 9 in 1,672 commands of
  a stress run);
- a charge locks its ancestors before its chat's budget (jobs, then budgets: a claim of the
  pending parent holds the parent and waits for the budget);
- `create_jobs` whose later spec has an idempotency key and a parent: the key's look goes
  ahead of the earlier specs' queued events, so the parent's lock waits with the counter free.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ledger import JobStatus, LeaseLost, Ledger

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres import jobs_table  # noqa: E402
from ledger.backends.postgres.backend import PostgresBackend  # noqa: E402
from tests.backends.postgres.plans import writer_plan  # noqa: E402

CONFIG = {"role": "coder", "task": "lock order"}


class RowHolder:
    """Another session holding one row ``FOR UPDATE`` until `release`."""

    def __init__(self, url: str, select: str, key: Any) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("BEGIN")
        assert self.conn.execute(select + " FOR UPDATE", (key,)).fetchall() != []

    def release(self) -> None:
        """Let the row go (again: nothing)."""
        if self.conn.closed:
            return
        self.conn.execute("ROLLBACK")
        self.conn.close()


def counter_is_free(url: str) -> bool:
    """Whether another session can take the log's counter row now (nobody holds it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT 1 FROM event_counter FOR UPDATE NOWAIT").fetchall()
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            conn.execute("ROLLBACK")
    return True


def row_is_free(url: str, select: str, key: Any) -> bool:
    """Whether another session can lock the row ``select`` finds now (nobody holds it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")
        try:
            conn.execute(select + " FOR UPDATE NOWAIT", (key,)).fetchall()
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            conn.execute("ROLLBACK")
    return True


def wait_for_a_lock_wait(url: str, within: float = 10.0) -> bool:
    """Whether some session comes to wait for another transaction's row lock within
    ``within`` seconds (polls ``pg_locks``)."""
    deadline = time.monotonic() + within
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return True
            time.sleep(0.005)  # a poll of the server's lock table, not a synchronisation
    return False


class Background:
    """``call`` run in a thread; its result or error kept for `join`."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.outcome: list[Any] = []

        def run() -> None:
            try:
                self.outcome.append(("ok", call()))
            except BaseException as e:  # reported by `join`
                self.outcome.append(("error", e))

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> Any:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the command never returned"
        kind, value = self.outcome[0]
        if kind == "error":
            raise value
        return value


class HeldOpen:
    """``call``, a command of ``lg``, run in a transaction that another thread holds open after
    it until `finish`: its row locks stay taken and its writes uncommitted. Returns once the
    command holds the row of job ``locks`` (polled)."""

    def __init__(self, lg: Ledger, call: Callable[[], Any], url: str, locks: str) -> None:
        self.go_on = threading.Event()
        self.made: list[Any] = []

        def held() -> None:
            self.made.append(call())
            assert self.go_on.wait(30)

        self.background = Background(lambda: lg._service.batch("a command held open", [held]))
        deadline = time.monotonic() + 30
        while row_is_free(url, JOB_ROW, locks):  # a poll of the row's lock
            assert time.monotonic() < deadline, "the held command never locked the job"

    def finish(self) -> Any:
        """Let the transaction commit; the command's result."""
        self.go_on.set()
        self.background.join()
        return self.made[0]


@pytest.fixture
def ledger(postgres_schema: str) -> Iterator[Ledger]:
    with Ledger(postgres_schema, busy_timeout=10) as opened:
        yield opened


def running(ledger: Ledger, chat_id: int, **kwargs: Any) -> str:
    job_id = ledger.create_job(chat_id, CONFIG, priority=100, **kwargs)
    job = ledger.claim("w", lease=300)
    assert job is not None and job.id == job_id
    return job_id


def test_a_charge_waits_for_its_parent_with_the_counter_free(
    ledger: Ledger, postgres_schema: str
) -> None:
    parent = running(ledger, 1)
    child = running(ledger, 1, parent_id=parent)
    holder = RowHolder(postgres_schema, "SELECT 1 FROM jobs WHERE id = %s", parent)
    try:
        charge = Background(lambda: ledger.charge(child, 5, worker_id="w"))
        assert wait_for_a_lock_wait(postgres_schema), "the charge never waited for the parent"
        assert counter_is_free(postgres_schema)
    finally:
        holder.release()
    charge.join()
    assert ledger.get_job(child).cost_cents == 5
    assert ledger.get_job(parent).subtree_cost_cents == 5
    assert ledger.verify().ok


def held_writes(ledger: Ledger) -> Any:
    backend = ledger._backend
    assert isinstance(backend, PostgresBackend)
    return backend.held_writes()


@pytest.mark.parametrize("row", ["job", "budget", "subtree"])
def test_a_later_command_of_a_shared_transaction_steps_back(
    ledger: Ledger, postgres_schema: str, row: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ledger.backends.group")
    ledger.set_budget(7, 1000)
    job = running(ledger, 7)
    child = ledger.create_job(7, CONFIG, parent_id=job)
    if row == "job":
        holder = RowHolder(postgres_schema, "SELECT 1 FROM jobs WHERE id = %s", job)
    elif row == "subtree":
        holder = RowHolder(postgres_schema, "SELECT 1 FROM jobs WHERE id = %s", child)
    else:
        holder = RowHolder(postgres_schema, "SELECT 1 FROM budgets WHERE chat_id = %s", 7)
    made: list[str] = []

    def commands() -> None:
        with held_writes(ledger):
            made.append(ledger.create_job(2, CONFIG))  # appends: holds the counter
            if row == "job":
                ledger.heartbeat(job, worker_id="w")  # locks the job's row
            elif row == "subtree":
                ledger.cancel(job, cascade=True)  # locks the subtree's rows
            else:
                ledger.charge(job, 3, worker_id="w")  # locks the chat's budget row

    try:
        shared = Background(commands)
        assert wait_for_a_lock_wait(postgres_schema), "the command never waited for the row"
        assert counter_is_free(postgres_schema)
        with psycopg.connect(postgres_schema, autocommit=True) as other:  # committed already
            seen = other.execute("SELECT id FROM jobs WHERE id = %s", (made[0],)).fetchall()
        assert seen == [(made[0],)]
    finally:
        holder.release()
    shared.join()
    events = [e.type for e in ledger.job_events(job)]
    last = {"job": "heartbeat", "budget": "charged", "subtree": "cancelled"}[row]
    assert events[-1] == last
    stepped = [r.getMessage() for r in caplog.records if "stepped back" in r.getMessage()]
    assert len(stepped) == 1 and "held by another transaction" in stepped[0]  # logged, DEBUG
    if row == "subtree":
        assert ledger.get_job(child).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_a_rescue_of_a_gone_holder_passes_over_a_job_another_transaction_holds(
    ledger: Ledger, postgres_schema: str
) -> None:
    first = running(ledger, 3)
    second = running(ledger, 3)
    with psycopg.connect(postgres_schema, autocommit=True) as conn:
        holders = conn.execute(
            "SELECT DISTINCT holder_host, holder_boot_id, holder_pid, holder_start FROM jobs "
            "WHERE id = ANY(%s)",
            ([first, second],),
        ).fetchall()
    assert len(holders) == 1 and holders[0][0] is not None  # this process holds both
    host, *rest = holders[0]
    who = tuple(rest)
    backend = ledger._backend
    assert isinstance(backend, PostgresBackend)
    holder = RowHolder(postgres_schema, "SELECT 1 FROM jobs WHERE id = %s", first)
    try:
        found = backend.write("looking", lambda tx: tx.held_by(host, who))
    finally:
        holder.release()
    assert found == [second]
    both = backend.write("looking", lambda tx: tx.held_by(host, who))
    assert sorted(both) == sorted([first, second])
    assert ledger.get_job(first).status is JobStatus.RUNNING


JOB_ROW = "SELECT 1 FROM jobs WHERE id = %s"
BUDGET_ROW = "SELECT 1 FROM budgets WHERE chat_id = %s"


def test_a_cascade_waits_for_a_held_descendant_holding_none_of_its_ancestors(
    ledger: Ledger, postgres_schema: str
) -> None:
    """A cascade locks the subtree newest first and its root last, the order a charge's or a
    completion's roll-up locks a job and then its ancestors: waiting for a held grandchild it
    holds neither the root nor the child (locking the root first, it deadlocked with a charge
    on a child, which PostgreSQL broke after a second)."""
    root = ledger.create_job(1, CONFIG)
    child = ledger.create_job(1, CONFIG, parent_id=root)
    grandchild = ledger.create_job(1, CONFIG, parent_id=child)
    holder = RowHolder(postgres_schema, JOB_ROW, grandchild)
    try:
        cancel = Background(lambda: ledger.cancel(root, cascade=True))
        assert wait_for_a_lock_wait(postgres_schema), "the cascade never waited for the job"
        assert row_is_free(postgres_schema, JOB_ROW, root)
        assert row_is_free(postgres_schema, JOB_ROW, child)
        assert counter_is_free(postgres_schema)
    finally:
        holder.release()
    assert cancel.join() is True
    statuses = {ledger.get_job(j).status for j in (root, child, grandchild)}  # type: ignore[union-attr]
    assert statuses == {JobStatus.CANCELLED}
    assert ledger.verify().ok


def test_a_cascade_and_charges_below_it_never_deadlock(
    ledger: Ledger, postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Charges on a tree's leaves (each locking its job and then its ancestors) racing a
    cascade of the tree's root: everyone is done, and no transaction was aborted to break a
    deadlock (every aborted one is logged as it runs again)."""
    root = running(ledger, 1)
    children = [running(ledger, 1, parent_id=root) for _ in range(2)]
    leaves = [running(ledger, 1, parent_id=c) for c in children for _ in range(2)]
    barrier = threading.Barrier(len(leaves) + 1)
    urls = [Ledger(postgres_schema, busy_timeout=10) for _ in range(len(leaves) + 1)]

    def charge(lg: Ledger, job_id: str) -> int:
        barrier.wait(10)
        done = 0
        for _ in range(20):
            try:
                lg.charge(job_id, 1, worker_id="w")
            except LeaseLost:  # cancelled under it: the rest of its charges are refused
                break
            done += 1
        return done

    def cascade(lg: Ledger) -> bool:
        barrier.wait(10)
        return lg.cancel(root, cascade=True)

    try:
        with caplog.at_level(logging.INFO, logger="ledger"):
            workers = [
                Background(functools.partial(charge, lg, j))
                for lg, j in zip(urls[:-1], leaves, strict=True)
            ]
            cancel = Background(functools.partial(cascade, urls[-1]))
            charged = [worker.join() for worker in workers]
            assert cancel.join() is True
    finally:
        for lg in urls:
            lg.close()
    assert not [r for r in caplog.records if "running it again" in r.getMessage()]
    assert ledger.get_job(root).subtree_cost_cents == sum(charged)  # type: ignore[union-attr]
    assert all(ledger.get_job(j).status is JobStatus.CANCELLED for j in [root, *leaves])  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_a_charge_locks_its_ancestors_before_its_chats_budget(
    ledger: Ledger, postgres_schema: str
) -> None:
    """A charge waiting for its parent (held by another transaction, as a claim of the
    pending parent holds it while it waits for the chat's budget) does not hold the budget
    row: jobs are locked before budgets. Holding it, it deadlocked with that claim."""
    ledger.set_budget(1, 1000)
    parent = running(ledger, 1, max_cost_cents=10)
    child = running(ledger, 1, parent_id=parent, max_cost_cents=10)
    holder = RowHolder(postgres_schema, JOB_ROW, parent)
    try:
        charge = Background(lambda: ledger.charge(child, 5, worker_id="w"))
        assert wait_for_a_lock_wait(postgres_schema), "the charge never waited for the parent"
        assert row_is_free(postgres_schema, BUDGET_ROW, 1)
        assert counter_is_free(postgres_schema)
    finally:
        holder.release()
    charge.join()
    assert ledger.get_job(parent).subtree_cost_cents == 5  # type: ignore[union-attr]
    assert ledger.budget(1).spent_cents == 5
    assert ledger.verify().ok


def test_create_jobs_locks_a_later_specs_parent_with_the_counter_free(
    ledger: Ledger, postgres_schema: str
) -> None:
    parent = running(ledger, 1)
    holder = RowHolder(postgres_schema, "SELECT 1 FROM jobs WHERE id = %s", parent)
    specs = [
        {"chat_id": 1, "config": CONFIG},
        {"chat_id": 1, "config": CONFIG, "idempotency_key": "k", "parent_id": parent},
    ]
    try:
        create = Background(lambda: ledger.create_jobs(specs))
        assert wait_for_a_lock_wait(postgres_schema), "the create never waited for the parent"
        assert counter_is_free(postgres_schema)
    finally:
        holder.release()
    first, child = create.join()
    assert ledger.get_job(child).parent_id == parent and ledger.get_job(first).parent_id is None
    assert ledger.create_job(1, CONFIG, idempotency_key="k") == child
    assert ledger.verify().ok


def test_the_writer_does_not_compile_a_subtree_read(ledger: Ledger) -> None:
    """The writer prices sorts out (``enable_sort`` off), so the one statement that still
    sorts, a cascade's read of the subtree, was costed past the JIT thresholds and compiled on
    every run (~0.5 s, while the cascade held the log's counter): its plan on the writer's own
    session has no JIT step."""
    root = ledger.create_job(1, CONFIG)
    ledger.create_job(1, CONFIG, parent_id=root)
    backend = ledger._backend
    assert isinstance(backend, PostgresBackend)
    explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + jobs_table.descendants_statement
    (text,) = backend.write("explaining", lambda tx: tx.conn.execute(explain, (root,)).fetchone())
    plan = json.loads(text)[0] if isinstance(text, str) else text[0]
    assert "Execution Time" in plan
    assert "JIT" not in plan, plan.get("JIT")


def test_create_jobs_locks_its_specs_parents_newest_first(
    ledger: Ledger, postgres_schema: str
) -> None:
    """The specs name an older parent first: locked in the specs' order, the create held the
    older one while it waited for the newer, and a cascade from the older one (which locks the
    newer first) waited for it in turn: a deadlock."""
    older = running(ledger, 1)
    newer = ledger.create_job(1, CONFIG, parent_id=older)
    specs = [
        {"chat_id": 1, "config": CONFIG, "parent_id": older},
        {"chat_id": 1, "config": CONFIG, "parent_id": newer},
    ]
    holder = RowHolder(postgres_schema, JOB_ROW, newer)
    try:
        create = Background(lambda: ledger.create_jobs(specs))
        assert wait_for_a_lock_wait(postgres_schema), "the create never waited for the parent"
        assert row_is_free(postgres_schema, JOB_ROW, older)
        assert counter_is_free(postgres_schema)
    finally:
        holder.release()
    made = create.join()
    assert [ledger.get_job(j).parent_id for j in made] == [older, newer]  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_a_cascade_in_a_batch_after_a_write_below_it_decides_on_that_write(
    ledger: Ledger,
) -> None:
    """A batch (one transaction) that heartbeats a running child and then cancels its parent
    with a cascade: the cascade's locked read of the subtree goes ahead of the batch's queued
    writes, so the child's row it read is the one before the heartbeat; the cancel must decide
    on the heartbeat's row (a stale version was a ConcurrencyError at the COMMIT)."""
    root = ledger.create_job(1, CONFIG)
    child = running(ledger, 1, parent_id=root)
    service = ledger._service
    results = service.batch(
        "a heartbeat and a cascade",
        [
            lambda: ledger.heartbeat(child, worker_id="w"),
            lambda: ledger.cancel(root, cascade=True),
        ],
    )
    assert results[1] is True, results
    assert ledger.get_job(child).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert ledger.get_job(root).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_subtree_reads_find_rows_by_index_on_an_unanalyzed_table(postgres_schema: str) -> None:
    """Planned as joins of the tree to the table, on guessed statistics (a table autovacuum
    has not analyzed yet), a cascade's lock and its read of the subtree scanned the whole
    table (16-30 ms on 20,000 jobs for a leaf's empty subtree, against 0.4 ms by index)."""
    with Ledger(postgres_schema) as ledger:
        with psycopg.connect(postgres_schema, autocommit=True) as conn:  # no ANALYZE meanwhile
            conn.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        roots = ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * 300)
        ledger.create_jobs([{"chat_id": 1, "config": CONFIG, "parent_id": r} for r in roots] * 9)
    with psycopg.connect(postgres_schema, autocommit=True) as conn:
        never = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass")
        assert never.fetchone() == (-1,)  # never analyzed: the planner guesses
    for statement in (jobs_table.lock_subtree_statement, jobs_table.descendants_statement):
        plan = writer_plan(postgres_schema, statement, (roots[0],))
        assert "Seq Scan" not in plan, plan
        assert "Index Cond: (parent_id = t.id)" in plan, plan


def test_a_cascade_cancels_a_child_created_while_it_waited_for_the_parent(
    postgres_schema: str,
) -> None:
    """Another transaction holds a job of the subtree and creates a child under it; the
    cascade's lock statement, which waits for that job, cannot see the child, so its read of
    the subtree after the locks must: the child is cancelled with the rest, none left pending
    under a cancelled parent."""
    with Ledger(postgres_schema, busy_timeout=10) as ledger, Ledger(postgres_schema) as other:
        root = ledger.create_job(1, CONFIG)
        parent = ledger.create_job(1, CONFIG, parent_id=root)
        spawn = HeldOpen(  # it locks the parent
            other, lambda: other.create_job(1, CONFIG, parent_id=parent), postgres_schema, parent
        )
        cancel = Background(lambda: ledger.cancel(root, cascade=True))
        try:
            assert wait_for_a_lock_wait(postgres_schema), "the cascade never waited"
        finally:
            child = spawn.finish()
        assert cancel.join() is True
        statuses = {ledger.get_job(j).status for j in (root, parent, child)}  # type: ignore[union-attr]
        assert statuses == {JobStatus.CANCELLED}
        assert ledger.verify().ok


def test_a_cascade_of_a_final_job_being_retried_locks_the_subtree_first(
    postgres_schema: str,
) -> None:
    """The root is failed as the cascade's statement sees it, but a retry holding its row
    sends it back to pending: once the root's lock is granted, the cascade goes on below it.
    So it must have locked the subtree first, in the lock order (locking the root alone and
    then its children, it deadlocked with a charge on a child: the charge holds the child and
    waits for the root's roll-up)."""
    with Ledger(postgres_schema, busy_timeout=10) as ledger, Ledger(postgres_schema) as other:
        root = ledger.create_job(1, CONFIG, max_attempts=1)
        child = ledger.create_job(1, CONFIG, parent_id=root)
        job = ledger.claim("w", lease=300)
        assert job is not None and job.id == root
        ledger.fail(root, "boom", worker_id="w")
        retry = HeldOpen(other, lambda: other.retry(root), postgres_schema, root)
        cancel = Background(lambda: ledger.cancel(root, cascade=True))
        try:
            assert wait_for_a_lock_wait(postgres_schema), "the cascade never waited"
            assert not row_is_free(postgres_schema, JOB_ROW, child), "the child is not locked"
        finally:
            retry.finish()
        assert cancel.join() is True
        statuses = {ledger.get_job(j).status for j in (root, child)}  # type: ignore[union-attr]
        assert statuses == {JobStatus.CANCELLED}
        assert ledger.verify().ok


def test_a_batch_of_outcomes_locks_its_jobs_and_their_ancestors_first(
    ledger: Ledger, postgres_schema: str
) -> None:
    """A worker's outcomes in one transaction, two costed completions of siblings: one after
    the other, the first locked its job and then the parent (the cost's roll-up) and then
    waited for the second job, newer than that parent, which a cascade of the parent holds
    while it waits for the first: a deadlock. The batch locks every job and ancestor first,
    in the lock order, so waiting for the second job it holds neither the parent nor the
    counter."""
    parent = running(ledger, 1)
    older = running(ledger, 1, parent_id=parent)
    newer = running(ledger, 1, parent_id=parent)
    holder = RowHolder(postgres_schema, JOB_ROW, newer)
    calls = [
        lambda: ledger.complete(older, "ok", cost_cents=2, worker_id="w"),
        lambda: ledger.complete(newer, "ok", cost_cents=3, worker_id="w"),
    ]
    try:
        batch = Background(lambda: ledger._service.batch("outcomes", calls, [older, newer]))
        assert wait_for_a_lock_wait(postgres_schema), "the batch never waited for the job"
        assert row_is_free(postgres_schema, JOB_ROW, parent)
        assert row_is_free(postgres_schema, JOB_ROW, older)
        assert counter_is_free(postgres_schema)
    finally:
        holder.release()
    assert batch.join() == [None, None]
    assert ledger.get_job(parent).subtree_cost_cents == 5  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_retry_failed_locks_the_failed_jobs_before_it_appends(
    ledger: Ledger, postgres_schema: str
) -> None:
    """It read the failed jobs unlocked and wrote their rows after its appends: waiting for a
    row another transaction held, it held the log's counter (a deadlock with a command that
    held that row and waited for the counter). It locks them first now, and retries what is
    still failed once it holds them."""
    failed = []
    for _ in range(2):
        job_id = ledger.create_job(1, CONFIG, max_attempts=1)
        job = ledger.claim("w", lease=300)
        assert job is not None and job.id == job_id
        ledger.fail(job_id, "boom", worker_id="w")
        failed.append(job_id)
    holder = RowHolder(postgres_schema, JOB_ROW, failed[1])
    try:
        retry = Background(lambda: ledger.retry_failed())
        assert wait_for_a_lock_wait(postgres_schema), "the retry never waited for the job"
        assert counter_is_free(postgres_schema)
    finally:
        holder.release()
    assert retry.join() == 2
    assert {ledger.get_job(j).status for j in failed} == {JobStatus.PENDING}  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_a_child_created_while_a_cascade_waited_is_not_waited_for_after_its_ancestors(
    postgres_schema: str,
) -> None:
    """A transaction holding a job of the subtree creates a child under it while the cascade's
    lock statement waits; the cascade finds the child after the locks, when it holds the
    child's ancestors. Waiting for the child then (another transaction holds it: a worker that
    claimed it and charges it, waiting for its parent) was a deadlock. The cascade tries it
    without waiting, and, finding it held, runs again: its lock statement then takes the child
    first, in the lock order, holding none of its ancestors while it waits."""
    with Ledger(postgres_schema, busy_timeout=10) as ledger, Ledger(postgres_schema) as other:
        root = ledger.create_job(1, CONFIG)
        parent = ledger.create_job(1, CONFIG, parent_id=root)
        root_holder = RowHolder(postgres_schema, JOB_ROW, root)
        spawn = HeldOpen(  # it locks the parent
            other, lambda: other.create_job(1, CONFIG, parent_id=parent), postgres_schema, parent
        )
        cancel = Background(lambda: ledger.cancel(root, cascade=True))
        child_holder = None
        try:
            assert wait_for_a_lock_wait(postgres_schema), "the cascade never waited"
            child = spawn.finish()  # the child exists; the cascade holds the parent, waits for
            child_holder = RowHolder(postgres_schema, JOB_ROW, child)  # the root
            root_holder.release()  # the cascade's statement ends; it finds the child, held
            deadline = time.monotonic() + 30
            while not (  # a poll: run again, it waits for the child, holding no ancestor
                row_is_free(postgres_schema, JOB_ROW, root)
                and row_is_free(postgres_schema, JOB_ROW, parent)
            ):
                assert time.monotonic() < deadline, "the cascade kept the child's ancestors"
            assert wait_for_a_lock_wait(postgres_schema), "the cascade never waited for it"
            assert row_is_free(postgres_schema, JOB_ROW, parent)
        finally:
            spawn.go_on.set()
            root_holder.release()  # (again, if a step above failed: a no-op otherwise)
            if child_holder is not None:
                child_holder.release()
        assert cancel.join() is True
        statuses = {ledger.get_job(j).status for j in (root, parent, child)}  # type: ignore[union-attr]
        assert statuses == {JobStatus.CANCELLED}
        assert ledger.verify().ok
