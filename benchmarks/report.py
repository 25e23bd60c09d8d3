"""Run the benchmark suite and print one table: group, ledger ops/s, raw ops/s, ratio.

    python benchmarks/report.py            # full sizes (builds big fixtures once, then cached)
    python benchmarks/report.py -k replay  # extra arguments go to pytest

Ratios are medians of the same work in the same run, so they survive a noisy machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import apsw

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {apsw.sqlite_lib_version()} (APSW {apsw.apsw_version()})"
    )


def run(extra: list[str]) -> dict:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "bench.json"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "--benchmark-only",
            "-q",
            f"--benchmark-json={out}",
            *extra,
        ]
        subprocess.run(command, cwd=ROOT, check=True)
        return json.loads(out.read_text())  # type: ignore[no-any-return]


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.2f}"


def _impl(param: str | None) -> str:
    parts = (param or "").split("-")
    return next((p for p in ("raw", "minimal", "rows") if p in parts), "ledger")


def table(data: dict) -> str:  # type: ignore[type-arg]
    """One row per group: the ledger against the same-rows raw baseline and, where the group
    has one, against the minimal raw baseline (issue 17's), separately timed and interleaved."""
    groups: dict[str, dict[str, dict]] = {}  # type: ignore[type-arg]
    for bench in data["benchmarks"]:
        name = bench["name"]
        label = bench["group"]
        if "finished" in name:
            label = f"{label} (N={bench['params']['finished']:,})"
        groups.setdefault(label, {})[_impl(bench.get("param"))] = bench
    lines = [
        "| group | ledger median | ledger ops/s | raw ops/s | ratio | ratio, interleaved "
        "| minimal ops/s | vs minimal | vs minimal, interleaved | items/s (ledger) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in sorted(groups):
        found = groups[label]
        if "ledger" not in found or "raw" not in found:
            continue
        led, raw = found["ledger"]["stats"]["median"], found["raw"]["stats"]["median"]
        extra = found["ledger"].get("extra_info", {})
        items = extra.get("items", 1)
        shown = f"{led * 1e3:.3f} ms" if led < 1 else f"{led:.2f} s"
        least = found.get("minimal", {}).get("stats", {}).get("median")
        lines.append(
            f"| {label} | {shown} | {_rate(1 / led)} | {_rate(1 / raw)} | {raw / led:.2f} "
            f"| {_ratio(extra.get('paired_raw_median'), led)} "
            f"| {'-' if least is None else _rate(1 / least)} | {_ratio(least, led)} "
            f"| {_ratio(extra.get('paired_minimal_median'), led)} | {_rate(items / led)} |"
        )
    return "\n".join(lines)


def group_commit_table(data: dict, test: str = "test_group_commit") -> str:  # type: ignore[type-arg]
    """Group 10 (``test``: SQLite) or 11 (``test_group_commit_postgres``): each row's throughput
    (items/s) against the naive raw group commit with as many callers, and against one producer
    of its own kind (issue 17's 2.5x and 4x goals); where the group has it, the same naive
    design on the backend's own statements (``rows``); the lone caller with group commit on and
    off, alternated call by call."""
    rates: dict[tuple[str, int], float] = {}
    lone: dict[str, tuple[float, float]] = {}
    for bench in data["benchmarks"]:
        params = bench.get("params", {})
        median = bench["stats"]["median"]
        if bench["name"].startswith(f"{test}["):
            items = bench.get("extra_info", {}).get("items", 1)
            rates[(params["impl"], params["callers"])] = items / median
        elif bench["name"].startswith("test_lone_caller[") and test == "test_group_commit":
            other = bench.get("extra_info", {}).get("paired_other_median")
            if params.get("grouping") == "on" and other is not None:
                lone[params["durability"]] = (median, other)
    if not rates and not lone:
        return ""
    rows = any(impl == "rows" for impl, _ in rates)
    lines = [
        "| callers | ledger items/s | naive raw items/s | ledger/raw | ledger vs one producer "
        "| raw vs one caller |"
        + (" own statements, naive, items/s | ledger/those |" if rows else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if rows else ""),
    ]
    for (impl, callers), rate in sorted(rates.items()):
        if impl in ("raw", "rows"):
            continue
        raw = rates.get(("raw", callers))
        one = rates.get((impl, 1))
        raw_one = rates.get(("raw", 1))
        line = (
            f"| {callers} {impl.removeprefix('ledger-')} | {_rate(rate)} "
            f"| {'-' if raw is None else _rate(raw)} | {_ratio(rate, raw) if raw else '-'} "
            f"| {'-' if one is None else f'{rate / one:.2f}x'} "
            f"| {'-' if raw is None or raw_one is None else f'{raw / raw_one:.2f}x'} |"
        )
        if rows:
            same = rates.get(("rows", callers))
            line += (
                f" {'-' if same is None else _rate(same)} | {_ratio(rate, same) if same else '-'} |"
            )
        lines.append(line)
    for durability, (on, off) in sorted(lone.items()):
        lines.append(
            f"| 1, group commit on vs off [{durability}] | {on * 1e3:.3f} ms | {off * 1e3:.3f} ms "
            f"| {off / on:.2f} | | |"
        )
    return "\n".join(lines)


def _ratio(baseline: float | None, ledger: float) -> str:
    return "-" if baseline is None else f"{baseline / ledger:.2f}"


if __name__ == "__main__":
    results = run(sys.argv[1:])
    print(f"\nMachine: {machine()}\n")
    print(table(results))
    extra = group_commit_table(results)
    if extra:
        print(f"\nGroup commit (group 10, durability full unless marked):\n\n{extra}")
    extra = group_commit_table(results, "test_group_commit_postgres")
    if extra:
        print(f"\nGroup commit on PostgreSQL (group 11, durability full):\n\n{extra}")
