"""Group commit on SQLite (issue 17): threads on one `Ledger` share transactions and COMMITs.

What is proved here, each by a test that fails without the promise: every call that returned
is in the log, gap-free; one COMMIT carries every command waiting at that moment; nobody is
answered before that COMMIT; a failing command fails alone (its savepoint), first or joiner; a
COMMIT that fails loses the whole group and tells every caller in it, and the ledger goes on
at the right positions; a lone caller commits alone and never waits; ``:memory:`` and read-only
ledgers keep working with group commit off; closing commits an open group first; an interrupt
(KeyboardInterrupt) right after a group's COMMIT ran tells every joiner it succeeded (and it
did, the commit counted before any returns), one right before it ran tells them nothing was
written (and nothing is), and the interrupt reaches the combining caller either way.

Grouping is forced, not hoped for: one thread's command is held inside its transaction (the
write lock held) by `Gate` until the other callers are counted as waiting for the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from ledger import (
    InvalidTransition,
    JobNotFound,
    Ledger,
    LedgerError,
    StorageError,
)
from ledger.backends.sqlite.backend import SqliteBackend
from tests.group_support import (
    WAIT,
    Gate,
    acknowledged_from_threads,
    log_holds_exactly,
    log_of,
    queued,
    wait_until,
)

CONFIG = {"role": "coder", "task": "group commit"}


# -- helpers ------------------------------------------------------------------------------------


def backend_of(ledger: Ledger) -> SqliteBackend:
    backend = ledger._backend
    assert isinstance(backend, SqliteBackend)
    return backend


class Commits:
    """Counts the COMMITs the write connection runs (an APSW commit hook); ``veto`` makes
    the next ``veto`` of them roll back instead; ``at_commit`` runs inside each."""

    def __init__(self, ledger: Ledger) -> None:
        self.count = 0
        self.veto = 0
        self.vetoed = 0
        self.at_commit: Callable[[], None] | None = None
        backend_of(ledger)._conn.set_commit_hook(self._hook)

    def _hook(self) -> bool:
        self.count += 1
        if self.at_commit is not None:
            self.at_commit()
        if self.veto:
            self.veto -= 1
            self.vetoed += 1
            return True
        return False


class Caller(threading.Thread):
    """Runs one call in a thread of its own and keeps its result or error, and what the
    backend's commit counter said the moment the call returned."""

    def __init__(self, fn: Callable[[], Any], ledger: Ledger, gate: Gate | None = None) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.ledger = ledger
        self.gate = gate
        self.result: Any = None
        self.error: BaseException | None = None
        self.commits_seen: int | None = None
        self.returned = threading.Event()

    def run(self) -> None:
        if self.gate is not None:
            self.gate.thread = threading.get_ident()
        try:
            self.result = self.fn()
        except BaseException as e:
            self.error = e
        self.commits_seen = backend_of(self.ledger)._commits
        self.returned.set()

    def finish(self) -> Any:
        self.join(WAIT)
        assert not self.is_alive(), "a caller never returned"
        return self.result


def led(ledger: Ledger, gate: Gate, leader: Callable[[], Any], others: list[Callable[[], Any]]):
    """Start ``leader`` held at ``gate``, then ``others`` until all are waiting for the write
    lock; the callers, not yet released (the caller opens the gate)."""
    first = Caller(leader, ledger, gate)
    first.start()
    assert gate.entered.wait(WAIT)
    rest = [Caller(fn, ledger) for fn in others]
    for caller in rest:
        caller.start()
    wait_until(lambda: queued(ledger) == len(rest), f"{len(rest)} callers waiting for the lock")
    return first, rest


