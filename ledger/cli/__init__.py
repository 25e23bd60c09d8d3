"""``python -m ledger`` / ``ledger``: inspect, follow, recover and work a ledger from a shell.

Every command calls the library; nothing here touches SQL. Read-only commands open the file
read-only and never create one. Errors print one line to stderr and exit 1 (``--debug`` shows
the traceback); bad usage exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .. import transfer
from ..api import Ledger
from ..domain.backoff import RetryPolicy
from ..domain.model import EventType, JobStatus
from ..domain.validate import INT64_MAX
from ..errors import InvalidArgument, LedgerError
from ..rebuild import VerifyReport
from ..worker import Handler, Worker
from . import format as fmt

DEFAULT_DB = "ledger.db"
DEMO_DB = "demo.db"
SHOWN_DIFFERENCES = 50
"""`verify` prints this many differences, then says how many more there are."""


def _db_default() -> str:
    return os.environ.get("LEDGER_DB") or DEFAULT_DB


def check_db_path(path: str) -> str:
    """Refuse, in words, the paths SQLite would answer with a puzzle: a directory ("disk I/O
    error") and a name that is not valid UTF-8 (a UnicodeEncodeError from deep inside APSW)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as e:
        try:
            shown: object = os.fsencode(path)  # the bytes the shell passed, e.g. b'\xff.db'
        except UnicodeError:
            shown = path
        raise InvalidArgument("--db", shown, "the path is not valid UTF-8; rename the file") from e
    if os.path.isdir(path):
        raise InvalidArgument("--db", path, "is a directory; give the path of a ledger file")
    return path


def natural(text: str) -> int:
    """An argparse type: a whole number, 0 or more (a negative limit or count is bad usage)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _open(args: argparse.Namespace, *, readonly: bool) -> Ledger:
    return Ledger(args.db, readonly=readonly)  # main checked the path with `check_db_path`


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


# -- commands ---------------------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace) -> int:
    limit = args.limit
    with _open(args, readonly=True) as ledger:
        jobs = ledger.jobs(  # one more than asked: tells whether the list was cut
            status=args.status,
            chat_id=args.chat,
            queue=args.queue,
            limit=limit + 1 if limit < INT64_MAX else limit,
        )
        cut = len(jobs) > limit
        del jobs[limit:]
        _out(fmt.to_json(jobs) if args.json else fmt.job_rows(ledger.now(), jobs))
    if cut:  # on stderr, so the listing (or its JSON) on stdout stays whole
        sys.stderr.write(f"(showing the newest {limit} jobs; there are more: --limit N for more)\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as ledger:
        job = ledger.find_job(args.job_id)
        events = ledger.job_events(job.id)
        if args.json:
            _out(fmt.to_json({"job": job, "events": events}))
        else:
            _out(fmt.job_details(job) + "\n\nevents:")
            for event in events:
                _out(fmt.event_line(event, with_job=False))
                traceback = (
                    event.payload.get("traceback") if isinstance(event.payload, dict) else None
                )
                if event.type is EventType.ERROR and isinstance(traceback, str):
                    _out(
                        "\n".join("          | " + line for line in traceback.rstrip().splitlines())
                    )
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    if args.count == 0:  # asked for nothing: print nothing, and do not even open the file
        return 0
    with _open(args, readonly=True) as ledger:
        job_id = ledger.find_job(args.job).id if args.job else None
        filters = {"job_id": job_id, "chat_id": args.chat, "types": args.type}
        events = (
            ledger.follow(args.after, poll=args.interval, **filters)
            if args.follow
            else ledger.iter_events(args.after, **filters)
        )
        for printed, event in enumerate(events, start=1):
            _out(fmt.to_json(event) if args.json else fmt.event_line(event))
            if args.follow:
                sys.stdout.flush()  # a follower is read as it goes, often through a pipe
            if args.count is not None and printed >= args.count:
                break
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as ledger:
        text = ledger.active_jobs_summary(args.chat_id)
        _out(
            fmt.to_json({"chat_id": args.chat_id, "summary": text})
            if args.json
            else text.rstrip("\n")
        )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as ledger:
        stats = ledger.stats()
        now = ledger.now()
    if args.json:
        _out(fmt.to_json(stats))
        return 0
    rows = [
        (status, queue, str(n))
        for status, queues in stats.counts.items()
        for queue, n in queues.items()
    ]
    _out(fmt.table(("STATUS", "QUEUE", "JOBS"), rows) if rows else "no jobs")
    finished = ", ".join(f"{n} {s}" for s, n in sorted(stats.finished_last_hour.items())) or "none"
    _out(f"\nfinished in the last hour: {finished}")
    p50 = "-" if stats.duration_p50 is None else fmt.duration(stats.duration_p50)
    p95 = "-" if stats.duration_p95 is None else fmt.duration(stats.duration_p95)
    _out(f"duration of completed jobs: p50 {p50}, p95 {p95}")
    _out(f"total cost: {stats.total_cost_cents:.2f} cents")
    oldest = stats.oldest_pending
    _out(
        "oldest pending: "
        + ("none" if oldest is None else f"{oldest.id[:8]} ({fmt.age(now, oldest.created_at)} old)")
    )
    return 0


def _progress_bar() -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\rreplaying [{bar:<30}] {done}/{total} events")
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
    with _open(args, readonly=False) as ledger:
        replayed = ledger.replay(progress=_progress_bar())
    _out(
        fmt.to_json(replayed)
        if args.json
        else f"replayed {replayed.events} events into {replayed.jobs} jobs in "
        f"{replayed.seconds:.2f}s (log position {replayed.position})"
    )
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as ledger:
        report = ledger.verify()
    unreadable = [d.position for d in report.differences if d.position is not None]
    if unreadable:  # the fold stopped there: a replay would refuse, so there is no count to give
        raise LedgerError(
            f"the event at position {unreadable[0]} cannot be decoded, so a replay would fail; "
            "the live file is untouched (`ledger verify` says more)"
        )
    rows = rows_that_would_change(report)
    if args.json:
        _out(
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
        _out(
            f"dry run: would rebuild from {report.events} events; "
            f"{rows} projection rows would change ({len(report.differences)} differing values); "
            "live file untouched"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as ledger:
        report = ledger.verify()
    if args.json:
        _out(fmt.to_json(report))
    elif report.ok:
        _out(f"ok: the projection matches the fold of {report.events} events ({report.jobs} jobs)")
    else:
        _out(f"NOT OK: {len(report.differences)} difference(s) between the projection and the log")
        for d in report.differences[:SHOWN_DIFFERENCES]:
            where = f"position {d.position}" if d.position is not None else f"{d.table} {d.key}"
            _out(f"  {where} {d.column or '(row)'}: live={d.live!r} rebuilt={d.rebuilt!r}")
        hidden = len(report.differences) - SHOWN_DIFFERENCES
        if hidden > 0:
            _out(f"  ... and {hidden} more (`ledger verify --json` lists them all)")
        _out("run `ledger replay` to rebuild the projection from the log")
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as ledger:
        out = sys.stdout.buffer
        for line in ledger.export_events(args.after):
            out.write(line + b"\n")
        out.flush()
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
        with _open(args, readonly=False) as ledger:
            try:
                report = ledger.import_events(source)
            except BaseException:
                if created:
                    transfer.discard_empty(ledger, args.db)
                raise
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    _out(
        fmt.to_json(report)
        if args.json
        else f"imported {report.events} events; replayed into {report.jobs} jobs"
    )
    return 0


def load_handler(spec: str) -> Handler:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise InvalidArgument("handler", spec, "expected MODULE:FUNCTION, e.g. myapp.jobs:handle")
    sys.path.insert(0, os.getcwd())
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (Exception, SystemExit) as e:  # the module's own code runs here and may raise anything
        why = f"cannot load it ({type(e).__name__}: {e}); check that `python -c 'import "
        raise InvalidArgument("handler", spec, why + f"{module_name}'` works") from e
    if not callable(handler):
        raise InvalidArgument("handler", spec, "is not callable")
    return handler


def cmd_work(args: argparse.Namespace) -> int:
    """Run a worker until it stops; the exit status says whether the stop was clean (0) or a
    handler had to be abandoned (non-zero, see `Worker.exit_status`)."""
    handler = load_handler(args.handler)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    policy = RetryPolicy() if args.retry_delay is None else RetryPolicy(base=args.retry_delay)
    with Ledger(args.db, retry_policy=policy) as ledger:
        worker = Worker(
            ledger,
            handler,
            worker_id=args.worker_id,
            queues=args.queue or None,
            lease=args.lease,
            poll_interval=args.poll_interval,
            grace_period=args.grace,
        )
        handled = worker.run(max_jobs=args.max_jobs, stop_when_idle=args.stop_when_idle)
        if worker.abandoned:
            # A handler thread still runs (stuck, or ignoring the stop); its job is released.
            # Exit now rather than wait for it: flush what was said, skip interpreter teardown.
            _out(f"worker {worker.worker_id} handled {handled} job(s); stop forced")
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(worker.exit_status or 1)
    _out(f"worker {worker.worker_id} handled {handled} job(s)")
    return worker.exit_status


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(args.db)


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="An event-sourced job ledger on SQLite.",
        epilog="The database is --db, else $LEDGER_DB, else ./ledger.db (the demo's: ./demo.db). "
        "--db and --debug work before or after COMMAND.",
    )
    parser.add_argument("--db", metavar="PATH", help="ledger file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        run: Callable[[argparse.Namespace], int],
        help: str,
        *,
        json: bool = True,
        default_db: Callable[[], str] = _db_default,
        db_help: str = "ledger file (default $LEDGER_DB, else ./ledger.db)",
    ) -> argparse.ArgumentParser:
        """A subcommand that also takes the global options after its name. Their defaults are
        SUPPRESS, so a value given before the name is not overwritten by the subcommand's."""
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--db", default=argparse.SUPPRESS, metavar="PATH", help=db_help)
        if json:
            p.add_argument("--json", action="store_true", help="print JSON for scripts")
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks on errors",
        )
        p.set_defaults(run=run, default_db=default_db)
        return p

    p = command("jobs", cmd_jobs, "list jobs, newest first")
    p.add_argument("--status", choices=[s.value for s in JobStatus], help="only this status")
    p.add_argument("--chat", type=int, metavar="ID", help="only this chat's jobs")
    p.add_argument("--queue", metavar="Q", help="only this queue")
    p.add_argument("--limit", type=natural, default=50, metavar="N", help="at most N jobs (50)")

    p = command("show", cmd_show, "one job and its whole event history")
    p.add_argument("job_id", metavar="JOB_ID", help="the id or a unique prefix of it")

    p = command("events", cmd_events, "the event log in position order")
    p.add_argument("--after", type=int, default=0, metavar="POS", help="only events after POS")
    p.add_argument("--job", metavar="ID", help="only this job (a unique prefix works)")
    p.add_argument("--chat", type=int, metavar="ID", help="only this chat's jobs")
    p.add_argument(
        "--type",
        action="append",
        choices=[t.value for t in EventType],
        metavar="T",
        help="only this event type (repeatable)",
    )
    p.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new events (Ctrl-C ends)"
    )
    p.add_argument("--count", type=natural, metavar="N", help="exit after printing N events")
    p.add_argument("--interval", type=float, default=0.2, help=argparse.SUPPRESS)

    p = command("summary", cmd_summary, "the active-jobs summary of a chat, as an LLM sees it")
    p.add_argument("chat_id", type=int, metavar="CHAT_ID")

    command("stats", cmd_stats, "counts, throughput, durations, cost, oldest pending job")

    p = command("replay", cmd_replay, "rebuild the projection from the log (all or nothing)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="rebuild into a scratch copy and report; the live file is untouched",
    )

    command(
        "verify", cmd_verify, "check that the projection equals the fold of the log (exit 1 if not)"
    )

    p = command("export", cmd_export, "write the log as JSON lines to stdout", json=False)
    p.add_argument("--after", type=int, default=0, metavar="POS", help="only events after POS")

    p = command(
        "import", cmd_import, "load exported JSON lines into a new or empty ledger, then replay"
    )
    p.add_argument("file", metavar="FILE", help="a file from `ledger export`, or - for stdin")

    p = command(
        "work", cmd_work, "run a worker: claim jobs and call MODULE:FUNCTION(job, ctx)", json=False
    )
    p.add_argument("handler", metavar="MODULE:FUNCTION")
    p.add_argument("--queue", action="append", metavar="Q", help="only this queue (repeatable)")
    p.add_argument("--worker-id", metavar="ID", help="default: host:pid:random")
    p.add_argument(
        "--lease",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="lease per claim, kept alive by heartbeats (300)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="wait between claims when idle (1)",
    )
    p.add_argument("--max-jobs", type=int, metavar="N", help="stop after N jobs")
    p.add_argument("--stop-when-idle", action="store_true", help="stop when nothing is claimable")
    p.add_argument(
        "--retry-delay",
        type=float,
        metavar="SECONDS",
        help="first retry backoff (default 10, doubling, capped at an hour)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/Ctrl-C, how long the job in hand may take to finish before it is "
        "released (30); a second signal releases it at once and exits non-zero",
    )
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--quiet", action="store_true", help="log only problems (warnings)")
    noise.add_argument("--verbose", action="store_true", help="log heartbeats and details too")

    command(
        "demo",
        cmd_demo,
        "two workers on ./demo.db working a dozen simulated subagent jobs",
        json=False,
        default_db=lambda: DEMO_DB,
        db_help="demo file (default ./demo.db); an existing file is reused only if it is a "
        "demo ledger, never deleted otherwise",
    )
    return parser


