"""``ledger demo``: two worker processes working a dozen simulated subagent jobs on ./demo.db.

It shows every outcome: jobs that complete with progress and tool calls, one that fails once and
succeeds on its retry, one that fails for good, and one cancelled while its handler runs (the
handler sees ``ctx.cancelled`` and stops). Then it runs real CLI commands on the file (jobs,
events, summary, stats, verify, replay) through `ledger.cli.main` and prints what they printed.

The demo deletes nothing it did not make. Its jobs carry a mark (chat 42, queue ``demo``, an
idempotency key starting ``ledger-demo:``); an existing file is reused, that is replaced by a
fresh demo ledger, only if it is a ledger whose every job carries that mark. Any other file, a
directory, another program's SQLite database or a ledger with other jobs in it, is refused with
one line and left exactly as it was.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .api import Ledger
from .backends.sqlite.events_table import APPLICATION_ID
from .cli import format as fmt
from .domain.model import EventType, Job, Result
from .errors import InvalidArgument, LedgerError
from .worker import JobContext

CHAT_ID = 42
QUEUE = "demo"
KEY_PREFIX = "ledger-demo:"
SIDECARS = ("-wal", "-shm")
SQLITE_MAGIC = b"SQLite format 3\x00"
TASKS = [
    ("researcher", "find prior art on event-sourced job queues"),
    ("coder", "write the claim query"),
    ("reviewer", "review the lease rescue"),
    ("coder", "add retries with backoff"),
    ("tester", "fuzz the public API"),
    ("writer", "draft the README quick start"),
    ("coder", "benchmark against raw APSW"),
    ("researcher", "compare River and Oban rescuers"),
    ("coder", "export and import as JSON lines"),
]


def simulated_subagent(job: Job, ctx: JobContext) -> Result:
    """A stand-in for an LLM subagent: a few steps of progress and tool calls."""
    task = job.config.get("task", "")
    ctx.log(EventType.STARTED, {"role": job.config.get("role"), "task": task})
    if job.config.get("slow"):
        deadline = time.monotonic() + 30
        while not ctx.cancelled and time.monotonic() < deadline:
            ctx.log(EventType.PROGRESS, {"message": "still thinking..."})
            time.sleep(0.2)
        raise RuntimeError("stopped: the job was cancelled")
    for step in range(3):
        time.sleep(0.05 + 0.05 * step)
        ctx.log(
            EventType.TOOL_CALL, {"tool": ["search", "read_file", "run_tests"][step], "step": step}
        )
        ctx.log(EventType.PROGRESS, {"message": f"step {step + 1} of 3"})
    if job.config.get("fail_always"):
        raise RuntimeError("the model refused the task")
    if job.config.get("flaky") and job.attempts == 1:
        raise ConnectionError("upstream API timed out")
    return Result(f"done: {task}", "success", cost_cents=1.25 * (1 + len(task) % 4))


def _refuse(path: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        "demo file", path, f"{why}; the demo only replaces a ledger it made: give --db a new path"
    )


def is_demo_job(job: Job) -> bool:
    """Whether a job carries the demo's mark (what `_demo_specs` gives every job)."""
    key = job.idempotency_key or ""
    return job.chat_id == CHAT_ID and job.queue == QUEUE and key.startswith(KEY_PREFIX)


def _header_says_ledger(path: str) -> str | None:
    """Why the file's first 100 bytes (SQLite's header) say it is no ledger, or None if they say
    it is one (a ledger's application id, see `store.APPLICATION_ID`). Read as plain bytes, so a
    foreign file is refused without SQLite ever opening it: a read-only SQLite open of another
    program's WAL database leaves -wal and -shm files beside it. Call it only while this process
    has no SQLite connection to the file (closing any descriptor of a file drops the process's
    POSIX locks on it)."""
    with open(path, "rb") as file:
        header = file.read(100)
    if len(header) < 100:
        return "it is not an SQLite file (shorter than an SQLite header)"
    if not header.startswith(SQLITE_MAGIC):
        return "it is not an SQLite file"
    app_id = int.from_bytes(header[68:72], "big")
    if app_id != APPLICATION_ID:
        return f"it is another program's SQLite database (application id {app_id:#x})"
    return None


def check_demo_ledger(path: str) -> None:
    """Raise unless ``path`` is a ledger the demo made: its header names a ledger, it opens as
    one (read-only, so nothing is written) and every one of its jobs carries the demo's mark. An
    empty ledger is refused too: nothing says the demo made it."""
    try:
        why = _header_says_ledger(path)
    except OSError as e:
        raise _refuse(path, f"it cannot be read ({e.strerror})") from e
    if why is not None:
        raise _refuse(path, why)
    try:
        with Ledger(path, readonly=True) as ledger:
            total = ledger.count_jobs()
            marked = [j for j in ledger.jobs(queue=QUEUE, limit=total + 1) if is_demo_job(j)]
    except LedgerError as e:
        raise _refuse(path, f"it exists and is not a ledger ({e})") from e
    if total == 0:
        raise _refuse(path, "it is a ledger with no jobs, not one the demo made")
    if len(marked) != total:
        raise _refuse(
            path, f"it is a ledger with {total - len(marked)} job(s) the demo did not make"
        )


