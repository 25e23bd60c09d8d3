"""``python -m ledger`` / ``ledger``: inspect, follow, recover and work a ledger from a shell.

One module per group of commands (`inspect`, `maintain`, `work`), each registering its
subcommands here; `format` renders what they print. Every command calls the library; nothing here
touches a database. Read-only commands open the ledger read-only and never create one. Errors
print one line to stderr and exit 1 (``--debug`` shows the traceback); bad usage exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import LedgerError
from . import inspect, maintain, operate, serve, trees, work
from .common import check_db_path, db_default

GROUPS = (inspect, maintain, work, serve, operate, trees)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="An event-sourced job ledger on SQLite (one file) or PostgreSQL.",
        epilog="The database is --db, else $LEDGER_DB, else ./ledger.db (the demo's: ./demo.db). "
        "--db and --debug work before or after COMMAND.",
    )
    parser.add_argument("--db", metavar="PATH", help="ledger file, or a postgresql:// URL")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        run: Callable[[argparse.Namespace], int],
        help: str,
        *,
        json: bool = True,
        default_db: Callable[[], str] = db_default,
        db_help: str = "ledger file or postgresql:// URL (default $LEDGER_DB, else ./ledger.db)",
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

    for group in GROUPS:
        group.register(command)
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
