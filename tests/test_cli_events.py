"""Which events `ledger events` shows, and following the log: `Ledger.iter_events`/`follow` (the
library half, which the dashboard and the async API reuse) and the command through a process."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from ledger import EventType, InvalidArgument, JobEvent, Ledger
from tests.conftest import ROOT, run_cli


def take(events: Iterator[JobEvent], n: int, timeout: float = 30.0) -> list[JobEvent]:
    """The next ``n`` events of a (possibly waiting) iterator, or fail after ``timeout``."""
    got: queue.Queue[JobEvent] = queue.Queue()

    def pull() -> None:
        for _ in range(n):
            got.put(next(events))

    threading.Thread(target=pull, daemon=True).start()
    return [got.get(timeout=timeout) for _ in range(n)]


def test_iter_events_filters_and_chat_zero_is_a_chat(ledger: Ledger) -> None:
    zero = ledger.create_job(0, {"role": "a"})
    other = ledger.create_job(1, {"role": "b"})
    ledger.log_event(other, "progress", {"n": 1})
    ledger.log_event(zero, "progress", {"n": 2})
    assert [(e.job_id, e.type) for e in ledger.iter_events(chat_id=0)] == [
        (zero, EventType.CREATED),
        (zero, EventType.PROGRESS),
    ]
    assert [e.job_id for e in ledger.iter_events(types=["progress"])] == [other, zero]
    assert [e.position for e in ledger.iter_events(2, job_id=zero)] == [4]
    assert len(list(ledger.iter_events())) == 4


def test_iter_events_checks_its_filters_before_reading(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgument, match="unknown event type"):
        ledger.iter_events(types=["nope"])
    with pytest.raises(InvalidArgument, match="chat_id"):
        ledger.iter_events(chat_id="5")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="after"):
        ledger.follow(-1)
    with pytest.raises(InvalidArgument, match="poll"):
        ledger.follow(poll=0)


def test_iter_events_pages_through_a_long_log(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger import reads

    monkeypatch.setattr(reads, "FOLLOW_PAGE", 3)
    ids = [ledger.create_job(n % 2, {}) for n in range(8)]
    assert [e.job_id for e in ledger.iter_events(chat_id=1)] == ids[1::2]


def test_follow_sees_jobs_created_in_the_chat_while_following(ledger: Ledger) -> None:
    stop = threading.Event()
    followed = ledger.follow(chat_id=9, poll=0.01, stop=stop)
    first = ledger.create_job(9, {})
    (created,) = take(followed, 1)
    assert created.job_id == first
    # created after the follower saw the chat: a fixed list of the chat's jobs would miss them
    elsewhere = ledger.create_job(10, {})
    late = ledger.create_job(9, {})
    ledger.log_event(elsewhere, "progress", {"n": 1})
    ledger.log_event(late, "progress", {"n": 2})
    assert [(e.job_id, e.type) for e in take(followed, 2)] == [
        (late, EventType.CREATED),
        (late, EventType.PROGRESS),
    ]
    stop.set()
    assert list(followed) == []  # a set stop ends it
    assert ledger.verify().ok


def _follower(db_path: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "ledger", "events", "--follow", "--interval", "0.02"]
    return subprocess.Popen(
        [*command, *args, "--db", db_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_events_follow_chat_zero_shows_only_chat_zero_and_its_new_jobs(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        ledger.create_job(1, {})  # before the follower starts
        follower = _follower(db_path, "--chat", "0", "--count", "2")
        try:
            zero = ledger.create_job(0, {})  # a job the follower has never seen
            other = ledger.create_job(1, {})
            ledger.log_event(other, "progress", {"n": 1})
            ledger.log_event(zero, "progress", {"n": 2})
            out, err = follower.communicate(timeout=60)
        finally:
            if follower.poll() is None:
                follower.kill()
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all(zero[:8] in line for line in lines)
    assert "created" in lines[0] and '"n":2' in lines[1]


def test_events_count_zero_prints_nothing(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        ledger.create_job(1, {})
    for extra in ([], ["--follow"]):
        result = run_cli("events", "--count", "0", *extra, db=db_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert run_cli("events", "--count", "-1", db=db_path).returncode == 2


def test_events_chat_zero_is_a_filter(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        zero = ledger.create_job(0, {})
        ledger.create_job(3, {})
    lines = run_cli("events", "--chat", "0", db=db_path, check=True).stdout.splitlines()
    assert len(lines) == 1 and zero[:8] in lines[0]
