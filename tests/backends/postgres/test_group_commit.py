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
  opposite orders) is broken by PostgreSQL and the aborted command runs again; inside
  `held_writes` (AsyncLedger), a deadlocked command is run again after the open transaction
  commits, in a new one (in the same one it would deadlock again every time);
- a COMMIT that reached the server and committed, whose answer was lost with the connection (a
  Unix-socket proxy cuts it), tells its caller it may have committed, never that nothing was
  written; the event is in the log and the ledger reconnects and goes on;
- an interrupt (KeyboardInterrupt) in a lone caller's flush before queued callers join reaches
  that caller, leaves the write lock free, and the queued callers commit; an interrupt in a
  group's COMMIT before it was sent tells every joiner nothing of it was written (and nothing
  is), one after it was sent tells them it may have committed (the connection is closed, so
  nobody learns which), and the log stays whole either way;
- a lone caller whose transaction fails for good is told nothing was written, and not to retry.

Grouping is forced, not hoped for: one thread's command is held inside its transaction (the
write lock held) by `Gate` until the other callers are counted in ``backend._writes._pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

from ledger import AsyncLedger, InvalidTransition, JobNotFound, Ledger, LedgerError, StorageError

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres.backend import PostgresBackend  # noqa: E402
from tests.group_support import (  # noqa: E402
    WAIT,
    Gate,
    acknowledged_from_threads,
    log_holds_exactly,
    log_of,
    queued,
    wait_until,
)

CONFIG = {"role": "coder", "task": "postgres group commit"}


# -- helpers ------------------------------------------------------------------------------------


def backend_of(ledger: Ledger) -> PostgresBackend:
    backend = ledger._backend
    assert isinstance(backend, PostgresBackend)
    return backend


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
    """Start ``leader`` held at ``gate``, then ``others``, each queued for the write lock
    before the next starts (so they queue, and run, in the order given: started together, two
    threads reached the queue in either order now and then); the callers, not yet released
    (the test opens the gate)."""
    first = Caller(leader, gate)
    first.start()
    assert gate.entered.wait(WAIT)
    rest = [Caller(fn) for fn in others]
    for count, caller in enumerate(rest, start=1):
        caller.start()
        wait_until(lambda n=count: queued(ledger) == n, f"{count} callers queued")
    return first, rest


def finish_all(callers: list[Caller]) -> None:
    for caller in callers:
        caller.finish()


def waiting_on_a_lock(url: str, query: str) -> bool:
    """Whether a session of the database waits for a lock in a statement ``LIKE query``."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND query LIKE %s",
            (query,),
        ).fetchone()
    return row is not None and row[0] >= 1


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
    # A lone command's write is held for its COMMIT (one statement with the checkpoint): the
    # writer itself sees nothing of it before then.
    assert commits.inside == commits.outside
    assert log_of(ledger)[job_id] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert ledger.verify().ok


# -- 2. many threads ----------------------------------------------------------------------------


def test_many_threads_lose_nothing_acknowledged_and_share_transactions(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 threads x 50 (create + log_event): every returned version is in the log exactly,
    verify is green, and commits were shared (fewer COMMITs than commands, as on SQLite: with
    8 threads writing at once some always queue behind a running command); every command's
    event carries an ``xmin`` of its own (its transaction's or its savepoint's)."""
    commits = count_commits(ledger, monkeypatch)
    threads, rounds = 8, 50

    def calls(n: int, i: int) -> list[tuple[str, int]]:
        job_id = ledger.create_job(n, {**CONFIG, "i": i})
        return [(job_id, 1), (job_id, ledger.log_event(job_id, "progress", {"i": i}))]

    acked = acknowledged_from_threads(threads, rounds, calls)
    assert len(acked) == threads * rounds * 2
    versions = log_holds_exactly(ledger, acked)
    assert all(vs == [1, 2] for vs in versions.values())
    assert ledger.verify().ok
    events, xids = transactions(postgres_schema, 0)
    assert events == len(acked)
    assert xids == events
    assert 0 < len(commits) < events  # shared


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

    def write(doing: str, work: Callable[[Any], Any], **kwargs: Any) -> Any:
        if not joiner_thread or threading.get_ident() != joiner_thread[0]:
            return gated_write(doing, work, **kwargs)
        joiner_thread.clear()  # once: the retry runs unheld

        def held(tx: Any) -> Any:
            result = work(tx)
            joiner_entered.set()
            assert joiner_release.wait(WAIT)
            return result

        return gated_write(doing, held, **kwargs)

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
        return waiting_on_a_lock(postgres_schema, "SELECT id FROM jobs %")

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