def prepare(path: str) -> None:
    """Make room for a fresh demo ledger at ``path``: delete the file (and its -wal and -shm)
    only if it is a demo ledger; refuse anything else before touching it."""
    if os.path.isdir(path):
        raise _refuse(path, "it is a directory")
    if not os.path.lexists(path):
        leftovers = [path + s for s in SIDECARS if os.path.lexists(path + s)]
        if leftovers:
            raise _refuse(path, f"{leftovers[0]} exists without the file it belongs to")
        return
    check_demo_ledger(path)
    for suffix in ("", *SIDECARS):
        Path(path + suffix).unlink(missing_ok=True)


def _demo_specs() -> list[dict[str, object]]:
    """The dozen jobs, each with the demo's mark (see `is_demo_job`)."""
    specs: list[dict[str, object]] = [{"config": {"role": r, "task": t}} for r, t in TASKS]
    specs.append(
        {
            "config": {"role": "coder", "task": "flaky network call", "flaky": True},
            "max_attempts": 3,
        }
    )
    specs.append({"config": {"role": "critic", "task": "an impossible ask", "fail_always": True}})
    specs.append(
        {"config": {"role": "planner", "task": "a slow plan", "slow": True}, "priority": 5}
    )
    for n, spec in enumerate(specs):
        spec.update(chat_id=CHAT_ID, queue=QUEUE, idempotency_key=f"{KEY_PREFIX}{n}")
    return specs


def _spawn_worker(path: str, name: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "ledger",
        "work",
        "ledger.demo:simulated_subagent",
        "--db",
        path,
        "--worker-id",
        name,
        "--queue",
        QUEUE,
        "--retry-delay",
        "0.3",
        "--poll-interval",
        "0.1",
        "--lease",
        "10",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_demo(path: str = "demo.db") -> int:
    """Run the demo on ``path``; 0 when the final `ledger verify` is ok. Raises `InvalidArgument`
    (and touches nothing) when ``path`` exists and is not a demo ledger."""
    prepare(path)
    print(f"demo: a fresh ledger at {path}, twelve subagent jobs for chat {CHAT_ID}\n")
    with Ledger(path) as ledger:
        ids = ledger.create_jobs(_demo_specs())
        flaky_id, slow_id = ids[-3], ids[-1]
        workers = [_spawn_worker(path, f"worker-{n}") for n in (1, 2)]
        try:
            _watch(ledger, slow_id)
        finally:
            for process in workers:
                process.send_signal(signal.SIGTERM)
            for process in workers:
                process.wait(timeout=30)
    db = ["--db", path]
    show = ["claimed", "error", "retry_scheduled", "completed"]
    run("jobs", "--chat", str(CHAT_ID), *db)
    run("events", "--job", flaky_id[:8], *(a for t in show for a in ("--type", t)), *db)
    run("summary", str(CHAT_ID), *db)
    run("stats", *db)
    verified = run("verify", *db)
    run("replay", *db)
    print(f"\nexplore it: ledger show {slow_id[:8]} --db {path}; ledger events --db {path}")
    return verified


def run(*argv: str) -> int:
    """Run one real CLI command in this process, print it as typed and then what it printed
    (stdout, then stderr); return its exit code."""
    from .cli import main  # here: the CLI imports this module for its `demo` command

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    print(f"\n$ ledger {' '.join(argv)}")
    print(out.getvalue() + err.getvalue(), end="")
    if code != 0:
        print(f"(exit status {code})")
    return code


def _watch(ledger: Ledger, slow_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    cancelled = False
    last = ""
    while time.monotonic() < deadline:
        jobs = ledger.jobs(chat_id=CHAT_ID)
        counts = {
            s: sum(1 for j in jobs if j.status == s)
            for s in ("pending", "running", "completed", "failed", "cancelled")
        }
        line = "  ".join(f"{k} {v}" for k, v in counts.items())
        if line != last:
            print(f"[{_clock(ledger)}] {line}")
            last = line
        slow = next(j for j in jobs if j.id == slow_id)
        if not cancelled and slow.status == "running":
            ledger.cancel(slow_id, reason="demo: the user changed their mind")
            print(f"[{_clock(ledger)}] cancelled {slow_id[:8]} while it was running")
            cancelled = True
        if all(j.status.is_final for j in jobs):
            return
        time.sleep(0.25)
    print("demo: timed out waiting for the workers", file=sys.stderr)


def _clock(ledger: Ledger) -> str:
    """The ledger's time of day with its zone (UTC), e.g. ``12:00:01Z``."""
    return fmt.timestamp(ledger.now()).split(" ")[1]


if __name__ == "__main__":
    try:
        sys.exit(run_demo(os.environ.get("LEDGER_DEMO_DB", "demo.db")))
    except LedgerError as e:
        sys.exit(f"ledger demo: error: {e}")