def cli_reference() -> str:
    """The README's CLI reference, rendered from the parser itself (a test keeps them equal)."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; fix it for a stable text
    try:
        parser = build_parser()
        parts = ["```", parser.format_help().rstrip(), "```"]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    parts += ["", f"#### `ledger {name}`", "```", sub.format_help().rstrip(), "```"]
        return "\n".join(parts)
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _describe(error: BaseException) -> str:
    """One line for an error from outside the library: an OSError names the file and the cause."""
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename is not None else ""
        return f"{error.strerror}{where}"
    return f"{type(error).__name__}: {error}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A user's mistake is one line on stderr and exit 1 (bad usage: 2, from
    argparse); an unexpected exception is a bug, reported as one line that says so, and
    ``--debug`` shows its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.db is None:
            args.db = args.default_db()
        check_db_path(args.db)
        return int(args.run(args))
    except KeyboardInterrupt:
        return 0 if getattr(args, "follow", False) else 130
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except LedgerError as e:
        if args.debug:
            raise
        sys.stderr.write(f"ledger: error: {e}\n")
        return 1
    except (OSError, UnicodeError) as e:  # the file system or the terminal said no
        if args.debug:
            raise
        sys.stderr.write(f"ledger: error: {_describe(e)}\n")
        return 1
    except Exception as e:
        if args.debug:
            raise
        sys.stderr.write(
            f"ledger: internal error: {_describe(e)}; this is a bug: rerun with --debug for "
            "the traceback and report it\n"
        )
        return 1


def _silence_stdout() -> None:
    """After the reader of a pipe went away (``ledger events | head``), point stdout at
    /dev/null so the interpreter's final flush does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
