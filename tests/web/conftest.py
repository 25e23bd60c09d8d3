"""Fixtures for the dashboard's tests: a real ledger file with jobs in every state, and a
Starlette TestClient over it (its lifespan runs, so the change watcher runs too)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard needs the web extra: jobledger[web]")
pytest.importorskip("httpx2", reason="Starlette's TestClient needs httpx2 (the test extra)")

from starlette.testclient import TestClient

from ledger import Ledger
from ledger.web import create_app
from tests.conftest import FakeClock

TOKEN = "s3cret-token"
EVIL = "<script>alert('pwned')</script>"
TRACEBACK = 'Traceback (most recent call last):\n  File "h.py", line 1\nValueError: boom'


@dataclass
class Populated:
    """Which job is which in the `populated` ledger."""

    path: str
    completed: str
    failed: str
    running: str
    pending: str
    evil: str


def populate(ledger: Ledger, clock: FakeClock) -> dict[str, str]:
    """One job of each kind: completed with a cost, failed with an error and traceback,
    running under a lease, pending, and one whose config holds a script tag."""
    done = ledger.create_job(7, {"task": "summarise"}, queue="reports")
    failed = ledger.create_job(7, {"task": "crash"}, queue="reports")
    running = ledger.create_job(8, {"task": "long"}, queue="slow")
    clock.advance(5)
    job = ledger.claim("worker-a", queues=["reports"])
    assert job is not None and job.id == done
    ledger.complete(done, "summarised 3 pages", cost_cents=12.5, duration_seconds=4)
    job = ledger.claim("worker-a", queues=["reports"])
    assert job is not None and job.id == failed
    ledger.log_event(failed, "error", {"message": "boom", "traceback": TRACEBACK})
    ledger.fail(failed, "ValueError: boom", retry=False, error_type="ValueError")
    job = ledger.claim("worker-b", queues=["slow"], lease=300)
    assert job is not None and job.id == running
    pending = ledger.create_job(9, {"task": "later"})
    evil = ledger.create_job(9, {"name": EVIL})
    return {
        "completed": done,
        "failed": failed,
        "running": running,
        "pending": pending,
        "evil": evil,
    }


@pytest.fixture
def populated(tmp_path: Path, clock: FakeClock) -> Populated:
    path = str(tmp_path / "web.db")
    with Ledger(path, clock=clock) as ledger:
        ids = populate(ledger, clock)
        assert ledger.verify().ok
    return Populated(path=path, **ids)


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def open_client(populated: Populated, clock: FakeClock) -> Iterator[ClientFactory]:
    """``open_client(allow_actions=False)``: a TestClient over the populated ledger."""
    opened: list[tuple[TestClient, Ledger]] = []

    def factory(*, allow_actions: bool = False) -> TestClient:
        ledger = Ledger(populated.path, clock=clock, readonly=not allow_actions)
        app = create_app(
            ledger, allow_actions=allow_actions, token=TOKEN if allow_actions else None
        )
        client = TestClient(app, follow_redirects=False)
        client.__enter__()
        opened.append((client, ledger))
        return client

    yield factory
    for client, ledger in opened:
        client.__exit__(None, None, None)
        assert ledger.verify().ok
        ledger.close()
