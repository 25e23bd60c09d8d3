"""Group commit on PostgreSQL: threads on one `Ledger(url)` (and an `AsyncLedger`'s held
writes) share transactions on the writer connection, through the same `GroupCommit` core as
SQLite.

What is proved here, each by a test that fails without the promise:
- grouped commands commit in ONE transaction, each caller gets its own correct result, and
  the log is gap-free and verifies. Seen from the database (`Commits`): one COMMIT, before
  which the writer's transaction sees every event of the group and another connection none.
  The rows' ``xmin`` cannot show it: a row written inside a savepoint carries the
  subtransaction's id, so grouped commands show one ``xmin`` each, as do commands run one after
  another (the control, asserted as such);
- many threads (and 64 coroutines on an `AsyncLedger`) lose nothing acknowledged, and share
  transactions (no more COMMITs than commands; fewer with coroutines);
- a failing joiner fails alone and its neighbours commit together, for every kind of failure:
  a domain error from decide (InvalidTransition, JobNotFound), a PostgreSQL error raised while
  the command runs, and one that only arrives with the command's own sync at its end;
- a lone caller whose deferred write fails while others queued behind it is told nothing of
  it was written, and every queued caller commits, in a transaction without it;
- a lost race for an idempotency key (provoked deterministically with a second `Ledger` that
  takes the key while the first caller is held) is retried and answers the winner's job, as
  the first caller of a group and as a joiner; a deadlock (two `Ledger`s locking two rows in
  opposite orders) is broken by PostgreSQL and the aborted command runs again.

Grouping is forced, not hoped for: one thread's command is held inside its transaction (the
write lock held) by `Gate` until the other callers are counted in ``backend._writes._pending``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ledger import AsyncLedger, InvalidTransition, JobNotFound, Ledger, LedgerError, StorageError

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres.backend import PostgresBackend  # noqa: E402

CONFIG = {"role": "coder", "task": "postgres group commit"}
WAIT = 30.0  # seconds: the most any wait in these tests may last before it fails


# -- helpers ------------------------------------------------------------------------------------


def backend_of(ledger: Ledger) -> PostgresBackend:
    backend = ledger._backend
    assert isinstance(backend, PostgresBackend)
    return backend


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (a deadline, not a sleep that synchronises)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def queued(ledger: Ledger) -> int:
    """Callers whose command is published and not yet taken by a combiner."""
    return len(backend_of(ledger)._writes._pending)


class Gate:
    """Holds the next write command of one chosen thread inside its transaction, after its
    work ran (its writes still kept for the end) and with the write lock held, until `open`."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.thread: int | None = None
        backend = backend_of(ledger)
        original = backend.write

        def write(doing: str, work: Callable[[Any], Any]) -> Any:
            if threading.get_ident() != self.thread:
                return original(doing, work)
            self.thread = None  # once (a retry of the command runs ungated)

            def gated(tx: Any) -> Any:
                result = work(tx)
                self.entered.set()
                assert self.opened.wait(WAIT), "the gate was never opened"
                return result

            return original(doing, gated)

        monkeypatch.setattr(backend, "write", write)

    def open(self) -> None:
        self.opened.set()


class Caller(threading.Thread):
    """Runs one call in a thread of its own and keeps its result or error."""

    def __init__(self, fn: Callable[[], Any], gate: Gate | None = None) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.gate = gate
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.gate is not None:
            self.gate.thread = threading.get_ident()
        try:
            self.result = self.fn()
        except BaseException as e:
            self.error = e

    def finish(self) -> Any:
        self.join(WAIT)
        assert not self.is_alive(), "a caller never returned"
        return self.result


def led(
    ledger: Ledger, gate: Gate, leader: Callable[[], Any], others: list[Callable[[], Any]]
) -> tuple[Caller, list[Caller]]:
    """Start ``leader`` held at ``gate``, then ``others`` until all are queued for the write
    lock; the callers, not yet released (the test opens the gate)."""
    first = Caller(leader, gate)
    first.start()
    assert gate.entered.wait(WAIT)
    rest = [Caller(fn) for fn in others]
    for caller in rest:
        caller.start()
    wait_until(lambda: queued(ledger) == len(rest), f"{len(rest)} callers queued")
    return first, rest


def finish_all(callers: list[Caller]) -> None:
    for caller in callers:
        caller.finish()


def log_of(ledger: Ledger) -> dict[str, list[int]]:
    """Each job's versions in the log, checked gap-free (positions and versions)."""
    events = ledger.read_all()
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    versions: dict[str, list[int]] = defaultdict(list)
    for event in events:
        versions[event.job_id].append(event.version)
    for job_versions in versions.values():
        assert job_versions == list(range(1, len(job_versions) + 1))
    return dict(versions)


