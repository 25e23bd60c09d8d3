"""The PostgreSQL backend with several real processes on one database: claims are exclusive,
a follower never skips, the schema is made once by many starters, a read-only ledger writes
nothing. Each process opens its own `Ledger(url)`; nothing is mocked."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import pytest

from ledger import EventType, Ledger
from ledger.errors import SchemaError, StorageError

pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test]'")

FORK = multiprocessing.get_context("fork")  # children open their own Ledger (own connections)
DEADLINE = 60.0  # seconds: a generous bound on waiting for children, never a timing assertion
CONFIG = {"role": "coder", "task": "postgres"}


def run_processes(target: Callable[..., None], args_for: list[tuple[Any, ...]]) -> list[Any]:
    """One real process per args tuple (each gets a result queue last); what each put on the
    queue, in any order. A child's exception comes back as its text and fails the test."""
    results: Any = FORK.Queue()
    children = [FORK.Process(target=_report, args=(target, args, results)) for args in args_for]
    for child in children:
        child.start()
    out = [results.get(timeout=DEADLINE) for _ in children]
    for child in children:
        child.join(DEADLINE)
        assert child.exitcode == 0, f"child exited with {child.exitcode}"
    errors = [r for r in out if isinstance(r, str) and r.startswith("error:")]
    assert not errors, errors
    return out


def _report(target: Callable[..., Any], args: tuple[Any, ...], results: Any) -> None:
    try:
        results.put(target(*args))
    except BaseException as e:  # the parent asserts on it
        results.put(f"error: {type(e).__name__}: {e}")


# -- claims ---------------------------------------------------------------------------------------


def _claimer(url: str, worker: str, start: Any) -> list[str]:
    start.wait(DEADLINE)
    claimed = []
    with Ledger(url) as ledger:
        while (job := ledger.claim(worker, queues=["q"], lease=300)) is not None:
            claimed.append(job.id)
            ledger.complete(job.id, "done", "success", worker_id=worker)
    return claimed


def test_four_processes_never_claim_one_job_twice(postgres_schema: str) -> None:
    with Ledger(postgres_schema) as ledger:
        created = ledger.create_jobs([{"chat_id": 1, "config": CONFIG, "queue": "q"}] * 200)
    start = FORK.Event()
    children = [(postgres_schema, f"w{n}", start) for n in range(4)]
    results: Any = FORK.Queue()
    procs = [FORK.Process(target=_report, args=(_claimer, a, results)) for a in children]
    for proc in procs:
        proc.start()
    start.set()
    claimed = [results.get(timeout=DEADLINE) for _ in procs]
    for proc in procs:
        proc.join(DEADLINE)
    assert all(isinstance(c, list) for c in claimed), claimed
    every = [job_id for per_worker in claimed for job_id in per_worker]
    assert len(every) == len(set(every)), "a job was claimed twice"
    assert sorted(every) == sorted(created)
    with Ledger(postgres_schema) as ledger:
        assert {job.status for job in ledger.jobs(limit=1000)} == {"completed"}
        assert all(len(ledger.job_events(j, types=["claimed"])) == 1 for j in created)
        assert ledger.verify().ok


# -- a follower with concurrent writers -----------------------------------------------------------

WRITES = 60


def _writer(url: str, n: int) -> int:
    with Ledger(url) as ledger:
        job_id = ledger.create_job(n, CONFIG)
        for step in range(WRITES):
            ledger.log_event(job_id, EventType.PROGRESS, {"writer": n, "step": step})
    return n


def _follower(url: str, expected: int) -> list[int]:
    seen: list[int] = []
    deadline = time.monotonic() + DEADLINE
    with Ledger(url, readonly=True) as ledger:
        while len(seen) < expected and time.monotonic() < deadline:
            after = seen[-1] if seen else 0
            seen += [event.position for event in ledger.read_all(after, limit=7)]
    return seen


def test_follower_sees_every_event_of_four_writers_once_in_order(postgres_schema: str) -> None:
    Ledger(postgres_schema).close()  # the schema exists before the follower opens read-only
    expected = 4 * (WRITES + 1)
    out = run_processes(
        lambda kind, n: (
            _follower(postgres_schema, expected) if kind == "f" else _writer(postgres_schema, n)
        ),
        [("f", -1), *[("w", n) for n in range(4)]],
    )
    follower = next(r for r in out if isinstance(r, list))
    assert follower == list(range(1, expected + 1)), "the follower skipped or repeated an event"
    with Ledger(postgres_schema) as ledger:
        logged = [e.position for e in ledger.iter_events()]
        assert logged == list(range(1, expected + 1))  # gap-free
        assert ledger.verify().ok


# -- schema creation ------------------------------------------------------------------------------


def _opener(url: str, start: Any) -> str:
    start.wait(DEADLINE)
    with Ledger(url) as ledger:
        return ledger.create_job(1, CONFIG)


def test_six_processes_create_the_schema_of_an_empty_database_together(
    postgres_database: str,
) -> None:
    start = FORK.Event()
    results: Any = FORK.Queue()
    procs = [
        FORK.Process(target=_report, args=(_opener, (postgres_database, start), results))
        for _ in range(6)
    ]
    for proc in procs:
        proc.start()
    start.set()
    out = [results.get(timeout=DEADLINE) for _ in procs]
    for proc in procs:
        proc.join(DEADLINE)
    assert not [r for r in out if r.startswith("error:")], out
    with Ledger(postgres_database) as ledger:
        assert sorted(job.id for job in ledger.jobs(limit=10)) == sorted(out)
        assert ledger.verify().ok


# -- read-only ------------------------------------------------------------------------------------


def test_readonly_refuses_a_database_without_a_ledger(postgres_schema: str) -> None:
    with pytest.raises(SchemaError, match="holds no ledger"):
        Ledger(postgres_schema, readonly=True)
    with Ledger(postgres_schema) as ledger:  # and it created nothing: a writer still starts fresh
        assert ledger.read_all() == []


def test_readonly_refuses_writes_and_writes_nothing(postgres_schema: str) -> None:
    with Ledger(postgres_schema) as ledger:
        job_id = ledger.create_job(1, CONFIG)
    with Ledger(postgres_schema, readonly=True) as reader:
        assert reader.get_job(job_id) is not None
        with pytest.raises(StorageError, match="read-only"):
            reader.create_job(2, CONFIG)
        with pytest.raises(StorageError, match="read-only"):
            reader.claim("w")
    with Ledger(postgres_schema) as ledger:
        assert [job.id for job in ledger.jobs()] == [job_id]
        assert [e.type for e in ledger.read_all()] == ["created"]
        assert ledger.verify().ok
