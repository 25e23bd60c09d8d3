"""``ledger serve``: the dashboard and Prometheus ``/metrics`` over HTTP (extra ``jobledger[web]``).

Read-only and bound to 127.0.0.1 unless told otherwise. With ``--allow-actions`` the pages offer
cancel, retry, pause and resume; each form needs the token from ``$LEDGER_WEB_TOKEN`` (or one
printed at start) and the acting person's name, which the event records.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from .common import AddCommand, open_ledger

TOKEN_ENV = "LEDGER_WEB_TOKEN"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .. import web
    except ImportError as e:
        missing = (e.name or "a package").split(".")[0]
        sys.stderr.write(
            f"ledger: error: ledger serve needs the web extra ({missing} is missing): "
            "pip install 'jobledger[web]'\n"
        )
        return 1
    token = None
    if args.allow_actions:
        token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(16)
        if TOKEN_ENV not in os.environ:
            sys.stderr.write(f"actions need this token (set ${TOKEN_ENV} to choose it): {token}\n")
    with open_ledger(args, readonly=not args.allow_actions) as ledger:
        sys.stderr.write(
            f"serving the dashboard on http://{args.host}:{args.port}/ "
            f"({'actions allowed' if args.allow_actions else 'read-only'}; Ctrl-C stops)\n"
        )
        sys.stderr.flush()
        web.serve(
            ledger,
            host=args.host,
            port=args.port,
            allow_actions=args.allow_actions,
            token=token,
        )
    return 0


def register(command: AddCommand) -> None:
    p = command(
        "serve",
        cmd_serve,
        "the live dashboard and /metrics over HTTP (needs jobledger[web])",
        json=False,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    p.add_argument("--port", type=_port, default=8400, help="port to listen on (8400)")
    p.add_argument(
        "--allow-actions",
        action="store_true",
        help=f"offer cancel, retry, pause and resume; each needs the token (${TOKEN_ENV})",
    )
