"""Stress: subagent trees, charges racing cascading cancels, on PostgreSQL.

Counts the transactions PostgreSQL aborted and the backend ran again (INFO records of
``ledger.backends.postgres.backend`` with "PostgreSQL aborted the transaction"), per process,
by SQLSTATE; counts LedgerError subclasses by type; verify() at the end; pulls the deadlock
reports out of the server log.

    python benchmarks/stress_lock_order.py [--runs 3] [--load 30] [--harsh]

A manual harness (not collected by pytest): about 50 s a run on 2 cores. Round 11: 0 aborted
transactions in five runs, verify ok.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import logging
import multiprocessing as mp
import os
import random
import re
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

LOGGER = "ledger.backends.postgres.backend"
CHATS = (1, 2, 3)
WORKER_PROCS = 3
THREADS = 4
LEADS_PER_ROUND = 30
ROUND_SECONDS = 1.5
_SQLSTATE = re.compile(r"PostgreSQL aborted the transaction \((\w{5}): ")


class RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.by_state: collections.Counter[str] = collections.Counter()
        self.by_doing: collections.Counter[str] = collections.Counter()
        self.messages: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "PostgreSQL aborted the transaction" not in msg:
            return
        m = _SQLSTATE.search(msg)
        state = m.group(1) if m else "?"
        doing = msg.split(": PostgreSQL aborted", 1)[0]
        doing = re.sub(r"\b[0-9a-f]{8,}\b|\b[0-9A-Z]{20,}\b", "<id>", doing)
        with self._lock2:
            self.by_state[state] += 1
            self.by_doing[f"{state} {doing}"] += 1
            if len(self.messages) < 400:
                self.messages.append(msg)


def install_counter() -> RetryCounter:
    handler = RetryCounter()
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


class Errors:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, str] = {}
        self.lock = threading.Lock()

    def add(self, where: str, e: BaseException) -> None:
        name = type(e).__name__
        with self.lock:
            self.counts[f"{name}@{where}"] += 1
            if name not in ("InvalidTransition", "LeaseLost", "JobNotFound"):
                self.samples.setdefault(name, f"{where}: {e!r}\n" + traceback.format_exc()[-3000:])


def report(out: mp.Queue, role: str, counter: RetryCounter, errors: Errors, **extra) -> None:
    out.put(
        {
            "role": role,
            "pid": os.getpid(),
            "retries": dict(counter.by_state),
            "retries_by_doing": dict(counter.by_doing),
            "messages": counter.messages,
            "errors": dict(errors.counts),
            "samples": errors.samples,
            **extra,
        }
    )


# -- processes ------------------------------------------------------------------------------


def setup_proc(url: str, load: float, stop, leads_q: mp.Queue, out: mp.Queue) -> None:
    from ledger import Ledger, LedgerError

    counter, errors = install_counter(), Errors()
    led = Ledger(url)
    created = 0
    rounds = 0
    try:
        for chat in CHATS:
            led.set_budget(chat, 10**9)
        end = time.monotonic() + load
        while time.monotonic() < end:
            t0 = time.monotonic()
            ids = []
            for i in range(LEADS_PER_ROUND):
                try:
                    jid = led.create_job(
                        random.choice(CHATS),
                        {"kind": "lead", "round": rounds, "i": i},
                        max_attempts=random.choice((1, 2)),
                    )
                    ids.append(jid)
                    created += 1
                except LedgerError as e:
                    errors.add("create_lead", e)
            for jid in ids:
                leads_q.put(jid)
            rounds += 1
            time.sleep(max(0.0, ROUND_SECONDS - (time.monotonic() - t0)))
    finally:
        stop.set()
        leads_q.put(None)
        led.close()
        report(out, "setup", counter, errors, created=created, rounds=rounds)


def worker_proc(url: str, index: int, stop, out: mp.Queue) -> None:
    from ledger import Ledger, LedgerError

    counter, errors = install_counter(), Errors()
    led = Ledger(url)
    stats: collections.Counter[str] = collections.Counter()
    slock = threading.Lock()

    def bump(key: str, n: int = 1) -> None:
        with slock:
            stats[key] += n

    def spawn(job, kind: str, n: int) -> list[str]:
        ids = []
        for _ in range(n):
            try:
                ids.append(
                    led.create_job(
                        job.chat_id,
                        {"kind": kind, "parent": job.id},
                        parent_id=job.id,
                        max_attempts=random.choice((1, 2)),
                    )
                )
                bump("created")
            except LedgerError as e:
                errors.add(f"create_{kind}", e)
        return ids

    def thread(t: int) -> None:
        wid = f"w{index}-{t}"
        idle_since = None
        while True:
            try:
                job = led.claim(wid, lease=60)
            except LedgerError as e:
                errors.add("claim", e)
                continue
            if job is None:
                if stop.is_set():
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 3.0:
                        return
                time.sleep(0.02)
                continue
            idle_since = None
            bump("claimed")
            kind = (job.config or {}).get("kind", "?")
            # subagents: a lead spawns 2-4 children (some with grandchildren right away);
            # a child sometimes spawns grandchildren when it runs
            if kind == "lead":
                for child in spawn(job, "child", random.randint(2, 4)):
                    if random.random() < 0.4:
                        try:
                            cjob = led.get_job(child)
                        except LedgerError as e:
                            errors.add("get_job", e)
                            cjob = None
                        if cjob is not None:
                            spawn(cjob, "grandchild", random.randint(1, 2))
            elif kind == "child" and random.random() < 0.3:
                spawn(job, "grandchild", random.randint(1, 2))
            lost = False
            for _ in range(random.randint(1, 3)):
                time.sleep(random.random() * 0.01)
                try:
                    led.charge(job.id, random.randint(1, 5), worker_id=wid)
                    bump("charged")
                except LedgerError as e:
                    errors.add("charge", e)
                    lost = True
                    break
            if lost:
                continue
            try:
                if random.random() < 0.8:
                    led.complete(
                        job.id, "done", "success", cost_cents=random.randint(0, 5), worker_id=wid
                    )
                    bump("completed")
                else:
                    led.fail(job.id, "boom", worker_id=wid)
                    bump("failed")
            except LedgerError as e:
                errors.add("finish", e)

    threads = [threading.Thread(target=thread, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    led.close()
    report(out, f"worker{index}", counter, errors, stats=dict(stats))


def canceller_proc(url: str, stop, leads_q: mp.Queue, out: mp.Queue, harsh: bool = False) -> None:
    from ledger import Ledger, LedgerError

    counter, errors = install_counter(), Errors()
    led = Ledger(url)
    stats: collections.Counter[str] = collections.Counter()
    slock = threading.Lock()
    leads: list[str] = []
    done = threading.Event()

    def bump(key: str, n: int = 1) -> None:
        with slock:
            stats[key] += n

    def take() -> None:
        while True:
            try:
                jid = leads_q.get_nowait()
            except Exception:
                return
            if jid is None:
                done.set()
            else:
                with slock:
                    leads.append(jid)

    def loop(t: int) -> None:
        while not (done.is_set() and stop.is_set()):
            if t == 0:
                take()
            with slock:
                pool = list(leads)
            if not pool:
                time.sleep(0.05)
                continue
            recent = pool[-40:]  # mostly the ones still being worked on
            target = random.choice(recent if random.random() < 0.8 else pool)
            if harsh and random.random() < 0.4:  # a subtree from the middle of a tree
                try:
                    below = led.descendants(target)
                    if below:
                        target = random.choice(below).id
                        bump("mid_tree_targets")
                except LedgerError as e:
                    errors.add("descendants", e)
            try:
                if led.cancel(target, cascade=True, reason="stress"):
                    bump("cancelled")
                else:
                    bump("cancel_noop")
            except LedgerError as e:
                errors.add("cancel", e)
            r = random.random()
            if r < 0.10:
                try:
                    failed = [j for j in led.jobs(status="failed", limit=50) if j.parent_id is None]
                    if failed:
                        led.retry(random.choice(failed).id, by="stress")
                        bump("retried")
                except LedgerError as e:
                    errors.add("retry", e)
            elif r < 0.13:
                try:
                    bump("retry_failed", led.retry_failed(by="stress"))
                    bump("retry_failed_calls")
                except LedgerError as e:
                    errors.add("retry_failed", e)
            time.sleep(random.random() * (0.005 if harsh else 0.03))

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(3 if harsh else 1)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        led.close()
        report(out, "canceller", counter, errors, stats=dict(stats))


# -- server log -------------------------------------------------------------------------------

_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \w+ \[(\d+)\] (\w+):\s*(.*)$")


def server_log() -> str | None:
    logs = sorted(glob.glob("/tmp/ledger-pg-*/server.log"), key=os.path.getmtime)
    return logs[-1] if logs else None


def deadlock_blocks(text: str) -> list[dict]:
    """Each ``deadlock detected`` ERROR with its DETAIL/CONTEXT/STATEMENT lines."""
    blocks, cur = [], None
    for line in text.splitlines():
        m = _PREFIX.match(line)
        if m:
            pid, level, rest = m.groups()
            if level == "ERROR" and "deadlock detected" in rest:
                cur = {"pid": pid, "lines": [line]}
                blocks.append(cur)
                continue
            if (
                cur is not None
                and pid == cur["pid"]
                and level in ("DETAIL", "HINT", "CONTEXT", "STATEMENT")
            ):
                cur["lines"].append(line)
                continue
            cur = None
        elif cur is not None:
            cur["lines"].append(line)
    for b in blocks:
        body = "\n".join(b["lines"])
        procs = re.findall(r"Process (\d+): (.*?)(?=\n\s*Process \d+: |\n\S|\Z)", body, re.S)
        b["statements"] = [(p, _norm(s)) for p, s in procs]
        waits = re.findall(r"Process \d+ waits for (\w+) on ([^;]+); blocked by process \d+", body)
        b["waits"] = waits
        ctx = re.findall(r"CONTEXT:\s*(.*)", body)
        b["context"] = [_norm(c)[:160] for c in ctx]
    return blocks


def _norm(sql: str) -> str:
    sql = re.sub(r"\s+", " ", sql).strip()
    sql = re.sub(r"'[^']*'", "'?'", sql)
    return sql


# -- one run ------------------------------------------------------------------------------


def run_once(base: str, load: float, number: int, harsh: bool = False) -> dict:
    from tests.postgres_cluster import create_schema

    url = create_schema(base, f"stress{number}")
    log_path = server_log()
    log_start = os.path.getsize(log_path) if log_path else 0

    ctx = mp.get_context("spawn")
    stop, leads_q, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    # the schema exists before the racing starts (each Ledger runs create_schema)
    from ledger import Ledger

    Ledger(url).close()
    started = time.monotonic()
    procs = [ctx.Process(target=setup_proc, args=(url, load, stop, leads_q, out))]
    procs += [
        ctx.Process(target=worker_proc, args=(url, i, stop, out)) for i in range(WORKER_PROCS)
    ]
    procs.append(ctx.Process(target=canceller_proc, args=(url, stop, leads_q, out, harsh)))
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + load + 180
    while len(results) < len(procs) and time.monotonic() < deadline:
        try:
            results.append(out.get(timeout=5))
        except Exception:
            if not any(p.is_alive() for p in procs) and out.empty():
                break
    for p in procs:
        p.join(timeout=30)
    duration = time.monotonic() - started

    led = Ledger(url)
    rep = led.verify()
    total_jobs = led.search_jobs(limit=1).total
    by_status = {
        s: led.search_jobs(status=s, limit=1).total
        for s in ("pending", "running", "completed", "failed", "cancelled")
    }
    leftover = [
        {
            "status": j.status.value,
            "attempts": j.attempts,
            "max": j.max_attempts,
            "run_at": str(j.run_at),
            "parent": bool(j.parent_id),
        }
        for j in led.pending_jobs(20)
    ]
    led.close()

    retries: collections.Counter[str] = collections.Counter()
    by_doing: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    per_process = {}
    messages, samples = [], {}
    for r in results:
        retries.update(r["retries"])
        by_doing.update(r["retries_by_doing"])
        errors.update(r["errors"])
        per_process[r["role"]] = r["retries"]
        messages += r["messages"]
        samples.update(r["samples"])
    text = ""
    if log_path:
        with open(log_path, errors="replace") as f:
            f.seek(log_start)
            text = f.read()
    blocks = deadlock_blocks(text)
    shapes = collections.Counter()
    for b in blocks:
        stmts = sorted(s[:200] for _, s in b["statements"])
        shapes[" <-> ".join(stmts)] += 1
    dl_contexts = collections.Counter()
    for m in messages:
        if "(40P01" in m or "(40001" in m:
            tail = m.split("PostgreSQL aborted the transaction", 1)[1]
            tail = re.sub(r"\d+", "N", tail)
            tail = re.sub(r"\(N of N\)", "", tail)
            dl_contexts[tail[:300]] += 1
    return {
        "run": number,
        "duration_s": round(duration, 1),
        "processes_reported": len(results),
        "exitcodes": [p.exitcode for p in procs],
        "jobs_created": total_jobs,
        "leads_created": sum(r.get("created", 0) for r in results if r["role"] == "setup"),
        "by_status": by_status,
        "harsh": harsh,
        "leftover_pending": leftover,
        "worker_stats": {r["role"]: r.get("stats") for r in results if "stats" in r},
        "retries_by_sqlstate": dict(retries),
        "retries_per_process": per_process,
        "retries_by_command": dict(by_doing.most_common()),
        "errors_by_type": dict(errors.most_common()),
        "ledger_busy": sum(v for k, v in errors.items() if k.startswith("LedgerBusy")),
        "storage_error": sum(v for k, v in errors.items() if k.startswith("StorageError")),
        "error_samples": samples,
        "verify_ok": rep.ok,
        "verify_differences": [str(d) for d in rep.differences[:5]],
        "retry_message_tails": dict(dl_contexts.most_common(20)),
        "server_deadlocks": len(blocks),
        "server_errors_by_kind": dict(
            collections.Counter(
                re.sub(r'"\w+"', '"X"', re.sub(r"\d+", "N", m.group(1)))[:120]
                for m in re.finditer(r"\] ERROR:\s*(.*)", text)
            ).most_common()
        ),
        "server_deadlock_shapes": dict(shapes.most_common()),
        "server_deadlock_waits": collections.Counter(
            w[0] + " on " + re.sub(r"\d+", "N", w[1]) for b in blocks for w in b["waits"]
        ).most_common(),
        "server_deadlock_examples": ["\n".join(b["lines"])[:4000] for b in blocks[:3]],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--load", type=float, default=30.0, help="seconds of lead creation per run")
    ap.add_argument(
        "--harsh",
        action="store_true",
        help="3 cancelling threads, 0-5 ms apart, 40%% of cancels mid-tree",
    )
    ap.add_argument("--out", default="stress_results.json")
    args = ap.parse_args()
    from tests.postgres_cluster import shared_url

    base = shared_url()  # exports LEDGER_TEST_POSTGRES_URL for the children
    print("cluster:", base, "log:", server_log(), flush=True)
    runs = []
    for n in range(1, args.runs + 1):
        res = run_once(base, args.load, n, args.harsh)
        runs.append(res)
        brief = {
            k: res[k]
            for k in (
                "run",
                "duration_s",
                "jobs_created",
                "retries_by_sqlstate",
                "ledger_busy",
                "storage_error",
                "verify_ok",
                "server_deadlocks",
                "exitcodes",
            )
        }
        print(json.dumps(brief), flush=True)
        with open(args.out, "w") as f:
            json.dump(runs, f, indent=1, default=str)
        # keep a copy of the server log: the cluster's dir goes when this process exits
        lp = server_log()
        if lp:
            with (
                open(lp, errors="replace") as src,
                open(args.out.replace(".json", "") + "_server.log", "w") as dst,
            ):
                dst.write(src.read())
    print("results in", args.out)


if __name__ == "__main__":
    sys.exit(main())
