"""Run the peer benchmarks and print one markdown table per durability / backend.

    pip install -r benchmarks/peers/requirements.txt
    LEDGER_BENCH_PEERS=1 python benchmarks/peers/report.py            # one run, full sizes
    LEDGER_BENCH_PEERS=1 python benchmarks/peers/report.py --runs 2   # two runs, "a / b" cells
    LEDGER_BENCH_N=2000 ... report.py -k sqlite   # smaller N; extra arguments go to pytest
    python benchmarks/peers/report.py --from a.json,b.json --from c.json  # saved runs
                         # (pytest --benchmark-json files; each --from is one run, its files
                         # comma-separated, e.g. the SQLite and the PostgreSQL half)

Each figure is one timed loop of N operations (ops / seconds of the loop alone). With several
runs each cell holds one figure per run, so noise on a shared machine shows instead of hiding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SQLITE_PEERS = ("persist-queue", "huey", "eventsourcing")
PG_PEERS = ("procrastinate", "pgqueuer")
LABELS = {
    "create": "create (enqueue one job)",
    "claim_finish": "claim+finish",
    "append": "append an event",
    "read_all": "read everything and decode",
    "batch100": "append 100 per commit",
    "enqueue": "enqueue",
    "fetch_finish": "fetch+finish, 4 workers",
}
# Footnote numbers beside a peer's figure where it does less work than the ledger's laws
# require (the notes themselves are in the README and in NOTES below).
MARKS = {
    ("persist-queue", "create"): "a",
    ("persist-queue", "claim_finish"): "b",
    ("persist-queue", "read_all"): "c",
    ("persist-queue", "batch100"): "d",
    ("huey", "create"): "e",
    ("huey", "claim_finish"): "f",
    ("huey", "read_all"): "g",
    ("eventsourcing", "create"): "h",
    ("eventsourcing", "append"): "i",
    ("eventsourcing", "batch100"): "h",
    ("pgqueuer", "fetch_finish"): "j",
}
NOTES = {
    "a": "persist-queue put: one row (the pickled item); no event, no version, no checkpoint",
    "b": "persist-queue get+ack: two UPDATEs of a status column; no events, no lease, worker, "
    "attempt or fencing",
    "c": "persist-queue queue(): its rows unpickled; there is no event log to read",
    "d": "persist-queue SQLiteQueue(auto_commit=False): 100 rows + task_done(); no events",
    "e": "huey: one task row (a pickled message); no event, no job record",
    "f": "huey dequeue deletes the task row, execute stores a result row: no history, no lease",
    "g": "huey pending(): the queued task rows unpickled; no event log",
    "h": "eventsourcing: one event per aggregate, no projection row, no checkpoint",
    "i": "eventsourcing: one event per save (its version check), no projection update",
    "j": "pgqueuer dequeues up to 10 jobs per query and logs outcomes in buffered batches",
    "k": "eventsourcing has no synchronous setting: measured at its default, FULL",
}


def run(extra: list[str]) -> list[dict[str, Any]]:
    """One pytest-benchmark run of benchmarks/peers; the benchmarks' records."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "peers.json"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/peers",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={out}",
            *extra,
        ]
        env = dict(os.environ, LEDGER_BENCH_PEERS="1")
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        return json.loads(out.read_text())["benchmarks"]


def rates(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    """(durability or 'postgres', workload, impl) -> operations per second."""
    found = {}
    for record in records:
        info = record["extra_info"]
        if info.get("seconds"):
            key = (info["durability"], info["workload"], info["impl"])
            found[key] = info["ops"] / info["seconds"]
    return found


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _cells(values: list[float | None], mark: str = "") -> str:
    if all(v is None for v in values):
        return "n/a"
    return " / ".join(_fmt(v) for v in values) + (f" ({mark})" if mark else "")


def table(runs: list[dict[tuple[str, str, str], float]], durability: str) -> str:
    peers = PG_PEERS if durability == "postgres" else SQLITE_PEERS
    workloads = [w for w in LABELS if any((durability, w, "ledger") in r for r in runs)]
    head = ["workload", "ledger ops/s", "raw ops/s", "ledger/raw"]
    same = durability != "postgres"  # the ledger's own rows by hand (SQLite only)
    if same:
        head += ["same rows by hand ops/s"]
    head += [f"{p} ops/s" for p in peers] + ["best peer", "ledger ahead?"]
    if same:
        head += ["same rows ahead?"]  # no: the peer leads on the I/O alone, out of reach
    tail = len(head) - head.index("best peer")
    rule = "|---|" + "---:|" * (len(head) - 1 - tail) + "---|" * tail
    lines = ["| " + " | ".join(head) + " |", rule]
    used: set[str] = set()
    for workload in workloads:
        led = [r.get((durability, workload, "ledger")) for r in runs]
        raw = [r.get((durability, workload, "raw")) for r in runs]
        ratio = " / ".join(
            f"{a / b:.2f}x" if a and b else "n/a" for a, b in zip(led, raw, strict=True)
        )
        row = [LABELS[workload], _cells(led), _cells(raw), ratio]
        if same:
            row.append(_cells([r.get((durability, workload, "same-rows")) for r in runs]))
        best_names, ahead, reach = [], [], []
        for i, r in enumerate(runs):
            keys = [(durability, workload, p) for p in peers]
            scores = {key[2]: r[key] for key in keys if key in r}
            if not scores:
                continue
            best = max(scores, key=scores.__getitem__)
            best_names.append(best)
            ahead.append("yes" if (led[i] or 0) > scores[best] else "no")
            by_hand = r.get((durability, workload, "same-rows"), 0)
            reach.append("yes" if by_hand > scores[best] else "no")
        for peer in peers:
            mark = MARKS.get((peer, workload), "")
            if peer == "eventsourcing" and durability == "normal":
                mark = f"{mark}, k" if mark else "k"
            row.append(_cells([r.get((durability, workload, peer)) for r in runs], mark))
            if mark and any((durability, workload, peer) in r for r in runs):
                used.update(mark.split(", "))
        row.append(" / ".join(best_names) if best_names else "n/a")
        row.append(" / ".join(ahead) if ahead else "n/a")
        if same:
            row.append(" / ".join(reach) if reach else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    notes = [f"({m}) {NOTES[m]}" for m in sorted(used)]
    return "\n".join(lines + (["", *notes] if notes else []))


def _option(argv: list[str], name: str) -> tuple[list[str], list[str]]:
    """Every value of ``name VALUE`` in argv, and argv without them."""
    values, rest = [], []
    words = iter(argv)
    for word in words:
        if word == name:
            values.append(next(words))
        else:
            rest.append(word)
    return values, rest


def saved(files: str) -> list[dict[str, Any]]:
    """The benchmarks of one run saved in several JSON files (comma-separated)."""
    records: list[dict[str, Any]] = []
    for name in files.split(","):
        records.extend(json.loads(Path(name).read_text())["benchmarks"])
    return records


def main(argv: list[str]) -> None:
    counts, argv = _option(argv, "--runs")
    sources, argv = _option(argv, "--from")
    if sources:
        runs = [rates(saved(files)) for files in sources]
    else:
        runs = [rates(run(argv)) for _ in range(int(counts[-1]) if counts else 1)]
    titles = {
        "full": "SQLite, durability FULL",
        "normal": "SQLite, durability NORMAL",
        "postgres": "PostgreSQL",
    }
    for durability, title in titles.items():
        if any(key[0] == durability for r in runs for key in r):
            print(f"\n### {title}\n\n{table(runs, durability)}")


if __name__ == "__main__":
    main(sys.argv[1:])
