"""Helpers for the tests of a worker waiting out an unavailable or busy storage: a handler the
test lets finish, a look for a log record, a worker run in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from ledger import Job, JobContext, Worker


class Blocked:
    """A handler that waits until `go` is set, saying when it started."""

    def __init__(self, outcome: str = "done") -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        self.outcome = outcome

    def __call__(self, job: Job, ctx: JobContext) -> str:
        self.started.set()
        assert self.go.wait(60), "the test never let the handler finish"
        if self.outcome == "raise":
            raise RuntimeError("the handler failed")
        return self.outcome


def logged(caplog: pytest.LogCaptureFixture, text: str, within: float = 30.0) -> bool:
    """Whether a record containing ``text`` is (or comes to be) logged within ``within``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(text in r.getMessage() for r in list(caplog.records)):
            return True
        time.sleep(0.01)  # a poll of the captured records, not a synchronisation
    return False


@contextlib.contextmanager
def running(worker: Worker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(60)
