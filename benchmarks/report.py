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


def table(data: dict) -> str:  # type: ignore[type-arg]
    groups: dict[str, dict[str, dict]] = {}  # type: ignore[type-arg]
    for bench in data["benchmarks"]:
        name = bench["name"]
        impl = "raw" if "raw" in bench["param"].split("-") else "ledger"
        label = bench["group"]
        if "finished" in name:
            label = f"{label} (N={bench['params']['finished']:,})"
        groups.setdefault(label, {})[impl] = bench
    lines = [
        "| group | ledger median | ledger ops/s | raw ops/s | ratio | ratio, interleaved "
        "| items/s (ledger) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label in sorted(groups):
        pair = groups[label]
        if "ledger" not in pair or "raw" not in pair:
            continue
        led, raw = pair["ledger"]["stats"]["median"], pair["raw"]["stats"]["median"]
        extra = pair["ledger"].get("extra_info", {})
        items = extra.get("items", 1)
        paired = extra.get("paired_raw_median")
        interleaved = "-" if paired is None else f"{paired / led:.2f}"
        shown = f"{led * 1e3:.3f} ms" if led < 1 else f"{led:.2f} s"
        lines.append(
            f"| {label} | {shown} | {_rate(1 / led)} | {_rate(1 / raw)} | {raw / led:.2f} "
            f"| {interleaved} | {_rate(items / led)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    results = run(sys.argv[1:])
    print(f"\nMachine: {machine()}\n")
    print(table(results))
