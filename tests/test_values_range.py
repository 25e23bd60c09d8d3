"""Out-of-range values are `InvalidArgument` naming the argument, never an OverflowError (or a
TypeError from APSW), and write nothing; the boundaries themselves work end to end."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ledger import InvalidArgument, Ledger, RetryPolicy
from ledger.domain.decide import lease_until
from ledger.domain.timeutil import (
    EARLIEST,
    LATEST,
    MAX_BUSY_TIMEOUT,
    MAX_SECONDS,
    parse_text,
    to_text,
)
from ledger.domain.validate import INT64_MAX
from tests.conftest import FakeClock, run_cli, snapshot

MAX_UTC = datetime.max.replace(tzinfo=UTC)
MIN_UTC = datetime.min.replace(tzinfo=UTC)


def _refused(call: Callable[[], object], name: str) -> InvalidArgument:
    """``call`` raises exactly `InvalidArgument` for ``name`` (not OverflowError et al.)."""
    with pytest.raises(InvalidArgument) as raised:
        call()
    assert raised.value.name == name
    return raised.value


@pytest.fixture
def running(ledger: Ledger) -> str:
    job_id = ledger.create_job(1, {}, max_attempts=3)
    ledger.claim("w")
    return job_id


# -- times ----------------------------------------------------------------------------------

BAD_RUN_AT = {
    "datetime.max": MAX_UTC,
    "datetime.max at UTC-14": datetime.max.replace(tzinfo=timezone(timedelta(hours=-14))),
    "datetime.min": MIN_UTC,
    "datetime.min at UTC+14": datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),
    "just after LATEST": LATEST + timedelta(microseconds=1),
    "just before EARLIEST": EARLIEST - timedelta(microseconds=1),
}


@pytest.mark.parametrize("name", list(BAD_RUN_AT))
def test_run_at_out_of_range_is_refused(ledger: Ledger, name: str) -> None:
    before = snapshot(ledger.path)
    error = _refused(lambda: ledger.create_job(1, {}, run_at=BAD_RUN_AT[name]), "run_at")
    assert "9900-01-01" in str(error)
    spec = {"chat_id": 1, "config": {}, "run_at": BAD_RUN_AT[name]}
    _refused(lambda: ledger.create_jobs([spec]), "specs[0].run_at")
    assert snapshot(ledger.path) == before
    assert ledger.verify().ok


def test_a_clock_past_the_range_is_refused_and_writes_nothing(
    ledger: Ledger, clock: FakeClock, running: str
) -> None:
    before = snapshot(ledger.path)
    clock.now = MAX_UTC - timedelta(seconds=10)  # before: claim/heartbeat overflowed here
    for call in (
        lambda: ledger.create_job(1, {}),
        lambda: ledger.claim("w2"),
        lambda: ledger.heartbeat(running),
        lambda: ledger.fail(running, "boom"),
    ):
        _refused(call, "clock()")
    _refused(ledger.stats, "clock()")
    assert snapshot(ledger.path) == before
    assert ledger.verify().ok


def test_at_the_edges_of_the_range_the_longest_lease_and_backoff_still_fit(
    tmp_path: Path,
) -> None:
    """LATEST plus the longest lease, and plus the longest retry delay, stay inside datetime;
    EARLIEST minus an hour (stats) too."""
    clock = FakeClock(LATEST)
    longest = RetryPolicy(base=MAX_SECONDS, cap=MAX_SECONDS, jitter=0.0)
    with Ledger(tmp_path / "edge.db", clock=clock, retry_policy=longest) as ledger:
        job_id = ledger.create_job(1, {}, max_attempts=2, run_at=LATEST)
        assert ledger.claim("w", lease=MAX_SECONDS - 1) is not None
        ledger.heartbeat(job_id, lease=MAX_SECONDS - 1)
        ledger.heartbeat(job_id)
        ledger.fail(job_id, "boom")
        job = ledger.get_job(job_id)
        assert job is not None and job.run_at == LATEST + timedelta(seconds=MAX_SECONDS)
        clock.now = EARLIEST
        ledger.stats()
        early = ledger.create_job(1, {}, run_at=EARLIEST)
        assert ledger.get_job(early).run_at == EARLIEST  # type: ignore[union-attr]
        assert ledger.verify().ok


def test_lease_until_refuses_instead_of_overflowing() -> None:
    _refused(lambda: lease_until(MAX_UTC - timedelta(seconds=1), 10.0), "lease")
    assert lease_until(LATEST, MAX_SECONDS - 1) < MAX_UTC


# -- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize("lease", [MAX_SECONDS, 1e300, float("inf"), timedelta.max, -1])
def test_out_of_range_leases_are_refused(ledger: Ledger, running: str, lease: object) -> None:
    before = snapshot(ledger.path)
    _refused(lambda: ledger.claim("w2", lease=lease), "lease")  # type: ignore[arg-type]
    _refused(lambda: ledger.heartbeat(running, lease=lease), "lease")  # type: ignore[arg-type]
    assert snapshot(ledger.path) == before
    assert ledger.verify().ok


@pytest.mark.parametrize(
    "timeout", [1e12, 3e6, MAX_BUSY_TIMEOUT, timedelta.max, float("inf"), float("nan"), 0]
)
def test_a_busy_timeout_beyond_sqlites_int_is_refused(db_path: str, timeout: object) -> None:
    """Before: 3e6 s passed the check and `int(... * 1000)` overflowed APSW's C int."""
    _refused(lambda: Ledger(db_path, busy_timeout=timeout), "busy_timeout")  # type: ignore[arg-type]
    assert not os.path.exists(db_path)  # refused before the file was created