# -- 7. a COMMIT's answer lost, interrupts, a lone caller's words ---------------------------------


class AnswerLosingProxy:
    """A Unix-socket proxy in front of the server: connections through ``url`` reach it by
    way of this process. `lose_answer` makes the FIRST connection accepted (a `Ledger`'s
    writer: it connects before its readers' pool) forward its next COMMIT, drop every answer
    from then on, wait until ``committed()`` holds (the server ran the COMMIT, seen on a
    connection of its own) and then cut the connection: the COMMIT went through and the
    writer never hears it did."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        port = int(query.get("port") or parts.port or 5432)
        self._server = os.path.join(query.get("host") or parts.hostname or "", f".s.PGSQL.{port}")
        self.directory = tempfile.mkdtemp(prefix="pgproxy-", dir="/tmp")  # short socket path
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(os.path.join(self.directory, f".s.PGSQL.{port}"))
        self._listener.listen()
        query["host"] = self.directory
        self.url = urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))
        self._links = 0
        self._committed: Callable[[], bool] | None = None
        self.muted = threading.Event()  # the writer's answers are dropped from here on
        self.cut = threading.Event()  # the writer's connection was cut after its COMMIT
        threading.Thread(target=self._serve, daemon=True).start()

    def lose_answer(self, committed: Callable[[], bool]) -> None:
        self._committed = committed

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.socket(socket.AF_UNIX)
            server.connect(self._server)
            writer = self._links == 0
            self._links += 1
            threading.Thread(target=self._up, args=(client, server, writer), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, writer), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, writer: bool) -> None:
        """Client to server; the writer's COMMIT, once armed, is the last thing forwarded."""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                committed = self._committed
                if writer and committed is not None and b"COMMIT" in data:
                    self._committed = None
                    self.muted.set()  # before the server can answer
                    server.sendall(data)
                    wait_until(committed, "the server to run the COMMIT")
                    self.cut.set()
                    for end in (client, server):
                        end.shutdown(socket.SHUT_RDWR)
                    return
                server.sendall(data)

    def _down(self, server: socket.socket, client: socket.socket, writer: bool) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if writer and self.muted.is_set():
                    continue  # the answer is lost
                client.sendall(data)

    def close(self) -> None:
        self._listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def events_of(url: str, job_id: str) -> int:
    """The job's committed events, read on a plain connection of its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE job_id = %s", (job_id,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_commit_whose_answer_is_lost_may_have_committed_and_the_ledger_goes_on(
    postgres_schema: str,
) -> None:
    """A lone caller's COMMIT reaches the server and commits, and the connection is cut before
    its answer comes back (a proxy): the caller gets a StorageError saying its transaction may
    have committed (never "nothing of it was written": a blind retry would write it twice);
    the event is in fact in the log; the next write reconnects and gets the next version."""
    proxy = AnswerLosingProxy(postgres_schema)
    try:
        with Ledger(proxy.url, durability="full") as ledger:
            job_id = ledger.create_job(1, CONFIG)
            proxy.lose_answer(lambda: events_of(postgres_schema, job_id) == 2)
            with pytest.raises(StorageError) as raised:
                ledger.log_event(job_id, "progress", {"answer": "lost"})
            assert proxy.cut.is_set()
            message = str(raised.value)
            assert message.startswith("logging an event"), message
            assert "may have committed" in message, message
            assert "nothing of it was written" not in message and "retry it" not in message
            cause = raised.value.__cause__
            assert isinstance(cause, psycopg.OperationalError) and cause.sqlstate is None
            events = ledger.job_events(job_id)
            assert [e.payload for e in events[1:]] == [{"answer": "lost"}]  # it committed
            assert ledger.log_event(job_id, "progress", {"after": True}) == 3  # reconnected
            assert log_of(ledger) == {job_id: [1, 2, 3]}
            assert ledger.verify().ok
    finally:
        proxy.close()


def test_an_interrupt_in_the_lone_callers_flush_frees_the_lock_and_the_queued_commit(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt (as a signal handler raises it in psycopg's wait) while `_first`
    flushes the lone caller's command before 4 queued callers join it: that caller gets the
    interrupt and nothing of its command is written; the queued callers all return, their
    events committed; the write lock is free afterwards and the next write works."""
    backend = backend_of(ledger)
    job_id = ledger.create_job(1, CONFIG)
    transactions_ = backend._transactions
    flush = transactions_.flush
    interrupted: list[None] = []

    def interrupted_flush() -> None:
        flush()
        if not interrupted:
            interrupted.append(None)
            raise KeyboardInterrupt

    monkeypatch.setattr(transactions_, "flush", interrupted_flush)
    gate = Gate(ledger, monkeypatch)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"interrupted": True}),
        [lambda n=n: ledger.log_event(job_id, "progress", {"n": n}) for n in range(3)]  # type: ignore[misc]
        + [lambda: ledger.create_job(2, CONFIG)],
    )
    gate.open()
    first.finish()
    assert interrupted == [None]
    assert isinstance(first.error, KeyboardInterrupt), first.error
    # The test's own thread (alive throughout, so no ident of a finished thread it could
    # share with the interrupted caller's) takes the lock: nobody kept it.
    assert backend._lock.acquire(timeout=WAIT), "the write lock was never let go"
    backend._lock.release()
    finish_all(rest)
    assert [c.error for c in rest] == [None] * 4
    assert sorted(c.result for c in rest[:3]) == [2, 3, 4]
    versions = log_of(ledger)
    assert versions == {job_id: [1, 2, 3, 4], rest[3].result: [1]}
    payloads = [e.payload for e in ledger.job_events(job_id)]
    assert {"interrupted": True} not in payloads
    assert ledger.log_event(job_id, "progress", {"after": True}) == 5
    assert ledger.verify().ok