def log_behind_one(ledger: Ledger, gate: Gate, job_id: str, count: int) -> list[Caller]:
    """``count`` callers logging on ``job_id``: the first held at ``gate`` until the others
    are queued, then let go; returns them once all answered, each without an error, their
    versions the next ``count`` ones."""
    before = ledger.get_job(job_id).version  # type: ignore[union-attr]
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"n": 0}),
        [lambda n=n: ledger.log_event(job_id, "progress", {"n": n}) for n in range(1, count)],  # type: ignore[misc]
    )
    gate.open()
    callers = [first, *rest]
    results = sorted(c.finish() for c in callers)
    assert [c.error for c in callers] == [None] * count
    assert results == list(range(before + 1, before + count + 1))
    return callers


@pytest.fixture
def file_ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.db", durability="full") as opened:
        yield opened


# -- 1. many threads ----------------------------------------------------------------------------


def test_many_threads_lose_nothing_acknowledged_and_share_commits(file_ledger: Ledger) -> None:
    """16 threads creating jobs and logging events at FULL durability: every call that returned
    is in the log exactly (versions and positions gap-free), verify is green, and commits were
    shared (fewer COMMITs than commands)."""
    ledger = file_ledger
    threads, rounds = 16, 8
    commits = Commits(ledger)

    def calls(n: int, i: int) -> list[tuple[str, int]]:
        job_id = ledger.create_job(n, {**CONFIG, "i": i})
        mine = [(job_id, 1)]
        mine.append((job_id, ledger.log_event(job_id, "progress", {"i": i})))
        mine.append((job_id, ledger.log_event(job_id, "tool_call", {"n": n})))
        job = ledger.get_job(job_id)  # a read after the acknowledgement sees it all
        assert job is not None and job.version == 3
        return mine

    acked = acknowledged_from_threads(threads, rounds, calls)
    commands = threads * rounds * 3
    assert len(acked) == commands
    versions = log_holds_exactly(ledger, acked)
    assert all(vs == [1, 2, 3] for vs in versions.values())
    assert ledger.verify().ok
    assert 0 < commits.count < commands  # shared


# -- 2. deterministic grouping ------------------------------------------------------------------


def test_one_commit_carries_every_waiting_command_and_nobody_returns_before_it(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one command held inside its transaction until 7 others wait for the lock: exactly
    one COMMIT carries all 8, and no caller returned before it (each saw the commit counted)."""
    ledger = file_ledger
    job_id = ledger.create_job(1, CONFIG)
    backend = backend_of(ledger)
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger)
    before = backend._commits
    returned_at_commit: list[int] = []
    callers: list[Caller] = []
    commits.at_commit = lambda: returned_at_commit.append(sum(c.returned.is_set() for c in callers))
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"leader": True}),
        [lambda n=n: ledger.create_job(2, {**CONFIG, "n": n}) for n in range(7)],  # type: ignore[misc]
    )
    callers.extend([first, *rest])
    assert not any(c.returned.is_set() for c in callers)
    assert commits.count == 0
    gate.open()
    results = [c.finish() for c in callers]
    assert [c.error for c in callers] == [None] * 8
    assert commits.count == 1 and backend._commits == before + 1
    assert returned_at_commit == [0]  # nobody was answered before the COMMIT
    assert all(c.commits_seen == before + 1 for c in callers)
    versions = log_of(ledger)
    assert results[0] == 2 and versions[job_id] == [1, 2]
    assert all(versions[new] == [1] for new in results[1:])
    assert ledger.verify().ok


def test_a_full_group_commits_without_waiting_for_more(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group holds ``MAX_GROUP`` commands at most: with 2 and five callers (one held until
    the four others wait), the groups are 2, 2 and 1 commands: three COMMITs, all durable."""
    ledger = file_ledger
    job_id = ledger.create_job(1, CONFIG)
    monkeypatch.setattr("ledger.backends.group.MAX_GROUP", 2)
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger)
    log_behind_one(ledger, gate, job_id, 5)
    assert commits.count == 3
    assert log_of(ledger) == {job_id: [1, 2, 3, 4, 5, 6]}
    assert ledger.verify().ok