def test_the_longest_busy_timeout_opens(db_path: str) -> None:
    with Ledger(db_path, busy_timeout=MAX_BUSY_TIMEOUT - 1) as ledger:
        ledger.create_job(1, {})
        assert ledger.verify().ok


BAD_POLICIES: dict[str, dict[str, Any]] = {
    "negative base": dict(base=-1.0),
    "NaN base": dict(base=float("nan")),
    "base past the longest delay": dict(base=MAX_SECONDS * 2),
    "infinite cap": dict(cap=float("inf")),
    "cap past the longest delay": dict(cap=1e12),
    "shrinking factor": dict(factor=0.5),
    "infinite factor": dict(factor=float("inf")),
    "jitter above 1": dict(jitter=1.5),
    "text base": dict(base="10"),
    "bool jitter": dict(jitter=True),
}


@pytest.mark.parametrize("name", list(BAD_POLICIES))
def test_a_bad_retry_policy_is_refused_when_built(name: str) -> None:
    field = next(iter(BAD_POLICIES[name]))
    _refused(lambda: RetryPolicy(**BAD_POLICIES[name]), f"RetryPolicy.{field}")


@pytest.mark.parametrize("attempt", [1100, 10**6, 2**62])
def test_the_backoff_of_a_late_attempt_is_the_cap_not_an_overflow(attempt: int) -> None:
    """Before: ``2.0 ** 1100`` raised OverflowError inside `fail`'s transaction."""
    policy = RetryPolicy(jitter=0.0)
    assert policy.delay(attempt, random.Random(1)) == timedelta(seconds=policy.cap)


# -- positions and limits --------------------------------------------------------------------

TOO_BIG = [INT64_MAX + 1, 2**64, 10**30]


@pytest.mark.parametrize("big", TOO_BIG)
def test_positions_and_limits_past_int64_are_refused(
    ledger: Ledger, running: str, big: int
) -> None:
    before = snapshot(ledger.path)
    _refused(lambda: ledger.read_all(after=big), "after")
    _refused(lambda: ledger.read_all(limit=big), "limit")
    _refused(lambda: list(ledger.export_events(after=big)), "after")
    _refused(lambda: ledger.pending_jobs(big), "limit")
    _refused(lambda: ledger.jobs(limit=big), "limit")
    _refused(lambda: ledger.jobs_for_chat(1, big), "limit")
    _refused(lambda: ledger.recent_events_for_chat(1, big), "limit")
    _refused(
        lambda: ledger.log_event(running, "progress", expected_version=big), "expected_version"
    )
    _refused(lambda: ledger.create_job(1, {}, priority=big), "priority")
    _refused(lambda: ledger.create_job(1, {}, max_attempts=big), "max_attempts")
    _refused(lambda: ledger.complete(running, "s", duration_seconds=big), "duration_seconds")
    assert snapshot(ledger.path) == before
    assert ledger.verify().ok


