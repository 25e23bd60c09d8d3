"""Flat combining, the shape of group commit on SQLite (issue 17): whoever holds the write lock
runs the commands other threads queued, and hands the queue on after ``MAX_ROUNDS`` groups.

What is proved here, each by a test that fails without the promise: the combiner runs the
queued commands itself (they are executed on its thread, and each caller wakes once, with its
answer); a combiner hands the queue to a waiting caller after ``MAX_ROUNDS`` groups, which
commits the rest itself; an interrupt (KeyboardInterrupt) in the combiner while it runs another
caller's command rolls that command back, tells that caller to retry in words, commits what
came before and hands the rest on; a caller interrupted while its command is still queued
withdraws it, so nothing of it is written.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from ledger import Ledger, StorageError
from tests.backends.sqlite.test_group_commit import (
    CONFIG,
    WAIT,
    Caller,
    Commits,
    Gate,
    backend_of,
    log_behind_one,
    log_of,
    queued,
    wait_until,
)


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    with Ledger(tmp_path / "ledger.db", durability="full") as opened:
        yield opened


def test_the_combiner_runs_the_queued_commands_on_its_own_thread(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five callers queue behind a held one: all six commands run on the held caller's thread
    (the combiner), in one COMMIT, and each caller gets its own result."""
    backend = backend_of(ledger)
    job_id = ledger.create_job(1, CONFIG)
    ran_on: list[int] = []
    original = backend.write

    def write(doing: str, work: Any, **kwargs: Any) -> Any:
        def recorded(tx: Any) -> Any:
            ran_on.append(threading.get_ident())
            return work(tx)

        return original(doing, recorded, **kwargs)

    monkeypatch.setattr(backend, "write", write)
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger)
    callers = log_behind_one(ledger, gate, job_id, 6)
    assert commits.count == 1
    assert len(ran_on) == 6 and set(ran_on) == {callers[0].ident}
    assert log_of(ledger) == {job_id: [1, 2, 3, 4, 5, 6, 7]}
    assert ledger.verify().ok


def test_a_combiner_hands_the_queue_on_after_max_rounds(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With groups of 2 and one round per combiner, five queued behind one held caller make
    three groups, each committed by a different thread: the held caller's, then the first
    waiting caller's, then the next; every call is answered and durable."""
    monkeypatch.setattr("ledger.backends.group.MAX_GROUP", 2)
    monkeypatch.setattr("ledger.backends.group.MAX_ROUNDS", 1)
    job_id = ledger.create_job(1, CONFIG)
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger)
    committed_by: list[int] = []
    commits.at_commit = lambda: committed_by.append(threading.get_ident())
    callers = log_behind_one(ledger, gate, job_id, 5)
    assert commits.count == 3
    assert committed_by[0] == callers[0].ident
    assert len(set(committed_by)) == 3  # handed on twice
    assert set(committed_by) <= {c.ident for c in callers}
    assert log_of(ledger) == {job_id: [1, 2, 3, 4, 5, 6]}
    assert ledger.verify().ok


def test_an_interrupt_in_the_combiner_fails_only_the_command_it_ran(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The combiner is interrupted (KeyboardInterrupt) while it runs another caller's command,
    after that command appended its event: that command is rolled back and its caller told to
    retry, in words; the combiner's own command commits and the interrupt reaches the
    combiner's caller; the command queued after is handed on and commits."""
    job_id = ledger.create_job(1, CONFIG)
    interrupted = Gate(ledger, monkeypatch)  # wraps write first: raises for its chosen thread
    interrupted.fail = KeyboardInterrupt()
    interrupted.open()
    gate = Gate(ledger, monkeypatch)
    commits = Commits(ledger)

    def doomed() -> int:
        interrupted.thread = threading.get_ident()
        return ledger.log_event(job_id, "progress", {"doomed": True})

    first = Caller(lambda: ledger.log_event(job_id, "progress", {"n": 0}), ledger, gate)
    first.start()
    assert gate.entered.wait(WAIT)
    middle = Caller(doomed, ledger)
    middle.start()
    wait_until(lambda: queued(ledger) == 1, "the doomed command queued")
    last = Caller(lambda: ledger.log_event(job_id, "progress", {"n": 2}), ledger)
    last.start()
    wait_until(lambda: queued(ledger) == 2, "the last command queued")
    gate.open()
    for caller in (first, middle, last):
        caller.finish()
    assert isinstance(first.error, KeyboardInterrupt)
    assert isinstance(middle.error, StorageError)
    assert "interrupted" in str(middle.error) and "retry" in str(middle.error)
    assert last.error is None
    payloads = [e.payload for e in ledger.job_events(job_id)[1:]]
    assert payloads == [{"n": 0}, {"n": 2}]
    assert commits.count == 2
    assert log_of(ledger) == {job_id: [1, 2, 3]}
    assert ledger.verify().ok


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need main"
)
def test_a_caller_interrupted_while_queued_withdraws_its_command(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main thread's command waits in the queue behind a held combiner and Ctrl-C arrives:
    the caller gets the KeyboardInterrupt, its command leaves the queue, and nothing of it is
    ever written; the combiner commits its own."""
    job_id = ledger.create_job(1, CONFIG)
    monkeypatch.setattr("ledger.backends.group.FOLLOWER_CHECK", 0.01)
    gate = Gate(ledger, monkeypatch)
    first = Caller(lambda: ledger.log_event(job_id, "progress", {"n": 0}), ledger, gate)
    first.start()
    assert gate.entered.wait(WAIT)

    def interrupt_when_queued() -> None:
        wait_until(lambda: queued(ledger) == 1, "the main thread's command queued")
        os.kill(os.getpid(), signal.SIGINT)

    signaller = threading.Thread(target=interrupt_when_queued)
    signaller.start()
    with pytest.raises(KeyboardInterrupt):
        ledger.log_event(job_id, "progress", {"withdrawn": True})
    signaller.join(WAIT)
    assert queued(ledger) == 0
    gate.open()
    assert first.finish() == 2 and first.error is None
    assert [e.payload for e in ledger.job_events(job_id)[1:]] == [{"n": 0}]
    assert log_of(ledger) == {job_id: [1, 2]}
    assert ledger.verify().ok


def test_a_caller_handed_the_queue_just_after_its_wait_timed_out_runs_its_command(
    ledger: Ledger,
) -> None:
    """The race behind the safety net: a waiter's sleep times out at the moment a combiner
    hands it the queue (its wake is released, nobody will sleep on it), and it takes the write
    lock itself: it runs its own command once and answers with its result (waking a wake that
    is already open raised RuntimeError)."""
    from _thread import allocate_lock

    from ledger.backends.group import LEAD, _Call

    writes = backend_of(ledger)._writes
    call = _Call("a handed-on command", lambda: "ran")

    class LateWake:
        """Times out on the first sleep, just as the queue is handed to it."""

        def __init__(self) -> None:
            self.lock = allocate_lock()
            self.lock.acquire()
            self.first = True

        def acquire(self, timeout: float = -1) -> bool:
            if self.first:
                self.first = False
                call.state = LEAD
                self.lock.release()
                return False
            return self.lock.acquire(timeout=timeout)

        def release(self) -> None:
            self.lock.release()

        def locked(self) -> bool:
            return self.lock.locked()

    call.wake = LateWake()  # type: ignore[assignment]
    writes._await(call)
    assert call.outcome() == "ran"
    assert queued(ledger) == 0 and writes._combiner is None
    assert ledger.create_job(1, CONFIG)  # the write lock was let go
    assert ledger.verify().ok
