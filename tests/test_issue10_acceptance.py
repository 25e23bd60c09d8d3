"""Acceptance checks for issue 10, from the outside: the public API (``from ledger import ...``)
and the CLI (``python -m ledger ...`` in subprocesses), on real files in tmp dirs, with real
processes and signals.

Nothing here imports a ledger module other than the package itself, so these checks survive a
restructuring of the internals. A check marked ``xfail(strict=True)`` is a defect found by this
review: it describes what is wrong, and turns into a failure (to be unmarked) once fixed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import enum
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import msgspec
import pytest

import ledger as ledger_package
from ledger import (
    CorruptEvent,
    EventType,
    InvalidArgument,
    Job,
    JobContext,
    JobInterrupted,
    JobStatus,
    Ledger,
    LedgerError,
    Result,
    RetryPolicy,
    Worker,
)

UTC = dt.UTC
START = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
# the directory that holds the `ledger` package under test, so child processes run the same code
PACKAGE_ROOT = str(Path(ledger_package.__file__).resolve().parent.parent)
DEADLINE = 20.0  # seconds a process test waits for a condition before it gives up


class Clock:
    """A clock moved by hand, so leases expire without sleeping."""

    def __init__(self, start: dt.datetime = START) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def child_env() -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LEDGER_DB", None)
    env["PYTHONIOENCODING"] = "utf-8"
    env["COLUMNS"] = "200"
    return env


def cli(
    *args: str | bytes | Path,
    cwd: Path,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", *[a if isinstance(a, bytes) else str(a) for a in args]],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=env or child_env(),
        timeout=timeout,
    )


def start_cli(*args: str | Path, cwd: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ledger", *map(str, args)],
        cwd=cwd,
        env=child_env(),
        **kwargs,
    )


def run_all(
    commands: list[list[str | bytes]], *, cwd: Path, timeout: float = 60
) -> list[subprocess.CompletedProcess[bytes]]:
    """Run CLI commands side by side (they are independent), in the order given."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ledger", *command],
            cwd=cwd,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for command in commands
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def assert_one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """A user error: non-zero exit, nothing on stdout, exactly one line on stderr, no
    traceback, and not reported as an internal error (a bug)."""
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode != 0, (result.stdout, err)
    assert result.stdout == b"", result.stdout
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert "internal error" not in err, err
    return err


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def must(job: Job | None) -> Job:
    """The job a test knows exists."""
    assert job is not None
    return job


def event_types(ledger: Ledger, job_id: str) -> list[str]:
    return [e.type.value for e in ledger.job_events(job_id)]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "ledger.db")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def opened(db: str, clock: Clock) -> Iterator[Ledger]:
    with Ledger(db, clock=clock) as handle:
        yield handle
        assert handle.verify().ok


# ---------------------------------------------------------------------------------------------
# Handlers run by `ledger work` processes (written into each test's tmp dir as a module)

HANDLERS = textwrap.dedent(
    '''
    import os, pathlib, time
    from ledger import EventType, Result

    class QuotaExceeded(Exception):
        pass

    class Text(str):
        pass

    def _mark(job):
        pathlib.Path(job.config["marker"]).write_text(str(os.getpid()))

    def _wait(ctx, limit=30.0):
        end = time.monotonic() + limit
        while not (ctx.cancelled or ctx.stopping) and time.monotonic() < end:
            time.sleep(0.01)

    def readme(job, ctx):
        """The README's handler pattern, word for word, with a wait for the stop."""
        ctx.log(EventType.STARTED, {"task": job.config["task"]})
        _mark(job)
        _wait(ctx)
        if ctx.cancelled or ctx.stopping:
            return None
        return Result("done", "success", cost_cents=1.0)

    def graceful(job, ctx):
        _mark(job)
        _wait(ctx)
        return Result("finished within the grace period", "success", cost_cents=0.5)

    def checker(job, ctx):
        _mark(job)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            ctx.check()
            time.sleep(0.01)
        return "never stopped"

    def stuck(job, ctx):
        _mark(job)
        time.sleep(60)
        return "woke up"

    def by_kind(job, ctx):
        kind = job.config["kind"]
        ctx.log(EventType.PROGRESS, {"kind": kind})
        if kind == "ok":
            return Result("fine", "success", 2.5)
        if kind == "dict":
            return {1: "a"}  # a dict is a result since issue 13; int keys are refused
        if kind == "set":
            return {5}
        if kind == "nan":
            return Result("x", "success", float("nan"))
        if kind == "surrogate":
            return "bad \\udcff text"
        if kind == "raise_surrogate":
            raise ValueError("bad \\udcff text")
        if kind == "custom":
            raise QuotaExceeded("over quota")
        if kind == "strsub":
            return Text("a str subclass")
        if kind == "sysexit":
            raise SystemExit(3)
        if kind == "kbi":
            raise KeyboardInterrupt
        raise AssertionError(kind)
    '''
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "acc_handlers.py").write_text(HANDLERS)
    return tmp_path


def new_job(db: str, marker: Path | None = None, **config: Any) -> str:
    with Ledger(db) as handle:
        if marker is not None:
            config["marker"] = str(marker)
        return handle.create_job(1, config, max_attempts=3)


def start_worker(
    workdir: Path, db: str, handler: str, *extra: str, stderr: Any = None
) -> subprocess.Popen[bytes]:
    return start_cli(
        "work",
        f"acc_handlers:{handler}",
        "--db",
        db,
        "--poll-interval",
        "0.05",
        "--worker-id",
        "acc-worker",
        *extra,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.PIPE,
    )


def wait_for_marker(proc: subprocess.Popen[bytes], marker: Path) -> None:
    wait_until(lambda: marker.exists() or proc.poll() is not None, "the handler to start")
    assert proc.poll() is None, "the worker exited before its handler started"


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    def seen() -> bool:
        return text in path.read_text(errors="replace") or proc.poll() is not None

    wait_until(seen, repr(text))


def finish(proc: subprocess.Popen[bytes], timeout: float = DEADLINE) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


# ---------------------------------------------------------------------------------------------
# 1. Stopping is not cancelling (README pattern, `ledger work`, real signals)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_readme_pattern_stopped_by_a_signal_releases_the_job(
    workdir: Path, db: str, signum: int
) -> None:
    marker = workdir / "started"
    job_id = new_job(db, marker, task="long task")
    proc = start_worker(workdir, db, "readme", "--grace", "10")
    wait_for_marker(proc, marker)
    proc.send_signal(signum)
    assert finish(proc) == 0
    with Ledger(db) as handle:
        job = must(handle.get_job(job_id))
        assert job.status is JobStatus.PENDING  # released, not completed
        assert job.attempts == 0  # the attempt does not count as a failure
        assert job.result_status is None
        types = event_types(handle, job_id)
        assert "completed" not in types
        assert types[-1] == "released"
        assert handle.verify().ok


def test_stopping_handler_that_finishes_within_the_grace_period_completes(
    workdir: Path, db: str
) -> None:
    marker = workdir / "started"
    job_id = new_job(db, marker)
    proc = start_worker(workdir, db, "graceful", "--grace", "10")
    wait_for_marker(proc, marker)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 0
    with Ledger(db) as handle:
        job = must(handle.get_job(job_id))
        assert job.status is JobStatus.COMPLETED
        assert job.result_summary == "finished within the grace period"
        assert handle.verify().ok


def test_ctx_check_raises_job_interrupted_at_a_stop_and_the_job_is_released(
    workdir: Path, db: str
) -> None:
    marker = workdir / "started"
    job_id = new_job(db, marker)
    proc = start_worker(workdir, db, "checker", "--grace", "10")
    wait_for_marker(proc, marker)
    proc.send_signal(signal.SIGINT)
    assert finish(proc) == 0
    with Ledger(db) as handle:
        job = must(handle.get_job(job_id))
        assert job.status is JobStatus.PENDING
        assert job.attempts == 0
        assert job.error_message is None  # not a failure
        assert "failed" not in event_types(handle, job_id)


