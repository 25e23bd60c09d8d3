"""Commands that run work: ``work`` (a worker process) and ``demo``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..api import Ledger
from ..domain.backoff import RetryPolicy
from ..errors import InvalidArgument
from ..worker import Handler, Worker
from .common import DEMO_DB, AddCommand, natural, out


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``--concurrency``)."""
    value = natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


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
            concurrency=args.concurrency,
        )
        handled = worker.run(max_jobs=args.max_jobs, stop_when_idle=args.stop_when_idle)
        if worker.abandoned:
            # A handler thread still runs (stuck, or ignoring the stop); its job is released.
            # Exit now rather than wait for it: flush what was said, skip interpreter teardown.
            out(f"worker {worker.worker_id} handled {handled} job(s); stop forced")
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(worker.exit_status or 1)
    out(f"worker {worker.worker_id} handled {handled} job(s)")
    return worker.exit_status


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(args.db)


def register(command: AddCommand) -> None:
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
    p.add_argument("--max-jobs", type=natural, metavar="N", help="stop after N jobs")
    p.add_argument(
        "--concurrency",
        type=positive,
        default=1,
        metavar="N",
        help="run up to N jobs at once (1): an async def handler on one event loop, "
        "a plain one in a thread per job",
    )
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