def group_behind_a_gate(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, job_id: str
) -> tuple[Caller, list[Caller]]:
    """A leader's log_event held at a gate until 2 more log_events and a create are queued
    (the leader then combines them into its transaction and commits); all finished."""
    gate = Gate(ledger, monkeypatch)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"n": 0}),
        [lambda n=n: ledger.log_event(job_id, "progress", {"n": n}) for n in (1, 2)]  # type: ignore[misc]
        + [lambda: ledger.create_job(2, {**CONFIG, "joiner": True})],
    )
    gate.open()
    finish_all([first, *rest])
    return first, rest


def test_an_interrupt_before_a_groups_commit_is_sent_tells_the_joiners_nothing_was_written(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt in the combiner's `commit`, before the COMMIT went out: the joiners
    (whose commands ran) are each told nothing of their command was written, and none of
    their events is in the log; the interrupt reaches the combining caller; the ledger goes
    on at the right versions."""
    job_id = ledger.create_job(1, CONFIG)
    transactions_ = backend_of(ledger)._transactions
    commit = transactions_.commit
    interrupted: list[None] = []

    def interrupted_commit() -> None:
        if not interrupted:
            interrupted.append(None)
            raise KeyboardInterrupt
        commit()

    monkeypatch.setattr(transactions_, "commit", interrupted_commit)
    first, rest = group_behind_a_gate(ledger, monkeypatch, job_id)
    assert interrupted == [None]
    assert isinstance(first.error, KeyboardInterrupt), first.error
    for caller in rest:
        assert isinstance(caller.error, LedgerError), (caller.error, caller.result)
        message = str(caller.error)
        assert "nothing of it was written" in message and "may have" not in message, message
    assert log_of(ledger) == {job_id: [1]}  # the joiner's create is not there either
    assert ledger.log_event(job_id, "progress", {"after": True}) == 2
    assert log_of(ledger) == {job_id: [1, 2]}
    assert ledger.verify().ok


def test_an_interrupt_after_a_groups_commit_was_sent_says_it_may_have_committed(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt while the combiner waits for its COMMIT's answer (the COMMIT sent):
    nobody can tell what became of it, so each joiner is told it may have committed (not that
    nothing was written); the interrupt reaches the combining caller; the log then holds the
    whole group or none of it, verifies, and the ledger (reconnecting) goes on gap-free."""
    job_id = ledger.create_job(1, CONFIG)
    transactions_ = backend_of(ledger)._transactions
    commit, sync = transactions_.commit, transactions_.sync
    committing: list[bool] = []  # inside `commit` now (after its COMMIT's execute, at its sync)
    interrupted: list[bool] = []

    def in_commit() -> None:
        committing.append(True)
        try:
            commit()
        finally:
            committing.pop()

    def interrupted_sync() -> None:
        if committing and not interrupted:
            interrupted.append(transactions_.committing)
            raise KeyboardInterrupt
        sync()

    monkeypatch.setattr(transactions_, "commit", in_commit)
    monkeypatch.setattr(transactions_, "sync", interrupted_sync)
    first, rest = group_behind_a_gate(ledger, monkeypatch, job_id)
    assert isinstance(first.error, KeyboardInterrupt), first.error
    for caller in rest:
        assert isinstance(caller.error, LedgerError), (caller.error, caller.result)
        message = str(caller.error)
        assert "may have committed" in message, message
        assert "nothing of it was written" not in message, message
    assert interrupted == [True]  # raised with the COMMIT sent, its answer not read
    versions = log_of(ledger)  # gap-free, whatever it holds
    logged = len(versions[job_id]) - 1
    created = [job for job in versions if job != job_id]
    assert (logged, len(created)) in ((0, 0), (3, 1)), versions  # the whole group, or none
    assert ledger.verify().ok
    assert ledger.log_event(job_id, "progress", {"after": True}) == logged + 2
    assert log_of(ledger)[job_id] == list(range(1, logged + 3))
    assert ledger.verify().ok


def test_a_lone_write_whose_transaction_fails_is_not_told_to_retry(ledger: Ledger) -> None:
    """A lone caller's transaction fails for good at its COMMIT (a deferred ``SELECT 1/0``):
    its error says nothing of it was written, and not "retry it" (that advice is for a caller
    whose transaction another command lost; this one fails the same way every time)."""
    backend = backend_of(ledger)
    job_id = ledger.create_job(1, CONFIG)
    with pytest.raises(StorageError) as raised:
        backend.write("the lone write", lambda tx: tx._later.execute("SELECT 1/0"))
    message = str(raised.value)
    assert message.startswith("the lone write") and "DivisionByZero" in message, message
    assert "nothing of it was written" in message, message
    assert "retry" not in message, message
    assert isinstance(raised.value.__cause__, psycopg.errors.DivisionByZero)
    assert ledger.log_event(job_id, "progress", {"after": True}) == 2
    assert log_of(ledger) == {job_id: [1, 2]}


def with_options(url: str, options: str) -> str:
    """``url`` with more server settings in its ``options`` (``-c name=value``)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} {options}".strip()
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def test_a_deadlocked_command_inside_held_is_retried_after_the_open_transaction_commits(
    postgres_schema: str,
) -> None:
    """Inside `held_writes` (AsyncLedger's write path) an earlier command appended (the open
    transaction holds the log's head). A rival `Ledger` locks job X and waits for the head to
    append; the block's next command locks X: a deadlock, and PostgreSQL aborts the block's
    command (its ``deadlock_timeout`` is the shorter). Run again in the same transaction it would
    deadlock again, every time; it is retried after the open transaction commits (the earlier
    command's event durable, the rival goes on), in a new one: the block's commands span two
    transactions, and every event is in the log once, the rival's before the retried one.

    (A lost idempotency race, as for a joiner above, cannot be provoked here: the rival's create
    waits for the head in its event INSERT, before it inserts its job row with the key, so it
    can neither commit the key nor hold it while the block's transaction is open.)"""
    ours_url = with_options(postgres_schema, "-cdeadlock_timeout=50ms")
    rivals_url = with_options(postgres_schema, f"-cdeadlock_timeout={int(WAIT * 4)}s")
    with Ledger(ours_url, durability="full") as ledger, Ledger(rivals_url) as rival:
        backend = backend_of(ledger)
        a, x = ledger.create_job(1, CONFIG), ledger.create_job(1, CONFIG)
        before = head(ledger)

        def rival_waiting_for_the_head() -> bool:
            return waiting_on_a_lock(postgres_schema, "%INSERT INTO events %")

        with backend.held_writes() as joined:
            assert ledger.log_event(a, "progress", {"earlier": True}) == 2  # holds the head
            theirs = Caller(lambda: rival.log_event(x, "progress", {"rival": True}))
            theirs.start()  # locks X (load_job), then waits for the head at its COMMIT
            wait_until(rival_waiting_for_the_head, "the rival waiting for the log's head")
            ours = ledger.log_event(x, "progress", {"ours": True})  # locks X: the deadlock
            assert transactions(postgres_schema, before)[0] == 2  # earlier's, and the rival's
        theirs.finish()
    assert theirs.error is None and theirs.result == 2
    assert ours == 3  # run again after the rival committed
    assert len({id(group) for group in joined}) == 2  # the block's commands: two transactions
    assert joined[0].failure is None and joined[-1].failure is None
    with Ledger(postgres_schema) as reopened:
        assert log_of(reopened) == {a: [1, 2], x: [1, 2, 3]}
        assert [e.payload for e in reopened.job_events(x)[1:]] == [{"rival": True}, {"ours": True}]
        assert reopened.verify().ok