def test_backend_write_from_threads_shares_one_commit(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same at the backend's own seam: `SqliteBackend.write` calls whose ``work`` is bare
    (the first blocks on an Event until the others are queued) share one COMMIT, and each
    gets its own result."""
    ledger = file_ledger
    backend = backend_of(ledger)
    commits = Commits(ledger)
    entered, release = threading.Event(), threading.Event()

    def blocking(tx: Any) -> str:
        entered.set()
        assert release.wait(WAIT)
        return "first"

    first = Caller(lambda: backend.write("blocking", blocking), ledger)
    first.start()
    assert entered.wait(WAIT)
    rest = [
        Caller(lambda n=n: backend.write("joining", lambda tx: (n, tx.head())), ledger)  # type: ignore[misc]
        for n in range(5)
    ]
    for caller in rest:
        caller.start()
    wait_until(lambda: queued(ledger) == 5, "5 writers waiting")
    release.set()
    assert first.finish() == "first"
    assert sorted(c.finish()[0] for c in rest) == list(range(5))
    assert commits.count == 1


# -- 3. a failing command fails alone -----------------------------------------------------------


def test_failing_joiners_fail_alone_and_their_neighbours_commit(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one shared group, joiners that fail (InvalidTransition, JobNotFound, a plain exception
    after appending, an SQLite error) each get their own error and leave nothing; the leader and
    the other joiners commit, in one COMMIT."""
    ledger = file_ledger
    backend = backend_of(ledger)
    pending = ledger.create_job(1, CONFIG)
    other = ledger.create_job(1, CONFIG)
    boom_gate = Gate(ledger, monkeypatch)  # wraps write first: raises for its chosen thread
    boom_gate.fail = RuntimeError("boom after append")
    boom_gate.open()
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger)

    def boom() -> int:
        boom_gate.thread = threading.get_ident()
        return ledger.log_event(other, "progress", {"doomed": True})

    def bad_sql() -> Any:
        return backend.write("bad sql", lambda tx: tx.conn.execute("SELECT * FROM no_such_table"))

    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(pending, "progress", {"leader": True}),
        [
            lambda: ledger.create_job(2, CONFIG),
            lambda: ledger.complete(pending, "done", "success", 0.0, 1),
            lambda: ledger.log_event("no-such-job", "progress", {}),
            boom,
            bad_sql,
            lambda: ledger.log_event(other, "progress", {"kept": True}),
        ],
    )
    gate.open()
    first.finish()
    for caller in rest:
        caller.finish()
    created, invalid, missing, boomed, sql, kept = rest
    assert first.error is None and created.error is None and kept.error is None
    assert isinstance(invalid.error, InvalidTransition)
    assert isinstance(missing.error, JobNotFound)
    assert isinstance(boomed.error, RuntimeError) and str(boomed.error) == "boom after append"
    assert isinstance(sql.error, StorageError) and "no_such_table" in str(sql.error)
    assert commits.count == 1
    versions = log_of(ledger)
    assert versions[pending] == [1, 2]
    assert versions[other] == [1, 2] and kept.result == 2
    events = ledger.job_events(other)
    assert [e.payload for e in events[1:]] == [{"kept": True}]
    assert versions[created.result] == [1]
    assert ledger.get_job(pending).status == "pending"  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_a_full_disk_under_a_joiner_fails_it_in_words_and_keeps_the_log_whole(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joiner hits a full disk (SQLite may roll back the statement or the whole shared
    transaction): it gets the clear "full" error; every other caller either succeeded and is
    in the log or was told its transaction did not commit and is not; the ledger goes on."""
    ledger = file_ledger
    backend = backend_of(ledger)
    job_id = ledger.create_job(1, CONFIG)
    gate = Gate(ledger, monkeypatch)
    first = Caller(lambda: ledger.log_event(job_id, "progress", {"n": 0}), ledger, gate)
    first.start()
    assert gate.entered.wait(WAIT)
    pages = backend._conn.execute("PRAGMA page_count").get
    backend._conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # the disk is now "full"
    big = Caller(lambda: ledger.create_job(2, {"blob": "x" * 200_000}), ledger)
    small = Caller(lambda: ledger.log_event(job_id, "progress", {"n": 1}), ledger)
    big.start()
    small.start()
    wait_until(lambda: queued(ledger) == 2, "2 callers waiting for the lock")
    gate.open()
    callers = [first, big, small]
    for caller in callers:
        caller.finish()
    backend._conn.execute("PRAGMA max_page_count = 1073741823")
    assert isinstance(big.error, StorageError) and "full" in str(big.error)
    for caller in (first, small):
        if caller.error is not None:
            assert isinstance(caller.error, StorageError), caller.error
            assert "nothing of it was written" in str(caller.error)
    kept = sorted(c.result for c in (first, small) if c.error is None)
    assert kept == list(range(2, len(kept) + 2))
    assert log_of(ledger) == {job_id: [1, *kept]}
    assert ledger.log_event(job_id, "progress", {"after": True}) == len(kept) + 2
    assert ledger.create_job(2, {"blob": "x" * 200_000})
    assert ledger.verify().ok


def test_a_failing_first_command_fails_alone_and_the_waiting_ones_commit(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first command of a would-be group raises after it appended an event: it rolls back
    alone, with its own error; the callers waiting behind it commit, in one COMMIT."""
    ledger = file_ledger
    job_id = ledger.create_job(1, CONFIG)
    gate = Gate(ledger, monkeypatch)
    gate.fail = ValueError("the leader's own failure")
    commits = Commits(ledger)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"doomed": True}),
        [lambda n=n: ledger.log_event(job_id, "progress", {"n": n}) for n in range(4)]
        + [lambda: ledger.create_job(3, CONFIG)],
    )
    gate.open()
    first.finish()
    for caller in rest:
        caller.finish()
    assert isinstance(first.error, ValueError) and str(first.error) == "the leader's own failure"
    assert [c.error for c in rest] == [None] * 5
    assert commits.count == 1
    versions = log_of(ledger)
    assert versions[job_id] == [1, 2, 3, 4, 5]
    assert {"doomed": True} not in [e.payload for e in ledger.job_events(job_id)]
    assert ledger.verify().ok