def test_handler_that_ignores_the_stop_is_released_when_the_grace_period_ends(
    workdir: Path, db: str
) -> None:
    marker = workdir / "started"
    job_id = new_job(db, marker)
    proc = start_worker(workdir, db, "stuck", "--grace", "0.3")
    wait_for_marker(proc, marker)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, timeout=10) == 128 + signal.SIGTERM
    with Ledger(db) as handle:
        job = must(handle.get_job(job_id))
        assert job.status is JobStatus.PENDING
        assert job.attempts == 0
        released = handle.job_events(job_id)[-1]
        assert released.type is EventType.RELEASED
        assert "grace" in json.dumps(released.payload)


# 2. A second signal forces the stop


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT)],
)
def test_second_signal_forces_the_stop_releases_and_exits_non_zero(
    workdir: Path, db: str, first: int, second: int
) -> None:
    marker = workdir / "started"
    job_id = new_job(db, marker)
    log_path = workdir / "worker.log"
    with log_path.open("wb") as log_file:
        proc = start_worker(workdir, db, "stuck", "--grace", "60", stderr=log_file)
        wait_for_marker(proc, marker)
        proc.send_signal(first)
        wait_for_text(log_path, "stopping", proc)  # the first signal was taken
        assert proc.poll() is None  # still waiting for the stuck handler (grace 60 s)
        proc.send_signal(second)
        # "exits within a couple of seconds": a deadline, generous for a loaded machine
        status = finish(proc, timeout=5)
    assert status == 128 + second
    assert status != 0
    with Ledger(db) as handle:
        job = must(handle.get_job(job_id))
        assert job.status is JobStatus.PENDING  # released, nothing left running
        assert job.attempts == 0
        assert handle.running_jobs() == []
        assert handle.verify().ok


# 3. No stranded jobs: bad returns and raises fail the job; the worker goes on


def test_bad_returns_and_raises_fail_their_jobs_and_the_worker_goes_on(
    workdir: Path, db: str
) -> None:
    kinds = ["dict", "set", "nan", "surrogate", "raise_surrogate", "custom", "ok"]
    ids = {kind: new_job(db, kind=kind) for kind in kinds}
    proc = start_worker(workdir, db, "by_kind", "--stop-when-idle")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    with Ledger(db) as handle:
        assert handle.running_jobs() == []
        jobs = {kind: must(handle.get_job(job_id)) for kind, job_id in ids.items()}
        assert jobs["ok"].status is JobStatus.COMPLETED
        assert jobs["ok"].cost_cents == 2.5
        for kind in kinds[:-1]:
            job = jobs[kind]
            # max_attempts 3: a failure is retried, so "failed" shows as a scheduled retry
            assert job.status in (JobStatus.PENDING, JobStatus.FAILED), kind
            assert job.attempts == 1, kind
            assert job.error_message, kind
            assert "retry_scheduled" in event_types(handle, job.id), kind
        errors = {kind: job.error_message or "" for kind, job in jobs.items()}
        assert "not a str" in errors["dict"]
        assert "set" in errors["set"]
        assert "cost_cents" in errors["nan"]
        assert "\\udcff" in errors["raise_surrogate"]  # escaped, still recorded
        assert jobs["custom"].error_message == "over quota"
        assert handle.verify().ok
    text = err.decode()
    assert "acc_handlers.QuotaExceeded" in text  # the failure's log line names the type


def test_handler_returning_a_str_subclass_does_not_strand_its_job(workdir: Path, db: str) -> None:
    job_id = new_job(db, kind="strsub")
    other = new_job(db, kind="ok")
    proc = start_worker(workdir, db, "by_kind", "--stop-when-idle")
    _, err = proc.communicate(timeout=30)
    with Ledger(db) as handle:
        assert must(handle.get_job(job_id)).status is not JobStatus.RUNNING
        assert must(handle.get_job(other)).status is JobStatus.COMPLETED
    assert proc.returncode == 0, err
    assert b"Traceback" not in err


@pytest.mark.parametrize(("kind", "status"), [("sysexit", 3), ("kbi", 130)])
def test_handler_raising_an_interrupt_releases_its_job_and_stops_the_worker(
    workdir: Path, db: str, kind: str, status: int
) -> None:
    job_id = new_job(db, kind=kind)
    later = new_job(db, kind="ok")
    proc = start_worker(workdir, db, "by_kind", "--stop-when-idle")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status, err
    assert b"Traceback" not in err
    with Ledger(db) as handle:
        job = must(handle.get_job(job_id))
        assert job.status is JobStatus.PENDING  # released, not failed, not running
        assert job.attempts == 0
        assert event_types(handle, job_id)[-1] == "released"
        assert must(handle.get_job(later)).status is JobStatus.PENDING  # the worker stopped
        assert handle.verify().ok


def _run_in_process(handle: Ledger, handler: Callable[..., Any], **kwargs: Any) -> Worker:
    worker = Worker(handle, handler, worker_id="w", poll_interval=0.05, grace_period=1, **kwargs)
    worker.run(stop_when_idle=True)
    return worker


class _BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("a broken __str__")


@pytest.mark.parametrize(
    ("handler", "needle"),
    [
        (lambda job, ctx: {1: "a"}, "not a str"),  # a dict result is fine since issue 13
        (lambda job, ctx: (7,), "tuple"),
        (lambda job, ctx: b"bytes", "bytes"),
        (lambda job, ctx: {True}, "set"),
        (lambda job, ctx: Result("x", "success", float("nan")), "cost_cents"),
        (lambda job, ctx: Result("x", "success", float("inf")), "cost_cents"),
        (lambda job, ctx: "\ud800", "summary"),
        (lambda job, ctx: Result("x", "\udcff"), "result_status"),
        (lambda job, ctx: Result(5), "summary"),  # type: ignore[arg-type]
        (lambda job, ctx: (_ for _ in ()).throw(_BadStr()), "_BadStr"),
        (lambda job, ctx: (_ for _ in ()).throw(ValueError("x" * 1_000_000)), "xxxx"),
    ],
)
def test_in_process_worker_fails_bad_outcomes_and_serves_the_next_job(
    opened: Ledger, handler: Callable[..., Any], needle: str
) -> None:
    bad = opened.create_job(1, {"n": 1}, queue="q")
    good = opened.create_job(1, {"n": 2}, queue="q")
    calls: list[str] = []

    def dispatch(job: Any, ctx: JobContext) -> Any:
        calls.append(job.id)
        return handler(job, ctx) if job.id == bad else "fine"

    worker = _run_in_process(opened, dispatch, queues=["q"])
    assert calls == [bad, good]
    assert worker.exit_status == 0
    failed = must(opened.get_job(bad))
    assert failed.status is JobStatus.FAILED
    assert needle in (failed.error_message or "")
    assert must(opened.get_job(good)).status is JobStatus.COMPLETED


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt(), 130), (SystemExit(4), 4)])
def test_in_process_interrupt_from_a_handler_releases_and_stops(
    opened: Ledger, error: BaseException, status: int
) -> None:
    first = opened.create_job(1, {})
    second = opened.create_job(1, {})

    def handler(job: Any, ctx: JobContext) -> None:
        raise error

    worker = _run_in_process(opened, handler)
    assert worker.exit_status == status
    assert must(opened.get_job(first)).status is JobStatus.PENDING
    assert must(opened.get_job(first)).attempts == 0
    assert must(opened.get_job(second)).status is JobStatus.PENDING
    assert opened.running_jobs() == []


def test_worker_stop_from_another_thread_releases_a_readme_pattern_job(opened: Ledger) -> None:
    job_id = opened.create_job(1, {"task": "t"})
    started = threading.Event()

    def handle(job: Any, ctx: JobContext) -> Result | None:
        ctx.log(EventType.STARTED, {"task": job.config["task"]})
        started.set()
        deadline = time.monotonic() + DEADLINE
        while not (ctx.cancelled or ctx.stopping) and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.cancelled or ctx.stopping:
            return None
        return Result("done", "success", cost_cents=1.0)

    worker = Worker(opened, handle, worker_id="w", poll_interval=0.05, grace_period=5)

    def stop_when_started() -> None:
        started.wait(DEADLINE)
        worker.stop()

    stopper = threading.Thread(target=stop_when_started)
    stopper.start()
    worker.run()
    stopper.join()
    job = must(opened.get_job(job_id))
    assert job.status is JobStatus.PENDING
    assert job.result_status is None