def test_the_largest_position_and_limit_are_answered(ledger: Ledger, running: str) -> None:
    assert ledger.read_all(after=INT64_MAX) == []
    assert list(ledger.export_events(after=INT64_MAX)) == []
    assert len(ledger.read_all(limit=INT64_MAX)) == ledger.last_position()
    assert [j.id for j in ledger.jobs(limit=INT64_MAX)] == [running]
    assert len(ledger.recent_events_for_chat(1, INT64_MAX)) == 2


def test_cli_positions_past_int64_are_a_clear_error(ledger: Ledger) -> None:
    ledger.create_job(1, {})
    for command in (["events", "--after", str(2**64)], ["export", "--after", str(2**63)]):
        result = run_cli(*command, db=ledger.path)
        assert result.returncode != 0, command
        assert "Traceback" not in result.stderr, command
        assert "after" in result.stderr, command


# -- the path and the other arguments of Ledger ------------------------------------------------


def test_ledger_takes_a_pathlib_path_and_keeps_it_as_text(tmp_path: Path) -> None:
    path = tmp_path / "via-path.db"
    with Ledger(path) as ledger:
        assert ledger.path == str(path)
        job_id = ledger.create_job(1, {"a": 1})
        assert ledger.verify().ok
    with Ledger(str(path), readonly=True) as reader:  # the same file as its str
        assert reader.get_job(job_id) is not None
    result = run_cli("jobs", "--json", db=str(path))
    assert result.returncode == 0 and job_id in result.stdout


BAD_PATHS = {
    "int": 123,
    "None": None,
    "bytes": b"ledger.db",
    "bytes path object": type("BytesPath", (), {"__fspath__": lambda self: b"x.db"})(),
    "NUL in the name": "led\x00ger.db",
    "lone surrogate": "led\udcffger.db",
}


@pytest.mark.parametrize("name", list(BAD_PATHS))
def test_a_path_that_is_not_text_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be created here either
    _refused(lambda: Ledger(BAD_PATHS[name]), "path")
    assert list(tmp_path.iterdir()) == []


BAD_OPTIONS: dict[str, dict[str, Any]] = {
    "clock": dict(clock="now"),
    "readonly": dict(readonly="yes"),
    "retry_policy": dict(retry_policy={"base": 1}),
    "rng": dict(rng=42),
}


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_bad_ledger_options_are_refused(db_path: str, name: str) -> None:
    _refused(lambda: Ledger(db_path, **BAD_OPTIONS[name]), name)
    assert not os.path.exists(db_path)


@pytest.mark.parametrize(
    "moment",
    [
        EARLIEST,
        LATEST,
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(5, 3, 4, 1, 2, 3, 7, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),  # a whole second: no fraction in msgspec's form
        datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 6, 1, 12, 30, 0, 5, tzinfo=timezone(timedelta(hours=-11))),
    ],
)
def test_the_canonical_text_of_a_time_is_its_utc_isoformat(moment: datetime) -> None:
    """`to_text` is cut from msgspec's ISO-8601 (a shortcut): it must equal the fixed-width
    ``isoformat`` of the instant in UTC everywhere in the range, and parse back to it."""
    text = to_text(moment)
    assert text == moment.astimezone(UTC).isoformat(timespec="microseconds")
    assert parse_text(text) == moment


def test_the_canonical_text_matches_isoformat_on_random_times() -> None:
    rng = random.Random(17)
    for _ in range(2000):
        moment = EARLIEST + timedelta(
            days=rng.randrange(0, (LATEST - EARLIEST).days),
            microseconds=rng.choice([0, rng.randrange(86_400 * 10**6), rng.randrange(1000) * 1000]),
        )
        assert to_text(moment) == moment.isoformat(timespec="microseconds")
