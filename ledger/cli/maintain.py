"""Commands that look after a ledger: ``replay``, ``verify``, ``head``, ``export``, ``import``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .. import transfer
from ..domain import chain
from ..errors import InvalidArgument, LedgerError
from ..rebuild import VerifyReport
from . import format as fmt
from .common import AddCommand, open_ledger, out

_EXPORT_PROGRESS_EVERY = 1_000
SHOWN_DIFFERENCES = 50
"""`verify` prints this many differences, then says how many more there are."""


def _progress_bar(what: str = "replaying") -> Callable[[int, int], None] | None:
    """A progress callback ``(done, total)`` drawing a bar on stderr; None (silent) when
    stderr is not a terminal, so scripts and logs never see it."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        share = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\r{what} [{bar:<30}] {done}/{total} events")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def rows_that_would_change(report: VerifyReport) -> int:
    """Rows a replay would rewrite: one per (table, key), however many of its columns differ."""
    return len({(d.table, fmt.to_json(d.key)) for d in report.differences})


def cmd_replay(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    with open_ledger(args, readonly=False) as ledger:
        replayed = ledger.replay(progress=_progress_bar())
    out(
        fmt.to_json(replayed)
        if args.json
        else f"replayed {replayed.events} events into {replayed.jobs} jobs in "
        f"{replayed.seconds:.2f}s (log position {replayed.position})"
    )
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=True) as ledger:
        report = ledger.verify()
    unreadable = [d.position for d in report.differences if d.position is not None]
    if unreadable:  # the fold stopped there: a replay would refuse, so there is no count to give
        raise LedgerError(
            f"the event at position {unreadable[0]} cannot be folded, so a replay would fail; "
            "the live file is untouched (`ledger verify` says more)"
        )
    rows = rows_that_would_change(report)
    if args.json:
        out(
            fmt.to_json(
                {
                    "dry_run": True,
                    "events": report.events,
                    "jobs": report.jobs,
                    "rows_that_would_change": rows,
                    "differences": len(report.differences),
                }
            )
        )
    else:
        out(
            f"dry run: would rebuild from {report.events} events; "
            f"{rows} projection rows would change ({len(report.differences)} differing values); "
            "live file untouched"
        )
    return 0


def _chain_broken(report: VerifyReport) -> bool:
    return any(d.table == "events" and d.column in ("hash", "head") for d in report.differences)


def cmd_head(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=True) as ledger:
        position, digest = ledger.head()
    text = f"{position}:{digest}"
    out(fmt.to_json({"position": position, "hash": digest}) if args.json else text)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    expected = None if args.expect_head is None else chain.parse_head(args.expect_head)
    with open_ledger(args, readonly=True) as ledger:
        report = ledger.verify(expect_head=expected, progress=_progress_bar("verifying"))
    if args.json:
        out(fmt.to_json(report))
    elif report.ok:
        out(f"ok: the projection matches the fold of {report.events} events ({report.jobs} jobs)")
    else:
        out(f"NOT OK: {len(report.differences)} difference(s) between the projection and the log")
        for d in report.differences[:SHOWN_DIFFERENCES]:
            where = f"position {d.position}" if d.position is not None else f"{d.table} {d.key}"
            if d.problem is not None:
                out(f"  {where}: {d.problem}")
            else:
                out(f"  {where} {d.column or '(row)'}: live={d.live!r} rebuilt={d.rebuilt!r}")
        hidden = len(report.differences) - SHOWN_DIFFERENCES
        if hidden > 0:
            out(f"  ... and {hidden} more (`ledger verify --json` lists them all)")
        if _chain_broken(report):
            out(
                "the log was changed around the ledger (its hash chain no longer holds): "
                "restore it from a backup or an export you trust; replay cannot repair it"
            )
        elif any(d.position is not None for d in report.differences):
            out("the log itself holds an event the ledger cannot fold: replay will refuse it")
        else:
            out("run `ledger replay` to rebuild the projection from the log")
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=True) as ledger:
        out = sys.stdout.buffer
        progress = _progress_bar("exporting")
        total = max(ledger.last_position() - args.after, 0) if progress else 0
        done = 0
        for line in ledger.export_events(args.after):
            out.write(line + b"\n")
            done += 1
            if progress and done % _EXPORT_PROGRESS_EVERY == 0:
                progress(done, total)
        out.flush()
        if progress:
            progress(done, max(total, done))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """The input is opened first (an unreadable FILE creates no ledger); a refused import into
    a path that did not exist removes the empty ledger it created, never a file that was there."""
    if args.file == "-":
        source = sys.stdin.buffer
    else:
        try:
            source = open(args.file, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise InvalidArgument("file", args.file, f"cannot read it ({e.strerror})") from e
    created = transfer.creates_file(args.db)
    try:
        with open_ledger(args, readonly=False) as ledger:
            try:
                report = ledger.import_events(source, progress=_progress_bar("importing"))
            except BaseException:
                if created:
                    transfer.discard_empty(ledger, args.db)
                raise
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    out(
        fmt.to_json(report)
        if args.json
        else f"imported {report.events} events; replayed into {report.jobs} jobs"
    )
    return 0


def register(command: AddCommand) -> None:
    p = command("replay", cmd_replay, "rebuild the projection from the log (all or nothing)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="rebuild into a scratch copy and report; the live file is untouched",
    )

    p = command(
        "verify",
        cmd_verify,
        "check the log's hash chain and that the projection equals its fold (exit 1 if not)",
    )
    p.add_argument(
        "--expect-head",
        metavar="POS:HASH",
        help="also fail unless the log still extends this head (as `ledger head` printed it)",
    )

    command("head", cmd_head, "print the log's last position and its chain hash as POS:HASH")

    p = command("export", cmd_export, "write the log as JSON lines to stdout", json=False)
    p.add_argument("--after", type=int, default=0, metavar="POS", help="only events after POS")

    p = command(
        "import", cmd_import, "load exported JSON lines into a new or empty ledger, then replay"
    )
    p.add_argument("file", metavar="FILE", help="a file from `ledger export`, or - for stdin")