def test_cancel_while_running_ends_the_job_cancelled_and_the_worker_goes_on(opened: Ledger) -> None:
    first = opened.create_job(1, {"n": 1})
    second = opened.create_job(1, {"n": 2})
    seen: dict[str, Any] = {}

    def handler(job: Any, ctx: JobContext) -> Result:
        if job.id == first:
            assert opened.cancel(first, reason="user changed their mind")
            deadline = time.monotonic() + DEADLINE
            while not ctx.cancelled and time.monotonic() < deadline:
                time.sleep(0.01)  # the heartbeat notices the cancel
            seen["cancelled"] = ctx.cancelled
            seen["stopping"] = ctx.stopping
            seen["log"] = ctx.log(EventType.PROGRESS, {"after": "cancel"})
        return Result("done")

    worker = Worker(opened, handler, worker_id="w", heartbeat_every=0.05, poll_interval=0.05)
    worker.run(stop_when_idle=True)
    assert seen == {"cancelled": True, "stopping": False, "log": False}
    assert must(opened.get_job(first)).status is JobStatus.CANCELLED
    assert event_types(opened, first)[-1] == "cancelled"
    assert must(opened.get_job(second)).status is JobStatus.COMPLETED


def test_error_event_traceback_keeps_the_cause(opened: Ledger) -> None:
    job_id = opened.create_job(1, {})

    def handler(job: Any, ctx: JobContext) -> None:
        try:
            {"present": 1}["missing"]
        except KeyError as e:
            raise RuntimeError("lookup failed") from e

    _run_in_process(opened, handler)
    error = next(e for e in opened.job_events(job_id) if e.type is EventType.ERROR)
    assert error.payload["type"] == "RuntimeError"
    assert "KeyError: 'missing'" in error.payload["traceback"]
    assert "RuntimeError: lookup failed" in error.payload["traceback"]
    assert opened.job_events(job_id)[-1].payload["error_type"] == "RuntimeError"


def test_worker_refuses_a_single_string_as_queues(opened: Ledger) -> None:
    with pytest.raises(InvalidArgument):
        Worker(opened, lambda job, ctx: None, queues="default")


# 4. ctx.log is fenced; activity events record worker and attempt


def test_ctx_log_after_lease_lost_and_reclaimed_is_refused(opened: Ledger, clock: Clock) -> None:
    job_id = opened.create_job(1, {}, max_attempts=3)
    first = opened.claim("A", lease=10)
    assert first is not None
    ctx_a = JobContext(opened, first, "A")
    assert ctx_a.log(EventType.PROGRESS, {"step": 1}) is True
    clock.advance(30)
    second = opened.claim("B", lease=10)  # rescues the expired lease, attempt 2
    assert second is not None and second.id == job_id and second.attempts == 2
    ctx_b = JobContext(opened, second, "B")
    before = opened.last_position()
    assert ctx_a.log(EventType.PROGRESS, {"step": 2}) is False
    assert opened.last_position() == before  # nothing written into B's attempt
    assert ctx_a.cancelled
    with pytest.raises(JobInterrupted):
        ctx_a.check()
    assert ctx_b.log(EventType.TOOL_CALL, {"tool": "grep"}) is True
    assert not ctx_b.cancelled
    activity = [e for e in opened.job_events(job_id) if e.type.value in ("progress", "tool_call")]
    assert [(e.worker_id, e.attempt, e.payload) for e in activity] == [
        ("A", 1, {"step": 1}),
        ("B", 2, {"tool": "grep"}),
    ]


def test_handler_whose_lease_was_taken_over_cannot_complete_or_log(
    opened: Ledger, clock: Clock
) -> None:
    job_id = opened.create_job(1, {}, max_attempts=3)
    seen: dict[str, Any] = {}

    def handler(job: Any, ctx: JobContext) -> Result:
        clock.advance(60)
        seen["other"] = opened.claim("B", lease=600)
        seen["log"] = ctx.log(EventType.PROGRESS, {"late": True})
        seen["cancelled"] = ctx.cancelled
        return Result("stale success")

    worker = Worker(opened, handler, worker_id="A", lease=10, heartbeat_every=1000)
    worker.run(max_jobs=1)
    assert seen["other"] is not None and seen["other"].id == job_id
    assert seen["log"] is False and seen["cancelled"] is True
    job = must(opened.get_job(job_id))
    assert job.status is JobStatus.RUNNING and job.worker_id == "B"
    assert "completed" not in event_types(opened, job_id)


# 5 + 6. The worker says what it does; errors keep their type and traceback


def test_worker_log_lines_and_error_type_and_traceback(workdir: Path, db: str) -> None:
    ok = new_job(db, kind="ok")
    bad = new_job(db, kind="custom")
    proc = start_worker(workdir, db, "by_kind", "--stop-when-idle")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = err.decode().splitlines()
    start = [line for line in lines if "started" in line]
    assert start, lines
    assert "acc-worker" in start[0] and str(proc.pid) in start[0] and db in start[0]
    assert "queues" in start[0]
    assert any("claimed" in line and ok in line for line in lines)
    done = [line for line in lines if ok in line and "completed" in line]
    assert done and "success" in done[0] and re.search(r"\d+\.\d+s", done[0])
    failed = [line for line in lines if bad in line and "failed" in line]
    assert failed and "acc_handlers.QuotaExceeded" in failed[0]
    assert "stopped" in lines[-1]
    assert b"handled 2 job(s)" in out
    with Ledger(db) as handle:
        events = handle.job_events(bad)
        error = next(e for e in events if e.type is EventType.ERROR)
        assert error.payload["type"] == "acc_handlers.QuotaExceeded"
        assert error.payload["error"] == "over quota"
        assert "Traceback (most recent call last)" in error.payload["traceback"]
        assert 'raise QuotaExceeded("over quota")' in error.payload["traceback"]
        assert error.worker_id == "acc-worker" and error.attempt == 1
        retry = next(e for e in events if e.type is EventType.RETRY_SCHEDULED)
        assert retry.payload["error_type"] == "acc_handlers.QuotaExceeded"
        assert must(handle.get_job(bad)).error_message == "over quota"
    shown = cli("show", bad[:8], "--db", db, cwd=workdir)
    assert shown.returncode == 0
    assert b"QuotaExceeded" in shown.stdout and b"Traceback" in shown.stdout


def test_worker_quiet_and_verbose(workdir: Path, db: str) -> None:
    new_job(db, kind="ok")
    quiet = start_worker(workdir, db, "by_kind", "--stop-when-idle", "--quiet")
    _, quiet_err = quiet.communicate(timeout=30)
    assert quiet.returncode == 0
    assert b"INFO" not in quiet_err and b"claimed" not in quiet_err
    new_job(db, kind="ok")
    verbose = start_worker(workdir, db, "by_kind", "--stop-when-idle", "--verbose")
    _, verbose_err = verbose.communicate(timeout=30)
    assert verbose.returncode == 0
    assert b"DEBUG" in verbose_err and b"claimed" in verbose_err
    both = cli("work", "acc_handlers:by_kind", "--quiet", "--verbose", "--db", db, cwd=workdir)
    assert both.returncode == 2  # bad usage


def test_fail_records_error_type_through_the_api(opened: Ledger) -> None:
    job_id = opened.create_job(1, {})
    opened.claim("w")
    opened.fail(job_id, "boom", worker_id="w", error_type="myapp.Boom", retry=False)
    failed = opened.job_events(job_id)[-1]
    assert failed.type is EventType.FAILED
    assert failed.payload["error_type"] == "myapp.Boom"
    assert must(opened.get_job(job_id)).error_message == "boom"


# ---------------------------------------------------------------------------------------------
# 7. What goes into the log: JSON-native only, refused before anything is written


class Colour(enum.Enum):
    RED = 1


class Point(msgspec.Struct):
    x: float


def _nested(depth: int, kind: type = list) -> Any:
    value: Any = [] if kind is list else {}
    for _ in range(depth - 1):
        value = [value] if kind is list else {"a": value}
    return value


def _cyclic() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


class _Dict(dict[str, Any]):
    pass


class _Str(str):
    pass


