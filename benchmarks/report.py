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
    return next((p for p in ("raw", "minimal") if p in parts), "ledger")


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


def _ratio(baseline: float | None, ledger: float) -> str:
    return "-" if baseline is None else f"{baseline / ledger:.2f}"


if __name__ == "__main__":
    results = run(sys.argv[1:])
    print(f"\nMachine: {machine()}\n")
    print(table(results))
