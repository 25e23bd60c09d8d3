"""``ledger demo``: two worker processes working a dozen simulated subagent jobs on ./demo.db.

It shows every outcome: jobs that complete with progress and tool calls, one that fails once and
succeeds on its retry, one that fails for good, and one cancelled while its handler runs (the
handler sees ``ctx.cancelled`` and stops). It ends with the summary, stats, verify and replay.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import cli_format as fmt
from .core import Ledger
from .model import EventType, Job, Result
from .worker import JobContext

CHAT_ID = 42
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


def _fresh(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


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
        "--retry-delay",
        "0.3",
        "--poll-interval",
        "0.1",
        "--lease",
        "10",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_demo(path: str = "demo.db") -> int:
    _fresh(path)
    print(f"demo: a fresh ledger at {path}, twelve subagent jobs for chat {CHAT_ID}\n")
    with Ledger(path) as ledger:
        specs: list[dict[str, object]] = [
            {"chat_id": CHAT_ID, "config": {"role": r, "task": t}} for r, t in TASKS
        ]
        specs.append(
            {
                "chat_id": CHAT_ID,
                "config": {"role": "coder", "task": "flaky network call", "flaky": True},
                "max_attempts": 3,
            }
        )
        specs.append(
            {
                "chat_id": CHAT_ID,
                "config": {"role": "critic", "task": "an impossible ask", "fail_always": True},
            }
        )
        specs.append(
            {
                "chat_id": CHAT_ID,
                "config": {"role": "planner", "task": "a slow plan", "slow": True},
                "priority": 5,
            }
        )
        ids = ledger.create_jobs(specs)
        slow_id = ids[-1]
        workers = [_spawn_worker(path, f"worker-{n}") for n in (1, 2)]
        try:
            _watch(ledger, slow_id)
        finally:
            for process in workers:
                process.send_signal(signal.SIGTERM)
            for process in workers:
                process.wait(timeout=30)
        now = ledger.now()
        print("\n$ ledger jobs\n" + fmt.job_rows(now, ledger.jobs(chat_id=CHAT_ID)))
        print(f"\n$ ledger summary {CHAT_ID}\n" + ledger.active_jobs_summary(CHAT_ID).rstrip())
        stats = ledger.stats()
        counts = {s: sum(q.values()) for s, q in stats.counts.items()}
        print(
            f"\n$ ledger stats\n{counts}, total cost {stats.total_cost_cents:.2f} cents, "
            f"p50 {stats.duration_p50}s"
        )
        report = ledger.verify()
        print(
            f"\n$ ledger verify\n{'ok' if report.ok else 'NOT OK'}: {report.events} events, "
            f"{report.jobs} jobs"
        )
        replayed = ledger.replay()
        print(
            f"\n$ ledger replay\nreplayed {replayed.events} events into {replayed.jobs} jobs "
            f"in {replayed.seconds:.3f}s"
        )
    print(
        f"\nexplore it: python -m ledger jobs --db {path}; "
        f"python -m ledger show {slow_id[:8]} --db {path}"
    )
    return 0 if report.ok else 1


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
            print(f"[{time.strftime('%H:%M:%S')}] {line}")
            last = line
        slow = next(j for j in jobs if j.id == slow_id)
        if not cancelled and slow.status == "running":
            ledger.cancel(slow_id, reason="demo: the user changed their mind")
            print(f"[{time.strftime('%H:%M:%S')}] cancelled {slow_id[:8]} while it was running")
            cancelled = True
        if all(j.status.is_final for j in jobs):
            return
        time.sleep(0.25)
    print("demo: timed out waiting for the workers", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_demo(os.environ.get("LEDGER_DEMO_DB", "demo.db")))