REFUSED: dict[str, Any] = {
    "datetime": {"a": dt.datetime(2026, 1, 1, tzinfo=UTC)},
    "date": {"a": dt.date(2026, 1, 1)},
    "timedelta": {"a": dt.timedelta(seconds=1)},
    "set": {"a": {1, 2}},
    "frozenset": {"a": frozenset({1})},
    "tuple": {"a": (1, 2)},
    "bytes": {"a": b"x"},
    "bytearray": {"a": bytearray(b"x")},
    "int key": {1: "a"},
    "colliding keys": {1: "a", "1": "b"},
    "None key": {None: 1},
    "raw valid": {"a": msgspec.Raw(b'{"x": 1}')},
    "raw invalid": {"a": msgspec.Raw(b"{not json")},
    "raw at top": msgspec.Raw(b"[1]"),
    "NaN in a Struct": {"a": Point(float("nan"))},
    "Struct": {"a": Point(1.0)},
    "NaN": {"a": float("nan")},
    "infinity": [float("-inf")],
    "deep 10k lists": _nested(10_000),
    "deep 10k dicts": _nested(10_000, dict),
    "65 levels": _nested(65),
    "Enum": {"a": Colour.RED},
    "StrEnum": {"a": EventType.CREATED},
    "Decimal": {"a": decimal.Decimal("1.5")},
    "2**63": {"a": 2**63},
    "-2**63-1": {"a": -(2**63) - 1},
    "10**100": {"a": 10**100},
    "UUID": {"a": uuid.UUID(int=1)},
    "complex": {"a": 1j},
    "cyclic": _cyclic(),
    "dict subclass": _Dict(a=1),
    "str subclass": {"a": _Str("x")},
    "lone surrogate": {"a": "\udcff"},
    "lone surrogate key": {"\ud800": 1},
    "object": {"a": object()},
    "over 16 MiB": {"a": "x" * (16 * 1024 * 1024 + 1)},
}


@pytest.mark.parametrize("name", list(REFUSED))
@pytest.mark.parametrize("how", ["create_job", "create_jobs", "log_event"])
def test_non_json_native_values_are_refused_and_nothing_is_written(
    opened: Ledger, name: str, how: str
) -> None:
    job_id = opened.create_job(1, {"fine": True})
    before = (opened.last_position(), opened.count_jobs())
    value = REFUSED[name]
    with pytest.raises(LedgerError) as caught:
        if how == "create_job":
            opened.create_job(1, value)
        elif how == "create_jobs":
            opened.create_jobs(
                [{"chat_id": 1, "config": {"ok": 1}}, {"chat_id": 1, "config": value}]
            )
        else:
            opened.log_event(job_id, EventType.PROGRESS, value)
    assert isinstance(caught.value, InvalidArgument)
    assert (opened.last_position(), opened.count_jobs()) == before
    assert opened.verify().ok


def test_refusal_names_the_path_inside_the_value(opened: Ledger) -> None:
    with pytest.raises(InvalidArgument, match=r"\$\.items\[2\]"):
        opened.create_job(1, {"items": [1, 2, {1: "a"}]})


@pytest.mark.parametrize(
    "value",
    [
        {"i": 1, "f": 1.0, "b": True, "n": None, "s": "x\x00y é 中"},
        [2**63 - 1, -(2**63), 0.1, -0.0, 1e308],
        _nested(64),
        _nested(64, dict),
        "a string",
        42,
        None,
        {"": {"nested": [[], {}]}},
    ],
)
def test_json_native_values_read_back_equal_with_the_same_types(opened: Ledger, value: Any) -> None:
    job_id = opened.create_job(1, value)
    opened.log_event(job_id, EventType.PROGRESS, value)
    for back in (must(opened.get_job(job_id)).config, opened.job_events(job_id)[-1].payload):
        assert back == value
        assert json.dumps(back, sort_keys=True) == json.dumps(value, sort_keys=True)
    assert opened.replay().jobs == 1
    assert must(opened.get_job(job_id)).config == value


# 8. Out-of-range values are InvalidArgument, never OverflowError; Ledger takes a Path

_MAX = dt.datetime.max.replace(tzinfo=UTC)
_MIN = dt.datetime.min.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "call",
    [
        lambda L: L.create_job(1, {}, run_at=_MAX),
        lambda L: L.create_job(1, {}, run_at=_MIN),
        lambda L: L.create_job(1, {}, run_at=_MAX - dt.timedelta(days=1)),
        lambda L: L.create_job(
            1, {}, run_at=dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-23)))
        ),
        lambda L: L.create_job(2**63, {}),
        lambda L: L.create_job(1, {}, thread_id=-(2**63) - 1),
        lambda L: L.create_job(1, {}, priority=2**64),
        lambda L: L.create_job(1, {}, max_attempts=2**63),
        lambda L: L.claim("w", lease=1e300),
        lambda L: L.claim("w", lease=float("inf")),
        lambda L: L.claim("w", lease=float("nan")),
        lambda L: L.claim("w", lease=dt.timedelta.max),
        lambda L: L.read_all(after=2**63),
        lambda L: L.read_all(limit=2**63),
        lambda L: list(L.iter_events(2**64)),
        lambda L: list(L.export_events(2**63)),
        lambda L: L.pending_jobs(2**63),
        lambda L: L.jobs_for_chat(2**63, 1),
        lambda L: L.recent_events_for_chat(1, 2**63),
        lambda L: L.jobs(limit=-1),
        lambda L: Ledger(L.path, busy_timeout=1e300),
        lambda L: Ledger(L.path, busy_timeout=float("inf")),
        lambda L: Ledger(L.path, busy_timeout=2**63),
        lambda L: Ledger(L.path, busy_timeout=dt.timedelta.max),  # type: ignore[arg-type]
        lambda L: RetryPolicy(base=1e300),
        lambda L: RetryPolicy(cap=float("nan")),
        lambda L: Worker(L, lambda j, c: None, lease=1e300),
        lambda L: Worker(L, lambda j, c: None, grace_period=float("inf")),
        lambda L: Ledger(L.path, clock=lambda: _MAX).create_job(1, {}),
    ],
)
def test_out_of_range_values_are_invalid_argument(opened: Ledger, call: Callable) -> None:
    before = opened.last_position()
    with pytest.raises(InvalidArgument):
        call(opened)
    assert opened.last_position() == before


def test_edges_of_the_ranges_work_end_to_end(db: str) -> None:
    far = dt.datetime(9900, 1, 1, tzinfo=UTC) - dt.timedelta(days=400)
    with Ledger(db, clock=lambda: far, retry_policy=RetryPolicy(base=1e9 - 1, cap=1e9 - 1)) as h:
        job_id = h.create_job(2**63 - 1, {}, thread_id=-(2**63), priority=2**63 - 1, max_attempts=3)
        assert h.claim("w", lease=1e9 - 1) is not None
        h.fail(job_id, "retry far in the future", worker_id="w")
        assert must(h.get_job(job_id)).status is JobStatus.PENDING
        assert h.read_all(after=2**63 - 1) == []
        assert h.verify().ok
    with Ledger(db, busy_timeout=2147482) as h:
        assert h.count_jobs() == 1


def test_huge_retry_factor_never_overflows(db: str, clock: Clock) -> None:
    policy = RetryPolicy(base=1e9 - 1, factor=1e300, cap=1e9 - 1, jitter=0)
    with Ledger(db, clock=clock, retry_policy=policy) as h:
        job_id = h.create_job(1, {}, max_attempts=5)
        for _ in range(3):
            job = must(h.get_job(job_id))
            clock.now = max(clock.now, job.run_at)
            assert h.claim("w", lease=10) is not None
            h.fail(job_id, "again", worker_id="w")
        assert h.verify().ok


