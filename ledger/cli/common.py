"""What every command of the CLI shares: where the ledger is, how it is opened, how a
command prints, and the argparse types."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Protocol

from ..api import Ledger
from ..backends import is_postgres_url
from ..errors import InvalidArgument

DEFAULT_DB = "ledger.db"
DEMO_DB = "demo.db"


class AddCommand(Protocol):
    """`build_parser`'s helper that each group of commands registers its subcommands with."""

    def __call__(
        self,
        name: str,
        run: Callable[[argparse.Namespace], int],
        help: str,
        *,
        json: bool = True,
        default_db: Callable[[], str] = ...,
        db_help: str = ...,
    ) -> argparse.ArgumentParser: ...


def db_default() -> str:
    return os.environ.get("LEDGER_DB") or DEFAULT_DB


def check_db_path(path: str) -> str:
    """Refuse, in words, the paths SQLite would answer with a puzzle: a directory ("disk I/O
    error") and a name that is not valid UTF-8 (a UnicodeEncodeError from deep inside APSW).
    A ``postgresql://`` URL is not a path: the backend checks it when it connects."""
    if is_postgres_url(path):
        return path
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


def open_ledger(args: argparse.Namespace, *, readonly: bool) -> Ledger:
    return Ledger(args.db, readonly=readonly)  # main checked the path with `check_db_path`


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
