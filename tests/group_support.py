"""Helpers shared by the group-commit tests of every backend
(tests/backends/*/test_group_commit.py): polling with a deadline, the queue of published
commands, a gate that holds one thread's command inside its transaction, and the log's per-job
versions checked gap-free."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from ledger import Ledger

WAIT = 30.0  # seconds: the most any wait in these tests may last before it fails


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (a deadline, not a sleep that synchronises)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def queued(ledger: Ledger) -> int:
    """Callers whose command is published and not yet taken by a combiner."""
    return len(ledger._backend._writes._pending)  # type: ignore[attr-defined]


class Gate:
    """Holds the next write command of one chosen thread inside its transaction, after its
    work ran and with the write lock held, until `open` is called; optionally makes that
    command raise afterwards (``fail``: a plain exception after it appended its events)."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.thread: int | None = None
        self.fail: BaseException | None = None
        backend = ledger._backend
        original = backend.write

        def write(doing: str, work: Callable[[Any], Any], **kwargs: Any) -> Any:
            if threading.get_ident() != self.thread:
                return original(doing, work, **kwargs)
            self.thread = None  # once

            def gated(tx: Any) -> Any:
                result = work(tx)
                self.entered.set()
                assert self.opened.wait(WAIT), "the gate was never opened"
                if self.fail is not None:
                    raise self.fail
                return result

            return original(doing, gated, **kwargs)

        monkeypatch.setattr(backend, "write", write)

    def open(self) -> None:
        self.opened.set()


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


def acknowledged_from_threads(
    threads: int, rounds: int, calls: Callable[[int, int], list[tuple[str, int]]]
) -> list[tuple[str, int]]:
    """``calls(n, i)`` for each round ``i`` in each thread ``n``, the threads started together:
    every (job id, version) the calls acknowledged. Fails on any error, or a thread that never
    ends."""
    start = threading.Barrier(threads)
    acked: list[tuple[str, int]] = []
    acked_lock = threading.Lock()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            start.wait(WAIT)
            for i in range(rounds):
                mine = calls(n, i)
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
    return acked


def log_holds_exactly(ledger: Ledger, acked: list[tuple[str, int]]) -> dict[str, list[int]]:
    """The log holds exactly the acknowledged (job id, version) pairs, gap-free; its versions."""
    versions = log_of(ledger)
    assert sorted(acked) == sorted((job, v) for job, vs in versions.items() for v in vs)
    return versions