def test_held_writes_commands_fail_alone_in_one_transaction(file_ledger: Ledger) -> None:
    """`held_writes()` directly: one thread's commands share one transaction, invisible to
    other connections until the block ends; failing ones (the first of them too) fail alone."""
    ledger = file_ledger
    backend = backend_of(ledger)
    pending = ledger.create_job(1, CONFIG)
    commits = Commits(ledger)
    with backend.held_writes() as joined:
        with pytest.raises(InvalidTransition):  # the first command: nothing is open yet
            ledger.complete(pending, "done", "success", 0.0, 1)
        assert joined == []
        created = ledger.create_job(2, CONFIG)
        with pytest.raises(JobNotFound):
            ledger.log_event("no-such-job", "progress", {})
        version = ledger.log_event(created, "progress", {"n": 1})
        with pytest.raises(InvalidTransition):  # a joiner
            ledger.complete(pending, "done", "success", 0.0, 1)
        with pytest.raises(StorageError, match="no_such_table"):
            backend.write("bad sql", lambda tx: tx.conn.execute("SELECT * FROM no_such_table"))
        assert ledger.log_event(pending, "progress", {"n": 2}) == 2
        assert commits.count == 0
        outside = apsw.Connection(backend.target, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            assert outside.execute("SELECT count(*) FROM events").get == 1
        finally:
            outside.close()
    assert commits.count == 1
    assert len(joined) >= 3 and len({id(g) for g in joined}) == 1  # one transaction
    assert joined[0].failure is None and joined[0].error("x") is None
    assert version == 2
    versions = log_of(ledger)
    assert versions == {pending: [1, 2], created: [1, 2]}
    assert ledger.verify().ok


# -- 4. a failed COMMIT loses the group ---------------------------------------------------------


def test_a_vetoed_commit_loses_the_whole_group_and_tells_every_caller(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT of a shared group fails: every caller in it gets a LedgerError that says so,
    none of their events is in the log, and the ledger goes on at the right positions."""
    ledger = file_ledger
    backend = backend_of(ledger)
    job_id = ledger.create_job(1, CONFIG)
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger)
    commits.veto = 1
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"lost": 0}),
        [lambda n=n: ledger.log_event(job_id, "progress", {"lost": n}) for n in range(1, 4)]
        + [lambda: ledger.create_job(2, CONFIG)],
    )
    gate.open()
    for caller in [first, *rest]:
        caller.finish()
        assert isinstance(caller.error, StorageError), caller.error
        assert "did not commit: nothing of it was written" in str(caller.error)
    assert commits.vetoed == 1 and commits.count == 1
    assert backend._head is None  # the cached head of the lost transaction is gone
    assert log_of(ledger) == {job_id: [1]}
    assert ledger.log_event(job_id, "progress", {"after": True}) == 2
    new = ledger.create_job(3, CONFIG)
    assert log_of(ledger) == {job_id: [1, 2], new: [1]}
    assert ledger.read_all()[-1].position == 3
    assert ledger.verify().ok


def test_a_later_command_of_a_group_sees_what_an_earlier_one_wrote(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands sharing a transaction see each other's writes: the same idempotency key in one
    group gives one job, every caller its id."""
    ledger = file_ledger
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.create_job(1, CONFIG, idempotency_key="once"),
        [lambda: ledger.create_job(1, CONFIG, idempotency_key="once") for _ in range(3)],
    )
    gate.open()
    ids = {c.finish() for c in [first, *rest]}
    assert commits.count == 1 and len(ids) == 1
    assert log_of(ledger) == {ids.pop(): [1]}
    assert ledger.verify().ok


def test_a_lost_group_leaves_nothing_a_retry_could_trip_on(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a lost group, retrying its commands works as if they never ran: the idempotency
    key it used is free again and the job it claimed is still pending."""
    ledger = file_ledger
    job_id = ledger.create_job(1, CONFIG)
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger)
    commits.veto = 1
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.claim("w", lease=60),
        [lambda: ledger.create_job(2, CONFIG, idempotency_key="retry-me")],
    )
    gate.open()
    for caller in [first, *rest]:
        caller.finish()
        assert isinstance(caller.error, StorageError)
    assert ledger.get_job(job_id).status == "pending"  # type: ignore[union-attr]
    claimed = ledger.claim("w", lease=60)
    assert claimed is not None and claimed.id == job_id
    created = ledger.create_job(2, CONFIG, idempotency_key="retry-me")
    assert log_of(ledger) == {job_id: [1, 2], created: [1]}
    assert ledger.verify().ok


def test_a_vetoed_commit_of_a_lone_caller_and_of_held_writes(file_ledger: Ledger) -> None:
    """A lone caller's failed COMMIT raises a LedgerError and writes nothing; a held block's
    failed COMMIT marks its group (``failure``/``error``); the ledger goes on afterwards."""
    ledger = file_ledger
    backend = backend_of(ledger)
    job_id = ledger.create_job(1, CONFIG)
    commits = Commits(ledger)
    commits.veto = 1
    with pytest.raises(LedgerError):
        ledger.log_event(job_id, "progress", {"lost": True})
    commits.veto = 1
    with backend.held_writes() as joined:
        ledger.log_event(job_id, "progress", {"lost": "held"})
        ledger.create_job(2, CONFIG)
    assert len(joined) == 2 and joined[0] is joined[1]
    assert joined[0].failure is not None
    error = joined[0].error("committing")
    assert isinstance(error, StorageError) and str(error).startswith("committing")
    assert "nothing of it was written" in str(error)
    assert log_of(ledger) == {job_id: [1]}
    assert ledger.log_event(job_id, "progress", {"kept": True}) == 2
    assert log_of(ledger) == {job_id: [1, 2]}
    assert ledger.verify().ok


# -- 6. a lone caller ---------------------------------------------------------------------------


def test_a_lone_caller_commits_every_command_alone_and_never_waits(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One thread: every command is its own COMMIT, runs no savepoint and never waits."""
    ledger = file_ledger
    backend = backend_of(ledger)
    commits = Commits(ledger)
    followed: list[object] = []
    original_await = backend._writes._await

    def wait(*args: Any) -> None:
        followed.append(args)
        original_await(*args)

    monkeypatch.setattr(backend._writes, "_await", wait)
    statements: list[str] = []

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        statements.append(sql)
        return True

    backend._conn.exec_trace = trace
    commands = 0
    for n in range(10):
        job_id = ledger.create_job(n, CONFIG)
        ledger.log_event(job_id, "progress", {"n": n})
        commands += 2
    backend._conn.exec_trace = None
    assert commits.count == commands
    assert followed == []
    assert any("COMMIT" in sql.upper() for sql in statements)  # the trace saw the writes
    assert not any("SAVEPOINT" in sql.upper() for sql in statements)
    assert backend._writes._open is None
    assert ledger.verify().ok


# -- 8. :memory: and read-only ------------------------------------------------------------------


def test_memory_ledger_from_threads_commits_each_command_alone() -> None:
    """``:memory:``: group commit is off (one connection serves reads too); threads still work,
    each command its own commit."""
    with Ledger(":memory:") as ledger:
        backend = backend_of(ledger)
        assert backend._writes.enabled is False
        commits = Commits(ledger)
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                start.wait(WAIT)
                for i in range(10):
                    job_id = ledger.create_job(n, {**CONFIG, "i": i})
                    ledger.log_event(job_id, "progress", {"i": i})
            except BaseException as e:
                errors.append(e)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        assert not errors
        versions = log_of(ledger)
        assert len(versions) == 40 and all(vs == [1, 2] for vs in versions.values())
        assert commits.count == 80
        with backend.held_writes() as joined:  # off: each command commits by itself
            ledger.create_job(9, CONFIG)
            assert commits.count == 81
        assert joined == []
        assert ledger.verify().ok


def test_readonly_ledger_reads_with_group_commit_off(tmp_path: Path) -> None:
    """A read-only ledger has group commit off; it reads what was written and refuses writes
    with the ledger's own error."""
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer:
        job_id = writer.create_job(1, CONFIG)
        writer.log_event(job_id, "progress", {"n": 1})
    with Ledger(path, readonly=True) as reader:
        backend = backend_of(reader)
        assert backend._writes.enabled is False
        assert reader.get_job(job_id).version == 2  # type: ignore[union-attr]
        with pytest.raises(StorageError, match="read-only"):
            reader.create_job(1, CONFIG)
        with backend.held_writes() as joined, pytest.raises(StorageError):
            reader.log_event(job_id, "progress", {})
        assert joined == []
        assert log_of(reader) == {job_id: [1, 2]}
        assert reader.verify().ok


# -- 9. closing with a group open ---------------------------------------------------------------


def test_close_runs_the_queued_commands_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's command is queued while something else holds the write lock (here the test
    itself, as a `held_writes` block or a close does): closing the ledger runs it and commits
    it before the connection goes, so the call succeeds and is durable."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(path, durability="full")
    job_id = ledger.create_job(1, CONFIG)
    backend = backend_of(ledger)
    monkeypatch.setattr("ledger.backends.group.FOLLOWER_CHECK", WAIT)  # no safety net
    backend._lock.acquire()
    try:
        caller = Caller(lambda: ledger.log_event(job_id, "progress", {"n": 1}), ledger)
        caller.start()
        wait_until(lambda: queued(ledger) == 1, "the command queued")
        assert not caller.returned.is_set()
        ledger.close()
    finally:
        backend._lock.release()
    assert caller.finish() == 2 and caller.error is None
    with Ledger(path) as reopened:
        assert log_of(reopened) == {job_id: [1, 2]}
        assert reopened.verify().ok


def test_a_queued_command_nobody_takes_is_run_by_its_own_caller(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net: should the write lock be let go with a command queued and nobody
    looking (a holder that is not a combiner), its caller wakes after ``FOLLOWER_CHECK``,
    takes the lock itself and runs it."""
    ledger = file_ledger
    job_id = ledger.create_job(1, CONFIG)
    backend = backend_of(ledger)
    monkeypatch.setattr("ledger.backends.group.FOLLOWER_CHECK", 0.01)
    commits = Commits(ledger)
    backend._lock.acquire()
    try:
        caller = Caller(lambda: ledger.log_event(job_id, "progress", {"n": 1}), ledger)
        caller.start()
        wait_until(lambda: queued(ledger) == 1, "the command queued")
    finally:
        backend._lock.release()  # a bare release: no look at the queue
    assert caller.finish() == 2 and caller.error is None
    assert commits.count == 1 and queued(ledger) == 0
    assert log_of(ledger) == {job_id: [1, 2]}
    assert ledger.verify().ok


def test_close_while_callers_wait_commits_or_refuses_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing while a group forms: every caller either succeeded (and its write is durable)
    or got the ledger's "closed" error; nothing acknowledged is lost."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(path, durability="full")
    job_id = ledger.create_job(1, CONFIG)
    gate = Gate(ledger, monkeypatch)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"n": 0}),
        [lambda n=n: ledger.log_event(job_id, "progress", {"n": n}) for n in range(1, 4)],  # type: ignore[misc]
    )
    closer = threading.Thread(target=ledger.close)
    gate.open()
    closer.start()
    closer.join(WAIT)
    callers = [first, *rest]
    for caller in callers:
        caller.finish()
    assert first.error is None  # the leader's group was committed, by a joiner or by close
    ok = [c for c in callers if c.error is None]
    for caller in callers:
        if caller.error is not None:
            assert isinstance(caller.error, StorageError) and "closed" in str(caller.error)
    with Ledger(path) as reopened:
        versions = log_of(reopened)
        assert versions[job_id] == list(range(1, len(ok) + 2))
        assert sorted(c.result for c in ok) == list(range(2, len(ok) + 2))
        assert reopened.verify().ok


# -- 10. an interrupt at a group's COMMIT -------------------------------------------------------


def interrupt_at_commit(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, *, after: bool
) -> tuple[Caller, list[Caller], str, int]:
    """A leader's log_event held at a gate until 2 more log_events and a create are queued; the
    leader's COMMIT of the four is interrupted (KeyboardInterrupt) once, right ``after`` it ran
    or right before. Returns the finished callers, the job and the commit count before."""
    job_id = ledger.create_job(1, CONFIG)
    backend = backend_of(ledger)
    transactions = backend._writes._tx
    commit = transactions.commit  # a functools.partial (a C call): replaced, not wrapped
    interrupted: list[None] = []

    def interrupted_commit() -> None:
        if interrupted:
            commit()
            return
        interrupted.append(None)
        if after:
            commit()
        raise KeyboardInterrupt

    monkeypatch.setattr(transactions, "commit", interrupted_commit)
    before = backend._commits
    gate = Gate(ledger, monkeypatch)
    first, rest = led(
        ledger,
        gate,
        lambda: ledger.log_event(job_id, "progress", {"n": 0}),
        [lambda n=n: ledger.log_event(job_id, "progress", {"n": n}) for n in (1, 2)]  # type: ignore[misc]
        + [lambda: ledger.create_job(2, CONFIG)],
    )
    gate.open()
    for caller in [first, *rest]:
        caller.finish()
    assert interrupted == [None]
    return first, rest, job_id, before


def test_an_interrupt_right_after_the_commit_ran_tells_the_joiners_they_succeeded(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT is one C call, so an interrupt lands after it returned: the group committed;
    every joiner is told so (its result) and its events are in the log; the commit is counted
    (waiters on `wait_for_change` hear of it) before any joiner returns; the interrupt reaches
    the combining caller; the ledger goes on."""
    ledger = file_ledger
    first, rest, job_id, before = interrupt_at_commit(ledger, monkeypatch, after=True)
    assert isinstance(first.error, KeyboardInterrupt), first.error
    assert [c.error for c in rest] == [None] * 3
    assert sorted(c.result for c in rest[:2]) == [3, 4]  # after the leader's 2
    assert all(c.commits_seen == before + 1 for c in rest)
    assert backend_of(ledger)._commits == before + 1
    assert log_of(ledger) == {job_id: [1, 2, 3, 4], rest[2].result: [1]}
    assert ledger.log_event(job_id, "progress", {"after": True}) == 5
    assert ledger.verify().ok


def test_an_interrupt_right_before_the_commit_ran_tells_the_joiners_nothing_was_written(
    file_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt that lands before the COMMIT ran: the transaction is rolled back; every
    joiner is told nothing of its command was written, and nothing of theirs is in the log;
    the interrupt reaches the combining caller; the ledger goes on at the right positions."""
    ledger = file_ledger
    commits = Commits(ledger)
    first, rest, job_id, _ = interrupt_at_commit(ledger, monkeypatch, after=False)
    assert isinstance(first.error, KeyboardInterrupt), first.error
    for caller in rest:
        assert isinstance(caller.error, StorageError), (caller.error, caller.result)
        assert "nothing of it was written" in str(caller.error), caller.error
    assert commits.count == 1  # the job's create; the group's COMMIT never ran
    assert not backend_of(ledger)._writes._tx.in_transaction()  # rolled back
    assert log_of(ledger) == {job_id: [1]}
    assert ledger.log_event(job_id, "progress", {"after": True}) == 2
    assert log_of(ledger) == {job_id: [1, 2]}
    assert ledger.read_all()[-1].position == 2
    assert ledger.verify().ok


@pytest.mark.parametrize("where", ["file", "memory", "held"])
def test_a_write_nested_in_a_command_is_refused_and_nothing_of_it_written(
    tmp_path: Path, where: str
) -> None:
    """A ledger call from inside a write's command (the write lock held by this thread) is
    refused in words, with group commit on (a file), off (``:memory:``) and inside
    `held_writes` (AsyncLedger's write path); the command that
    made it decides what happens next: here it fails, and nothing of either is written (run
    into its transaction instead, a nested write was committed with half of it)."""
    location = ":memory:" if where == "memory" else str(tmp_path / "ledger.db")
    with Ledger(location) as ledger:
        job = ledger.create_job(1, CONFIG)
        refused: list[LedgerError] = []

        def work(tx: Any) -> None:
            try:
                ledger.log_event(job, "progress", {"nested": True})
            except LedgerError as e:
                refused.append(e)
            raise RuntimeError("the outer command fails after it")

        before = ledger.head()
        backend = backend_of(ledger)
        with pytest.raises(RuntimeError, match="fails after it"):
            if where == "held":
                with backend.held_writes():
                    backend.write("an outer write", work)
            else:
                backend.write("an outer write", work)
        assert len(refused) == 1 and "inside another write's command" in str(refused[0])
        assert ledger.head() == before
        assert ledger.log_event(job, "progress", {"after": True}) == 2  # the writer goes on
        assert ledger.verify().ok