def head(ledger: Ledger) -> int:
    events = ledger.read_all()
    return events[-1].position if events else 0


def transactions(url: str, after: int) -> tuple[int, int]:
    """(events, distinct ``xmin``) after position ``after``, read on a plain connection of its
    own. A row written inside a savepoint carries the subtransaction's id, so a shared
    transaction shows one ``xmin`` per command too: this tells one transaction per command
    (no savepoints) from fewer; `Commits` proves a group is one transaction."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT xmin::text) FROM events WHERE position > %s",
            (after,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


class Commits:
    """Watches the writer's COMMITs from the database's side. Just before each COMMIT goes
    out, it counts the events after ``after`` that the writer's open transaction sees (its own
    rows included) and those a plain connection of its own sees (committed ones only). Events
    that one transaction sees before its COMMIT, nobody else sees then, and everybody sees
    after it, were written by that one transaction. (Their ``xmin`` cannot show it: a row
    written inside a savepoint carries its subtransaction's id, one per command.)"""

    def __init__(self, ledger: Ledger, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.url = url
        self.after = head(ledger)
        self.inside: list[int] = []
        self.outside: list[int] = []
        backend = backend_of(ledger)
        transactions_ = backend._transactions
        original = transactions_.commit
        count = "SELECT count(*) FROM events WHERE position > %s"

        def commit() -> None:
            mine = backend._conn.execute(count, (self.after,)).fetchone()
            with psycopg.connect(url, autocommit=True) as conn:
                theirs = conn.execute(count, (self.after,)).fetchone()
            self.inside.append(int(mine[0]) if mine else -1)
            self.outside.append(int(theirs[0]) if theirs else -1)
            original()

        monkeypatch.setattr(transactions_, "commit", commit)

    def one_transaction(self, events: int) -> None:
        """Exactly one COMMIT ran since, and it committed all ``events`` events after
        ``after``: its transaction held them all, nothing of them was visible before it."""
        assert (self.inside, self.outside) == ([events], [0])
        assert transactions(self.url, self.after)[0] == events


def count_commits(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """A list that grows by one entry at every COMMIT the writer sends."""
    commits: list[None] = []
    transactions_ = backend_of(ledger)._transactions
    original = transactions_.commit

    def commit() -> None:
        commits.append(None)
        original()

    monkeypatch.setattr(transactions_, "commit", commit)
    return commits


@pytest.fixture
def ledger(postgres_schema: str) -> Iterator[Ledger]:
    with Ledger(postgres_schema, durability="full") as opened:
        yield opened


# -- 1. one transaction for a group -------------------------------------------------------------


def test_grouped_commands_commit_in_one_transaction_each_with_its_own_result(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One command held inside its transaction until 7 others are queued: all 8 answer with
    their own results, the log is gap-free, and one COMMIT carries all 8 events (its
    transaction saw them all before it, another connection none). ``xmin`` differs per
    command in the group (savepoints) and, as the control, per command run one after another."""
    job_id = ledger.create_job(1, CONFIG)
    commits = Commits(ledger, postgres_schema, monkeypatch)
    gate = Gate(ledger, monkeypatch)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"leader": True}),
        [lambda n=n: ledger.create_job(2, {**CONFIG, "n": n}) for n in range(4)]  # type: ignore[misc]
        + [lambda n=n: ledger.log_event(job_id, "progress", {"n": n}) for n in range(3)],  # type: ignore[misc]
    )
    gate.open()
    finish_all([first, *rest])
    assert [c.error for c in [first, *rest]] == [None] * 8
    created = [c.result for c in rest[:4]]
    logged = sorted([first.result, *(c.result for c in rest[4:])])
    assert logged == [2, 3, 4, 5] and first.result == 2  # the leader ran first
    versions = log_of(ledger)
    assert versions[job_id] == [1, 2, 3, 4, 5]
    assert len(set(created)) == 4 and all(versions[new] == [1] for new in created)
    assert ledger.get_job(created[0]).config["n"] == 0  # type: ignore[union-attr]
    commits.one_transaction(8)
    assert transactions(postgres_schema, commits.after) == (8, 8)  # a savepoint each
    assert ledger.verify().ok

    commits.inside.clear()
    commits.outside.clear()
    control = commits.after = head(ledger)
    for n in range(4):  # one thread: each command its own transaction
        ledger.create_job(3, {**CONFIG, "n": n})
        ledger.log_event(job_id, "progress", {"alone": n})
    assert transactions(postgres_schema, control) == (8, 8)
    assert commits.outside == [0, 1, 2, 3, 4, 5, 6, 7]  # 8 COMMITs, one event in each
    assert [i - o for i, o in zip(commits.inside, commits.outside, strict=True)] == [1] * 8
    assert log_of(ledger)[job_id] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert ledger.verify().ok


# -- 2. many threads ----------------------------------------------------------------------------


def test_many_threads_lose_nothing_acknowledged_and_share_transactions(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 threads x 50 (create + log_event): every returned version is in the log exactly,
    verify is green, and no more COMMITs than commands ran (fewer when any grouping happened,
    which cannot be forced here); every command's rows carry an ``xmin`` of their own (its
    transaction's or its savepoint's), so distinct ``xmin`` never exceed the events."""
    commits = count_commits(ledger, monkeypatch)
    threads, rounds = 8, 50
    start = threading.Barrier(threads)
    acked: list[tuple[str, int]] = []
    acked_lock = threading.Lock()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            start.wait(WAIT)
            for i in range(rounds):
                job_id = ledger.create_job(n, {**CONFIG, "i": i})
                mine = [(job_id, 1), (job_id, ledger.log_event(job_id, "progress", {"i": i}))]
                with acked_lock:
                    acked.extend(mine)
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT * 2)
    assert not errors and not any(w.is_alive() for w in workers), errors
    assert len(acked) == threads * rounds * 2
    versions = log_of(ledger)
    assert sorted(acked) == sorted((job, v) for job, vs in versions.items() for v in vs)
    assert all(vs == [1, 2] for vs in versions.values())
    assert ledger.verify().ok
    events, xids = transactions(postgres_schema, 0)
    assert events == len(acked)
    assert 1 <= xids <= events
    assert 1 <= len(commits) <= events


# -- 3. a failing joiner fails alone ------------------------------------------------------------


def test_failing_joiners_fail_alone_and_their_neighbours_commit_in_one_transaction(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one shared transaction, joiners that fail each get their own error and leave
    nothing: InvalidTransition and JobNotFound from decide, a PostgreSQL error raised while
    the command runs (``SELECT 1/0`` fetched), one that only arrives with the command's own
    sync at its end (``SELECT 1/0`` kept for the end). The leader and the other joiners commit,
    in one transaction."""
    backend = backend_of(ledger)
    done = ledger.create_job(1, CONFIG)
    assert ledger.claim("w", lease=60) is not None
    ledger.complete(done, "done", "success", 0.0, 1, worker_id="w")
    other = ledger.create_job(1, CONFIG)
    commits = Commits(ledger, postgres_schema, monkeypatch)
    gate = Gate(ledger, monkeypatch)

    def at_once() -> Any:
        return backend.write("dividing now", lambda tx: tx.conn.execute("SELECT 1/0").fetchone())

    def at_the_end() -> Any:
        def work(tx: Any) -> str:
            tx._later.execute("SELECT 1/0")  # sent at the end, its error at the sync after
            return "queued"

        return backend.write("dividing at the end", work)

    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(other, "progress", {"leader": True}),
        [
            lambda: ledger.create_job(2, CONFIG),
            lambda: ledger.log_event(done, "progress", {"too late": True}),
            lambda: ledger.log_event("no-such-job", "progress", {}),
            at_once,
            at_the_end,
            lambda: ledger.log_event(other, "progress", {"kept": True}),
        ],
    )
    gate.open()
    finish_all([first, *rest])
    created, invalid, missing, now, later, kept = rest
    assert first.error is None and created.error is None and kept.error is None
    assert isinstance(invalid.error, InvalidTransition)
    assert isinstance(missing.error, JobNotFound)
    for failed, doing in ((now, "dividing now"), (later, "dividing at the end")):
        assert isinstance(failed.error, StorageError), failed.error
        message = str(failed.error)
        assert message.startswith(doing) and "DivisionByZero" in message, message
        assert isinstance(failed.error.__cause__, psycopg.errors.DivisionByZero)
    assert first.result == 2 and kept.result == 3
    versions = log_of(ledger)
    assert versions[other] == [1, 2, 3] and versions[created.result] == [1]
    assert versions[done] == [1, 2, 3]  # created, claimed, completed: nothing added
    payloads = [e.payload for e in ledger.job_events(other)[1:]]
    assert payloads == [{"leader": True}, {"kept": True}]
    commits.one_transaction(3)
    assert ledger.verify().ok
    assert ledger.log_event(other, "progress", {"after": True}) == 4  # the writer goes on


# -- 4. a lone caller's deferred failure --------------------------------------------------------


def test_a_lone_callers_deferred_failure_is_its_own_and_the_queued_callers_commit(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first caller (a lone caller's command, its errors deferred to its COMMIT) queues a
    failing write for the end and is held until 4 others are queued: it is flushed before they
    join, gets a LedgerError saying nothing of it was written, and the 4 commit together in a
    transaction without it."""
    backend = backend_of(ledger)
    job_id = ledger.create_job(1, CONFIG)
    commits = Commits(ledger, postgres_schema, monkeypatch)
    entered, release = threading.Event(), threading.Event()
    deferring: list[bool] = []

    def doomed(tx: Any) -> str:
        tx._later.execute("SELECT 1/0")  # sent at the end, its error left for the COMMIT
        deferring.append(backend._writes.deferring)
        entered.set()
        assert release.wait(WAIT)
        return "never acknowledged"

    first = Caller(lambda: backend.write("the doomed lone write", doomed))
    first.start()
    assert entered.wait(WAIT)
    rest = [
        Caller(lambda n=n: ledger.log_event(job_id, "progress", {"n": n}))  # type: ignore[misc]
        for n in range(3)
    ] + [Caller(lambda: ledger.create_job(2, CONFIG))]
    for caller in rest:
        caller.start()
    wait_until(lambda: queued(ledger) == 4, "4 callers queued")
    release.set()
    finish_all([first, *rest])
    assert deferring == [True]  # it ran as the lone caller, through `_first`
    assert isinstance(first.error, LedgerError) and first.result is None
    message = str(first.error)
    assert message.startswith("the doomed lone write") and "DivisionByZero" in message
    assert "nothing of it was written" in message
    assert [c.error for c in rest] == [None] * 4
    assert sorted(c.result for c in rest[:3]) == [2, 3, 4]
    versions = log_of(ledger)
    assert versions[job_id] == [1, 2, 3, 4] and versions[rest[3].result] == [1]
    commits.one_transaction(4)
    assert ledger.verify().ok


# -- 5. retries through the group path ----------------------------------------------------------


def test_a_lost_idempotency_race_of_a_lone_caller_is_retried_while_others_queue(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first caller creates with key K and is held (its insert kept for the end) while a
    second `Ledger` creates and commits a job with K, and 3 callers queue behind it: its
    deferred insert hits ``jobs_idempotency`` when flushed, the command runs again and answers
    the winner's job; the queued callers commit; nothing is written twice."""
    gate = Gate(ledger, monkeypatch)
    job_id = ledger.create_job(1, CONFIG)
    first = Caller(lambda: ledger.create_job(1, CONFIG, idempotency_key="K"), gate)
    first.start()
    assert gate.entered.wait(WAIT)
    with Ledger(postgres_schema) as rival:
        winner = rival.create_job(9, {"rival": True}, idempotency_key="K")
    rest = [
        Caller(lambda n=n: ledger.log_event(job_id, "progress", {"n": n}))  # type: ignore[misc]
        for n in range(3)
    ]
    for caller in rest:
        caller.start()
    wait_until(lambda: queued(ledger) == 3, "3 callers queued")
    gate.open()
    finish_all([first, *rest])
    assert first.error is None and first.result == winner
    assert [c.error for c in rest] == [None] * 3
    assert sorted(c.result for c in rest) == [2, 3, 4]
    assert log_of(ledger) == {job_id: [1, 2, 3, 4], winner: [1]}
    assert ledger.get_job(winner).chat_id == 9  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_a_lost_idempotency_race_of_a_joiner_is_retried_and_its_neighbours_commit(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joiner creating with key K ran (found no K, its insert kept for its end) before a
    second `Ledger` committed a job with K; its own sync hits ``jobs_idempotency``, it is
    rolled back to its savepoint alone, runs again and answers the winner's job; its
    neighbours commit together. (The leader writes nothing: a command that appended holds the
    log's head, and the rival could not commit until the group did.)"""
    job_id = ledger.create_job(1, CONFIG)
    backend = backend_of(ledger)
    gate = Gate(ledger, monkeypatch)
    gated_write = backend.write
    joiner_entered, joiner_release = threading.Event(), threading.Event()
    joiner_thread: list[int] = []

    def write(doing: str, work: Callable[[Any], Any]) -> Any:
        if not joiner_thread or threading.get_ident() != joiner_thread[0]:
            return gated_write(doing, work)
        joiner_thread.clear()  # once: the retry runs unheld

        def held(tx: Any) -> Any:
            result = work(tx)
            joiner_entered.set()
            assert joiner_release.wait(WAIT)
            return result

        return gated_write(doing, held)

    monkeypatch.setattr(backend, "write", write)

    def keyed() -> str:
        joiner_thread.append(threading.get_ident())
        return ledger.create_job(1, CONFIG, idempotency_key="K")

    before = head(ledger)
    first, rest = led(
        ledger,
        gate,
        lambda: backend.write("leading", lambda tx: "led"),
        [keyed, lambda: ledger.log_event(job_id, "progress", {"after": True})],
    )
    gate.open()
    assert joiner_entered.wait(WAIT)
    with Ledger(postgres_schema) as rival:
        winner = rival.create_job(9, {"rival": True}, idempotency_key="K")
    joiner_release.set()
    finish_all([first, *rest])
    keyed_caller, after = rest
    assert [c.error for c in (first, keyed_caller, after)] == [None] * 3
    assert first.result == "led" and after.result == 2
    assert keyed_caller.result == winner
    assert log_of(ledger) == {job_id: [1, 2], winner: [1]}
    assert ledger.get_job(winner).chat_id == 9  # type: ignore[union-attr]
    assert transactions(postgres_schema, before) == (2, 2)  # the rival's, and the group's
    assert ledger.verify().ok


def test_a_deadlock_is_broken_and_the_aborted_command_runs_again(
    ledger: Ledger, postgres_schema: str
) -> None:
    """Two ledgers' writes lock two job rows in opposite orders (each waits for the other):
    PostgreSQL aborts one (DeadlockDetected), that command runs again through the group
    path, and both return their results."""
    a, b = ledger.create_job(1, CONFIG), ledger.create_job(1, CONFIG)
    lock = "SELECT id FROM jobs WHERE id = %s FOR UPDATE"
    runs: list[str] = []
    a_locked, b_locked = threading.Event(), threading.Event()

    def waiting_for_a_lock() -> bool:
        with psycopg.connect(postgres_schema, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND query LIKE 'SELECT id FROM jobs %'"
            ).fetchone()
        return row is not None and row[0] >= 1

    with Ledger(postgres_schema) as rival:

        def first_a(tx: Any) -> str:
            runs.append("a")
            tx.conn.execute(lock, (a,)).fetchone()
            a_locked.set()
            if len(runs) <= 2:  # a first run: wait until the other holds b and waits on a
                assert b_locked.wait(WAIT)
                wait_until(waiting_for_a_lock, "the rival waiting for a")
            tx.conn.execute(lock, (b,)).fetchone()
            return "a then b"

        def first_b(tx: Any) -> str:
            runs.append("b")
            tx.conn.execute(lock, (b,)).fetchone()
            b_locked.set()
            tx.conn.execute(lock, (a,)).fetchone()
            return "b then a"

        ours = Caller(lambda: backend_of(ledger).write("a then b", first_a))
        ours.start()
        assert a_locked.wait(WAIT)
        theirs = Caller(lambda: backend_of(rival).write("b then a", first_b))
        theirs.start()
        finish_all([ours, theirs])
    assert ours.error is None and theirs.error is None, (ours.error, theirs.error)
    assert (ours.result, theirs.result) == ("a then b", "b then a")
    assert sorted(runs) in (["a", "a", "b"], ["a", "b", "b"])  # one ran again
    assert log_of(ledger) == {a: [1], b: [1]}
    assert ledger.verify().ok


# -- 6. AsyncLedger -----------------------------------------------------------------------------


def test_64_coroutines_on_an_async_ledger_lose_nothing_and_share_transactions(
    postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 coroutines each create a job and log on it through one `AsyncLedger(url)`: every
    awaited result is in the log, verify is green, and fewer COMMITs than commands ran (the
    ledger's thread runs the coroutines' queued commands in shared transactions)."""
    commits: list[list[None]] = []

    async def main() -> list[tuple[str, int]]:
        async with AsyncLedger(postgres_schema, durability="full") as lg:
            commits.append(count_commits(lg.ledger, monkeypatch))

            async def one(n: int) -> list[tuple[str, int]]:
                job_id = await lg.create_job(n, {**CONFIG, "n": n})
                version = await lg.log_event(job_id, "progress", {"n": n})
                return [(job_id, 1), (job_id, version)]

            done = await asyncio.gather(*(one(n) for n in range(64)))
        return [pair for pairs in done for pair in pairs]

    acked = asyncio.run(main())
    assert len(acked) == 128
    with Ledger(postgres_schema) as ledger:
        versions = log_of(ledger)
        assert sorted(acked) == sorted((job, v) for job, vs in versions.items() for v in vs)
        assert len(versions) == 64 and all(vs == [1, 2] for vs in versions.values())
        assert ledger.verify().ok
    assert transactions(postgres_schema, 0)[0] == 128
    assert 1 <= len(commits[0]) < 128  # shared