def test_ledger_accepts_a_pathlib_path(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with Ledger(path) as handle:
        handle.create_job(1, {})
        assert handle.path == str(path)
    with Ledger(str(path)) as handle:
        assert handle.count_jobs() == 1
    with pytest.raises(InvalidArgument):
        Ledger(os.fsencode(path))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# 9. Import trusts nothing


@pytest.fixture
def exported(tmp_path: Path) -> list[bytes]:
    """An export of a small ledger: 3 jobs, 7 events (lines without their newline)."""
    clock = Clock()
    with Ledger(str(tmp_path / "source.db"), clock=clock) as h:
        a = h.create_job(7, {"role": "coder"})
        b = h.create_job(7, {"role": "critic"})
        h.claim("w")
        clock.advance(1)
        h.fail(a, "boom", worker_id="w", retry=False)
        h.claim("w")
        h.complete(b, "ok", worker_id="w")
        h.create_job(7, {"role": "x"})
        lines = list(h.export_events())
    assert len(lines) == 7
    return lines


def _edit(lines: list[bytes], index: int, change: Callable[[dict[str, Any]], None]) -> list[bytes]:
    record = json.loads(lines[index])
    change(record)
    return [*lines[:index], json.dumps(record).encode(), *lines[index + 1 :]]


def _joined(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


BAD_IMPORTS: dict[str, Callable[[list[bytes]], bytes]] = {
    "gap in versions": lambda ls: _joined(ls[:2] + ls[3:]),
    "unreadable timestamp": lambda ls: _joined(
        _edit(ls, 2, lambda r: r.__setitem__("recorded_at", "yesterday"))
    ),
    "timestamp in another zone": lambda ls: _joined(
        _edit(ls, 2, lambda r: r.__setitem__("recorded_at", "2026-01-01T14:00:00.000000+02:00"))
    ),
    "naive timestamp": lambda ls: _joined(
        _edit(ls, 2, lambda r: r.__setitem__("recorded_at", "2026-01-01T12:00:00.000000"))
    ),
    "partial last line": lambda ls: _joined(ls)[:-25],
    "partial last line with newline": lambda ls: _joined(ls)[:-25] + b"\n",
    "position 2**63-1": lambda ls: _joined(
        _edit(ls, 6, lambda r: r.__setitem__("position", 2**63 - 1))
    ),
    "position 2**63": lambda ls: _joined(_edit(ls, 6, lambda r: r.__setitem__("position", 2**63))),
    "position 2**64": lambda ls: _joined(_edit(ls, 6, lambda r: r.__setitem__("position", 2**64))),
    "position 0": lambda ls: _joined(_edit(ls, 0, lambda r: r.__setitem__("position", 0))),
    "position as float": lambda ls: _joined(_edit(ls, 6, lambda r: r.__setitem__("position", 7.0))),
    "not UTF-8": lambda ls: _joined([ls[0].replace(b"coder", b"co\xffder"), *ls[1:]]),
    "duplicated line": lambda ls: _joined(ls[:3] + ls[2:]),
    "duplicated last line": lambda ls: _joined(ls + ls[-1:]),
    "lines out of order": lambda ls: _joined([ls[1], ls[0], *ls[2:]]),
    "no created event": lambda ls: _joined(ls[2:3]),
    "second created event": lambda ls: _joined(
        [*ls, json.dumps({**json.loads(ls[0]), "position": 8, "version": 4}).encode()]
    ),
    "chat id beyond int64": lambda ls: _joined(
        _edit(ls, 0, lambda r: r["data"].__setitem__("chat_id", 2**63))
    ),
    "tag and data disagree": lambda ls: _joined(
        _edit(ls, 0, lambda r: r.__setitem__("type", "claimed"))
    ),
    "unknown field": lambda ls: _joined(_edit(ls, 0, lambda r: r.__setitem__("extra", 1))),
    "NaN literal": lambda ls: _joined(
        [ls[0].replace(b'"config":{', b'"config":{"k":NaN,'), *ls[1:]]
    ),
    "number out of range": lambda ls: _joined(
        [ls[0].replace(b'"config":{', b'"config":{"k":1e999,'), *ls[1:]]
    ),
    "not an object": lambda ls: b"[1, 2]\n",
    "byte order mark": lambda ls: b"\xef\xbb\xbf" + _joined(ls),
}


@pytest.mark.parametrize("name", list(BAD_IMPORTS))
def test_import_refuses_what_replay_could_not_have_produced(
    tmp_path: Path, exported: list[bytes], name: str
) -> None:
    data = BAD_IMPORTS[name](exported)
    with Ledger(str(tmp_path / "target.db")) as target:
        with pytest.raises(LedgerError, match="line"):
            target.import_events(data.splitlines(keepends=True))
        assert target.last_position() == 0 and target.count_jobs() == 0
        assert target.verify().ok


@pytest.mark.parametrize("name", ["gap in versions", "partial last line", "not UTF-8"])
def test_refused_cli_import_leaves_no_new_file(
    tmp_path: Path, exported: list[bytes], name: str
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_bytes(BAD_IMPORTS[name](exported))
    before = files_in(tmp_path)
    result = cli("import", source, "--db", tmp_path / "new.db", cwd=tmp_path)
    err = assert_one_line_error(result)
    assert "line" in err
    assert files_in(tmp_path) == before
    from_stdin = cli("import", "-", "--db", "new2.db", cwd=tmp_path, stdin=source.read_bytes())
    assert_one_line_error(from_stdin)
    assert files_in(tmp_path) == before


def test_refused_cli_import_keeps_an_existing_empty_ledger_unchanged(
    tmp_path: Path, exported: list[bytes]
) -> None:
    target = tmp_path / "empty.db"
    Ledger(str(target)).close()
    content = target.read_bytes()
    source = tmp_path / "events.jsonl"
    source.write_bytes(BAD_IMPORTS["gap in versions"](exported))
    assert_one_line_error(cli("import", source, "--db", target, cwd=tmp_path))
    assert target.read_bytes() == content


def test_good_import_round_trips_with_blank_lines_and_crlf(
    tmp_path: Path, exported: list[bytes]
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\r\n".join(exported) + b"\r\n\r\n\n")
    result = cli("import", source, "--db", tmp_path / "copy.db", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with Ledger(str(tmp_path / "copy.db")) as copy, Ledger(str(tmp_path / "source.db")) as orig:
        assert list(copy.export_events()) == list(orig.export_events())
        assert copy.jobs() == orig.jobs()
        assert copy.verify().ok


def test_import_refuses_a_deeply_nested_line_with_a_ledger_error(
    tmp_path: Path, exported: list[bytes]
) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    data = _joined(
        [exported[0].replace(b'"config":{', b'"config":{"k":' + deep + b","), *exported[1:]]
    )
    with Ledger(str(tmp_path / "target.db")) as target, pytest.raises(LedgerError, match="line 1"):
        target.import_events(data.splitlines(keepends=True))
    source = tmp_path / "deep.jsonl"
    source.write_bytes(data)
    assert_one_line_error(cli("import", source, "--db", tmp_path / "n.db", cwd=tmp_path))


@pytest.mark.parametrize("config", [{"a": 2**63}, {"a": _nested(100)}])
def test_import_refuses_values_the_ledger_would_refuse(
    tmp_path: Path, exported: list[bytes], config: Any
) -> None:
    data = _joined(_edit(exported, 0, lambda r: r["data"].__setitem__("config", config)))
    with Ledger(str(tmp_path / "target.db")) as target, pytest.raises(LedgerError):
        target.import_events(data.splitlines(keepends=True))


def test_import_refuses_a_jump_in_positions(tmp_path: Path, exported: list[bytes]) -> None:
    data = _joined(_edit(exported, 6, lambda r: r.__setitem__("position", 1000)))
    with Ledger(str(tmp_path / "target.db")) as target, pytest.raises(LedgerError, match="line 7"):
        target.import_events(data.splitlines(keepends=True))


# 10. Opening a new file from several processes at once

_OPENER = textwrap.dedent(
    """
    import os, sys, time
    from ledger import Ledger, LedgerError
    go, paths = sys.argv[1], sys.argv[2:]
    for path in paths:
        signal = go + os.path.basename(path)
        end = time.monotonic() + 30
        while not os.path.exists(signal) and time.monotonic() < end:
            time.sleep(0.001)
        try:
            with Ledger(path) as ledger:
                ledger.create_job(1, {"pid": os.getpid()})
            print("ok", flush=True)
        except LedgerError as e:
            print(type(e).__name__, e, flush=True)
    """
)


def test_six_processes_opening_one_new_file_together_all_succeed(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"round{n}.db") for n in range(4)]
    go = str(tmp_path / "go-")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, go, *paths],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    time.sleep(0)  # no sleeping to synchronise: each round starts when its signal file appears
    for path in paths:
        Path(go + os.path.basename(path)).touch()
    outputs = [child.communicate(timeout=60) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert out.decode().split() == ["ok"] * len(paths), (out, err)
    for path in paths:
        with Ledger(path) as handle:
            assert handle.count_jobs() == 6
            assert handle.verify().ok


# 11. Damage that triggers cannot stop: verify reports, replay refuses, CLI says one line


def _damaged(tmp_path: Path, sql: str, *, drop_triggers: bool = False) -> tuple[str, str]:
    path = str(tmp_path / "damaged.db")
    with Ledger(path) as h:
        job_id = h.create_job(1, {"x": 1})
        h.claim("w")
        h.complete(job_id, "ok", worker_id="w")
        h.create_job(1, {"x": 2})
    conn = apsw.Connection(path)
    try:
        if drop_triggers:
            conn.execute("DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete")
        conn.execute(sql.replace("JOB", job_id))
    finally:
        conn.close()
    return path, job_id


_STRAY = (
    "INSERT INTO events (job_id, version, type, data, recorded_at) VALUES ('{job}', {version}, "
    "'{type}', '{data}', '2026-01-01T00:00:00.000000+00:00')"
)

LOG_DAMAGE = {
    "stray event, no created": _STRAY.format(
        job="ghost", version=1, type="progress", data='{"type":"progress","payload":{}}'
    ),
    "stray completed": _STRAY.format(
        job="ghost",
        version=1,
        type="completed",
        data='{"type":"completed","summary":"x","result_status":"success","cost_cents":0.0,'
        '"duration_seconds":null}',
    ),
    "stray version gap": _STRAY.format(
        job="JOB", version=9, type="progress", data='{"type":"progress","payload":{}}'
    ),
    "second created": _STRAY.format(
        job="JOB", version=4, type="created", data='{"type":"created","chat_id":1,"config":{}}'
    ),
    "stray nested too deep": _STRAY.format(
        job="JOB", version=4, type="progress", data='{"type":"progress","payload":%s}'
    ).replace("%s", "[" * 5000 + "]" * 5000),
}

EDITED_LOG = {
    "event data not JSON": "UPDATE events SET data = '{garbage' WHERE position = 1",
    "event time unreadable": "UPDATE events SET recorded_at = 'yesterday' WHERE position = 1",
    "event deleted": "DELETE FROM events WHERE position = 2",
    "event type column edited": "UPDATE events SET type = 'bogus' WHERE position = 1",
    "event version not a number": "UPDATE events SET version = 'x' WHERE position = 1",
}


def _check_log_damage(path: str) -> None:
    with Ledger(path, readonly=True) as handle:
        report = handle.verify()
        assert not report.ok
        assert any(d.position is not None and d.problem for d in report.differences)
    # the catch-up at open, or else the replay itself, refuses
    with pytest.raises(CorruptEvent), Ledger(path) as handle:
        handle.replay()
    before = Path(path).read_bytes()
    commands = (["verify"], ["replay"], ["replay", "--dry-run"])
    results = run_all([[*command, "--db", path] for command in commands], cwd=Path(path).parent)
    for command, result in zip(commands, results, strict=True):
        assert result.returncode != 0, command
        assert b"Traceback" not in result.stderr and b"internal error" not in result.stderr
        if command != ["verify"]:
            assert_one_line_error(result)
    assert Path(path).read_bytes() == before  # nothing "repaired" behind the user's back


@pytest.mark.parametrize("name", list(LOG_DAMAGE))
def test_stray_events_are_reported_by_verify_and_refused_by_replay(
    tmp_path: Path, name: str
) -> None:
    path, _ = _damaged(tmp_path, LOG_DAMAGE[name])
    _check_log_damage(path)


@pytest.mark.parametrize("name", list(EDITED_LOG))
def test_events_edited_with_another_tool_are_reported_and_refused(
    tmp_path: Path, name: str
) -> None:
    path, _ = _damaged(tmp_path, EDITED_LOG[name], drop_triggers=True)
    _check_log_damage(path)


@pytest.mark.parametrize(
    "sql",
    [
        _STRAY.format(job="JOB", version=4, type="progress", data="x").replace(
            "'x'",
            "CAST(X'7B2274797065223A2270726F6772657373222C227061796C6F6164223A22FF227D' AS TEXT)",
        ),
        "UPDATE events SET data = CAST(X'FF' AS TEXT) WHERE position = 1",
    ],
    ids=["stray", "edited"],
)
def test_event_with_invalid_utf8_is_reported_not_raised(tmp_path: Path, sql: str) -> None:
    path, _ = _damaged(tmp_path, sql, drop_triggers=True)
    _check_log_damage(path)


def test_verify_finds_hand_edited_projection_rows_and_replay_repairs(tmp_path: Path) -> None:
    path, job_id = _damaged(
        tmp_path, "UPDATE jobs SET status = 'failed', error_message = 'hand edit' WHERE id = 'JOB'"
    )
    result = cli("verify", "--db", path, cwd=tmp_path)
    assert result.returncode == 1
    assert b"NOT OK" in result.stdout and job_id.encode() in result.stdout
    with Ledger(path, readonly=True) as handle:
        columns = {d.column for d in handle.verify().differences}
        assert {"status", "error_message"} <= columns
    assert cli("replay", "--db", path, cwd=tmp_path).returncode == 0
    with Ledger(path) as handle:
        assert handle.verify().ok
        assert must(handle.get_job(job_id)).status is JobStatus.COMPLETED


def test_verify_cli_says_what_is_wrong_with_a_stray_event(tmp_path: Path) -> None:
    path, _ = _damaged(tmp_path, LOG_DAMAGE["stray event, no created"])
    result = cli("verify", "--db", path, cwd=tmp_path)
    assert result.returncode == 1
    assert b"created" in result.stdout.split(b"position", 1)[1]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE jobs SET created_at = 'garbage'",
        "UPDATE jobs SET config = CAST(X'FF' AS TEXT)",
    ],
    ids=["bad-time", "bad-utf8"],
)
def test_hand_edited_projection_rows_never_raise_raw_errors(tmp_path: Path, sql: str) -> None:
    path, job_id = _damaged(tmp_path, sql)
    with Ledger(path, readonly=True) as handle:
        assert not handle.verify().ok
        with contextlib.suppress(LedgerError):
            must(handle.get_job(job_id))
    result = cli("jobs", "--db", path, cwd=tmp_path)
    assert b"internal error" not in result.stderr and b"Traceback" not in result.stderr


# 12. Hard links


def test_a_hard_linked_ledger_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "one.db"
    with Ledger(path) as h:
        h.create_job(1, {})
    os.link(path, tmp_path / "two.db")
    content = path.read_bytes()
    for name in ("one.db", "two.db"):
        with pytest.raises(LedgerError, match="link"):
            Ledger(tmp_path / name)
        with pytest.raises(LedgerError, match="link"):
            Ledger(tmp_path / name, readonly=True)
        err = assert_one_line_error(cli("jobs", "--db", name, cwd=tmp_path))
        assert "link" in err
    assert path.read_bytes() == content
    os.unlink(tmp_path / "two.db")
    with Ledger(path) as h:
        assert h.count_jobs() == 1 and h.verify().ok


# 13. One snapshot (observable part: both answer on a busy ledger, consistent with the jobs)


def test_summary_and_stats_agree_with_the_jobs(opened: Ledger) -> None:
    ids = [opened.create_job(3, {"role": "r", "task": f"t{n}"}) for n in range(4)]
    opened.claim("w")
    opened.complete(ids[0], "done", worker_id="w", duration_seconds=3)
    opened.claim("w")
    opened.fail(ids[1], "the model refused", worker_id="w", retry=False)
    stats = opened.stats()
    assert sum(sum(q.values()) for q in stats.counts.values()) == opened.count_jobs()
    summary = opened.active_jobs_summary(3)
    assert ids[0][:8] in summary and ids[1][:8] in summary
    assert "the model refused" in summary  # the failed job's error is named


# ---------------------------------------------------------------------------------------------
# 14. `ledger demo --db FILE` never deletes what it did not make


def _foreign_files(tmp_path: Path) -> dict[str, Path]:
    other = tmp_path / "other.db"
    conn = apsw.Connection(str(other))
    conn.execute("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
    conn.close()
    other_wal = tmp_path / "other-wal.db"
    conn = apsw.Connection(str(other_wal))
    conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t (x); INSERT INTO t VALUES (1)")
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("my notes\n" * 200)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    mine = tmp_path / "mine.db"
    with Ledger(mine) as h:
        h.create_job(1, {"role": "mine"})
    directory = tmp_path / "adir"
    directory.mkdir()
    (directory / "keep").write_text("keep")
    return {
        "other app's db": other,
        "other app's WAL db": other_wal,
        "text file": text,
        "empty file": empty,
        "non-demo ledger": mine,
        "directory": directory,
    }


def test_demo_refuses_foreign_files_and_leaves_them_byte_identical(tmp_path: Path) -> None:
    files = _foreign_files(tmp_path)
    before = {
        name: (p.read_bytes() if p.is_file() else sorted(os.listdir(p)))
        for name, p in files.items()
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "ledger", "demo", "--db", str(path)],
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, path in files.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert_one_line_error(result)
        path = files[name]
        assert path.exists(), name
        now = path.read_bytes() if path.is_file() else sorted(os.listdir(path))
        assert now == before[name], name
    with Ledger(files["non-demo ledger"]) as h:
        assert h.count_jobs() == 1


# 16 (and 14, the happy path). The demo prints the real output of the commands it shows


def test_demo_prints_the_real_output_of_the_commands_it_shows(tmp_path: Path) -> None:
    result = cli("demo", "--db", "d.db", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    sections = re.split(r"^\$ ledger ", text, flags=re.M)[1:]
    shown = {s.split("\n", 1)[0]: s.split("\n", 1)[1].strip("\n") for s in sections}
    assert any(c.startswith("verify") for c in shown)
    for suffix in ("", "-wal"):  # a copy of the demo's ledger is a demo ledger too
        if (tmp_path / f"d.db{suffix}").exists():
            (tmp_path / f"copy.db{suffix}").write_bytes((tmp_path / f"d.db{suffix}").read_bytes())
    commands = [
        command
        for command in shown
        if command.split()[0] in ("events", "summary", "stats", "verify", "jobs")
    ]
    # the reruns, and a second demo run on the copy (it reuses a file the demo made), together
    argvs: list[list[str | bytes]] = [[*c.split()] for c in commands]
    results = run_all([*argvs, ["demo", "--db", "copy.db"]], cwd=tmp_path)
    assert results[-1].returncode == 0, results[-1].stderr
    checked = 0
    for command, again in zip(commands, results, strict=False):
        name = command.split()[0]
        output = shown[command].split("\n\nexplore it", 1)[0].strip("\n").rstrip()
        assert again.returncode == 0, (command, again.stderr)
        rerun = again.stdout.decode().strip("\n").rstrip()
        if name == "jobs":  # the AGE column moved on since the demo ran
            output, rerun = (re.sub(r"\s\d+(\.\d)?[smhd]\s", " AGE ", t) for t in (output, rerun))
        assert rerun == output, command
        checked += 1
    assert checked >= 4


# ---------------------------------------------------------------------------------------------
# 15. The command line


@pytest.fixture
def chats(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A ledger with jobs in chats 0, 5 and 6; one failed, one completed with CJK text."""
    path = str(tmp_path / "cli.db")
    with Ledger(path) as h:
        ids = {
            "zero": h.create_job(0, {"role": "zero"}),
            "failed": h.create_job(5, {"role": "coder", "task": "fix"}),
            "cjk": h.create_job(5, {"role": "审查员", "task": "x"}),
            "six": h.create_job(6, {"role": "other"}),
        }
        h.cancel(ids["zero"])
        h.claim("w")  # zero is cancelled: this is "failed"
        h.fail(ids["failed"], "ZeroDivisionError: division by zero", worker_id="w", retry=False)
        h.claim("w")
        h.complete(ids["cjk"], "完成了所有的工作", "success", 1.5, 3, worker_id="w")
    return path, ids


def test_follow_with_chat_shows_jobs_created_while_following(
    tmp_path: Path, chats: tuple[str, dict[str, str]]
) -> None:
    path, ids = chats
    with Ledger(path) as h:
        existing = len(list(h.iter_events(chat_id=5)))
    proc = start_cli(
        "events", "--follow", "--chat", "5", "--count", str(existing + 2), "--db", path,
        "--interval", "0.05",
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    killer = threading.Timer(DEADLINE, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(existing)]  # it is following now
        with Ledger(path) as h:
            h.create_job(6, {"role": "not this chat"})
            new = h.create_job(5, {"role": "new"})
            h.claim("w2")  # the oldest pending is "six" (chat 6)
            h.log_event(new, EventType.PROGRESS, {"m": 1})
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        killer.cancel()
    assert proc.returncode == 0, err
    lines += out.splitlines(keepends=True)
    assert len(lines) == existing + 2
    followed = b"".join(lines[existing:]).decode()
    assert followed.count(new[:8]) == 2  # its created and its progress event
    assert "created" in followed and "progress" in followed
    assert ids["six"][:8] not in b"".join(lines).decode()


def test_chat_zero_is_a_filter(tmp_path: Path, chats: tuple[str, dict[str, str]]) -> None:
    path, ids = chats
    events = cli("events", "--chat", "0", "--db", path, cwd=tmp_path)
    jobs = cli("jobs", "--chat", "0", "--db", path, cwd=tmp_path)
    for result in (events, jobs):
        assert result.returncode == 0
        text = result.stdout.decode()
        assert ids["zero"][:8] in text
        assert all(ids[k][:8] not in text for k in ("failed", "cjk", "six"))


def test_count_zero_prints_nothing(tmp_path: Path, chats: tuple[str, dict[str, str]]) -> None:
    path, _ = chats
    for args in (["events"], ["events", "--follow"]):
        result = cli(*args, "--count", "0", "--db", path, cwd=tmp_path, timeout=10)
        assert result.returncode == 0 and result.stdout == b"" and result.stderr == b""


def test_replay_dry_run_counts_rows_not_columns(
    tmp_path: Path, chats: tuple[str, dict[str, str]]
) -> None:
    path, ids = chats
    conn = apsw.Connection(path)
    conn.execute(
        "UPDATE jobs SET result_summary = 'x', cost_cents = 99, duration_seconds = 9 WHERE id = ?",
        (ids["cjk"],),
    )
    conn.execute("UPDATE jobs SET error_message = 'y' WHERE id = ?", (ids["failed"],))
    conn.close()
    text = cli("replay", "--dry-run", "--db", path, cwd=tmp_path).stdout.decode()
    assert "2 projection rows would change" in text and "4 differing values" in text
    data = json.loads(cli("replay", "--dry-run", "--json", "--db", path, cwd=tmp_path).stdout)
    assert data["rows_that_would_change"] == 2 and data["differences"] == 4
    with Ledger(path, readonly=True) as h:
        assert not h.verify().ok  # dry run: the live file is untouched


def test_user_errors_are_one_line_on_stderr(
    tmp_path: Path, chats: tuple[str, dict[str, str]]
) -> None:
    path, _ = chats
    (tmp_path / "adir").mkdir()
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "broken_import.py").write_text("raise RuntimeError('config missing')\n")
    (tmp_path / "broken_syntax.py").write_text("def handle(:\n")
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(5)\n")
    (tmp_path / "not_callable.py").write_text("handle = 5\n")
    cases: list[list[str | bytes]] = [
        ["jobs", "--db", "adir"],
        ["work", "x:y", "--db", "adir"],
        ["import", "notes.txt", "--db", "adir"],
        ["demo", "--db", "adir"],
        ["jobs", "--db", b"\xff.db"],
        ["work", "broken_import:handle", "--db", path],
        ["work", "broken_syntax:handle", "--db", path],
        ["work", "exits_on_import:handle", "--db", path],
        ["work", "not_callable:handle", "--db", path],
        ["work", "no_such_module:handle", "--db", path],
        ["work", "os:no_such_function", "--db", path],
        ["work", "nocolon", "--db", path],
        ["jobs", "--db", "missing.db"],
        ["jobs", "--db", "notes.txt"],
        ["verify", "--db", "notes.txt"],
        ["show", "zzzz", "--db", path],
        ["events", "--job", "zzzz", "--db", path],
        ["summary", "99999999999999999999", "--db", path],
        ["events", "--after", "99999999999999999999", "--db", path],
        ["jobs", "--limit", "99999999999999999999", "--db", path],
        ["import", "no_such_file.jsonl", "--db", "new.db"],
        ["import", "notes.txt", "--db", "new.db"],
        ["import", "notes.txt", "--db", path],
        ["events", "--follow", "--db", "missing.db"],
        ["work", "x:y", "--db", "notes.txt"],
        ["work", "not_callable:handle", "--grace", "nan", "--db", path],
        ["work", "not_callable:handle", "--retry-delay", "-5", "--db", path],
        ["show", "", "--db", path],
    ]
    before = files_in(tmp_path)
    for case, result in zip(cases, run_all(cases, cwd=tmp_path), strict=True):
        try:
            assert_one_line_error(result)
        except AssertionError as e:
            raise AssertionError(f"{case}: {e}") from None
    created = files_in(tmp_path) - before
    assert not {n for n in created if n.startswith(("missing", "new", "\udcff", "\ufffd"))}, created
    assert not any(n.endswith(".db") and n.startswith("\udcff") for n in files_in(tmp_path))


def test_global_options_work_before_and_after_the_command(
    tmp_path: Path, chats: tuple[str, dict[str, str]]
) -> None:
    path, _ = chats
    env = child_env()
    env["LEDGER_DB"] = str(tmp_path / "elsewhere.db")
    after = cli("jobs", "--db", path, cwd=tmp_path, env=env)
    before = cli("--db", path, "jobs", cwd=tmp_path, env=env)
    assert after.returncode == before.returncode == 0
    strip_age = re.compile(rb"\d+(\.\d)?[smhd]")
    assert strip_age.sub(b"AGE", after.stdout) == strip_age.sub(b"AGE", before.stdout)
    assert b"coder" in after.stdout
    debug_first = cli("--debug", "--db", path, "verify", cwd=tmp_path, env=env)
    assert debug_first.returncode == 0 and b"ok" in debug_first.stdout
    assert not (tmp_path / "elsewhere.db").exists()


def test_summary_names_a_failed_jobs_error(
    tmp_path: Path, chats: tuple[str, dict[str, str]]
) -> None:
    path, ids = chats
    result = cli("summary", "5", "--db", path, cwd=tmp_path)
    assert result.returncode == 0
    line = next(ln for ln in result.stdout.decode().splitlines() if ids["failed"][:8] in ln)
    assert "failed" in line and "ZeroDivisionError: division by zero" in line


def test_times_show_their_zone(tmp_path: Path, chats: tuple[str, dict[str, str]]) -> None:
    path, ids = chats
    events = cli("events", "--db", path, cwd=tmp_path).stdout.decode().splitlines()
    assert events and all(
        re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(Z|[+-]\d\d:?\d\d)", e) for e in events
    )
    shown = cli("show", ids["cjk"], "--db", path, cwd=tmp_path).stdout.decode()
    for field in ("created_at", "started_at", "completed_at", "updated_at"):
        value = next(ln for ln in shown.splitlines() if ln.startswith(field)).split()[-1]
        assert value.endswith(("Z", "+00:00")), (field, value)


def test_a_list_cut_at_its_limit_says_so(tmp_path: Path, chats: tuple[str, dict[str, str]]) -> None:
    path, _ = chats
    cut = cli("jobs", "--limit", "2", "--db", path, cwd=tmp_path)
    assert cut.returncode == 0
    assert len(cut.stdout.decode().strip().splitlines()) == 3  # header + 2
    assert b"--limit" in cut.stdout + cut.stderr and b"more" in cut.stdout + cut.stderr
    whole = cli("jobs", "--limit", "4", "--db", path, cwd=tmp_path)
    assert len(whole.stdout.decode().strip().splitlines()) == 5
    assert b"more" not in whole.stderr
    as_json = cli("jobs", "--limit", "2", "--json", "--db", path, cwd=tmp_path)
    assert len(json.loads(as_json.stdout)) == 2  # stdout stays valid JSON


def _columns(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def test_columns_stay_aligned_with_cjk_text(
    tmp_path: Path, chats: tuple[str, dict[str, str]]
) -> None:
    path, _ = chats
    lines = cli("jobs", "--db", path, cwd=tmp_path).stdout.decode().splitlines()
    header = lines[0]
    for title in ("ATTEMPTS", "AGE", "SUMMARY/ERROR"):
        at = _columns(header[: header.index(title)])
        for line in lines[1:]:
            # the text that starts at that display column begins a field (after two spaces)
            if _columns(line) <= at:
                continue  # an empty last column (the line is right-stripped)
            used, index = 0, 0
            while used < at:
                used += _columns(line[index])
                index += 1
            assert used == at and line[index - 2 : index] == "  " and line[index] != " ", (
                title,
                line,
            )


def test_durations_under_a_minute_show_tenths(
    tmp_path: Path, chats: tuple[str, dict[str, str]]
) -> None:
    path, _ = chats
    jobs = cli("jobs", "--db", path, cwd=tmp_path).stdout.decode().splitlines()[1:]
    assert all(re.search(r"\s\d+\.\ds(\s|$)", line) for line in jobs), jobs
    stats = cli("stats", "--db", path, cwd=tmp_path).stdout.decode()
    assert "p50 3.0s" in stats


def test_demo_rejects_a_db_before_the_command_name_the_same_way(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("mine")
    for args in (["--db", "notes.txt", "demo"], ["demo", "--db", "notes.txt"]):
        assert_one_line_error(cli(*args, cwd=tmp_path))
    assert text.read_text() == "mine"


def test_events_with_an_empty_job_id_is_refused(
    tmp_path: Path, chats: tuple[str, dict[str, str]]
) -> None:
    path, _ = chats
    assert_one_line_error(cli("events", "--job", "", "--db", path, cwd=tmp_path))


def test_work_refuses_a_negative_max_jobs(workdir: Path, db: str) -> None:
    result = cli("work", "acc_handlers:by_kind", "--max-jobs", "-1", "--db", db, cwd=workdir)
    assert result.returncode != 0


def test_idle_worker_stops_at_once_on_sigterm(workdir: Path, db: str) -> None:
    log_path = workdir / "worker.log"
    with log_path.open("wb") as log_file:
        proc = start_worker(workdir, db, "by_kind", stderr=log_file)
        wait_for_text(log_path, "started", proc)
        proc.send_signal(signal.SIGTERM)
        assert finish(proc, timeout=10) == 0
    assert "stopped" in log_path.read_text()


def test_summary_and_stats_read_one_snapshot_while_jobs_finish(db: str) -> None:
    Ledger(db).close()
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            with Ledger(db) as writer:
                for n in range(200):
                    job_id = writer.create_job(3, {"role": "r", "task": str(n)})
                    claimed = writer.claim("w")
                    assert claimed is not None and claimed.id == job_id
                    writer.complete(job_id, "done", worker_id="w")
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            stop.set()

    thread = threading.Thread(target=churn)
    thread.start()
    with Ledger(db, readonly=True) as reader:
        while not stop.is_set():
            summary = reader.active_jobs_summary(3)
            ids = re.findall(r"^- ([0-9a-f]{8}) ", summary, flags=re.M)
            assert len(ids) == len(set(ids)), summary  # never both running and finished
            stats = reader.stats()
            finished = stats.counts.get("completed", {}).get("default", 0)
            assert stats.finished_last_hour.get("completed", 0) <= finished
    thread.join()
    assert not errors, errors


def test_stale_context_of_the_same_worker_cannot_log_into_a_later_attempt(
    opened: Ledger, clock: Clock
) -> None:
    job_id = opened.create_job(1, {}, max_attempts=3)
    first = must(opened.claim("A", lease=10))
    stale = JobContext(opened, first, "A")
    clock.advance(30)
    again = must(opened.claim("A", lease=10))
    assert again.id == job_id and again.attempts == 2
    before = opened.last_position()
    assert stale.log(EventType.PROGRESS, {"from": "attempt 1"}) is False
    assert opened.last_position() == before
