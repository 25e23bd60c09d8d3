"""Commands an operator acts with: ``enqueue``, ``cancel``, ``retry``, ``pause``, ``resume``,
``queues`` and ``archive``.

Each calls one method of the library (`Ledger.create_job`, `cancel`, `retry`, `retry_failed`,
`pause`, `resume`, `archive`), so the dashboard's actions and these are the same commands. Every
action is an event naming who acted: ``--by NAME``, by default the user this shell runs as (the
library itself never guesses a name).
"""

from __future__ import annotations

import argparse
import getpass
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from ..errors import InvalidArgument
from . import format as fmt
from .common import AddCommand, open_ledger, out
from .maintain import _progress_bar

_DURATION = re.compile(r"^(?P<n>\d+)(?P<unit>[smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def duration(text: str) -> timedelta:
    """An argparse type: ``30d``, ``12h``, ``90m``, ``45s``, ``2w``."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30d, 12h, 90m, 45s or 2w, got {text!r}"
        )
    return timedelta(**{_UNITS[match["unit"]]: int(match["n"])})


def moment(text: str) -> datetime:
    """An argparse type: an ISO-8601 time (UTC when it names no zone), or a duration ago."""
    try:
        return datetime.now(UTC) - duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO time (2026-01-31T12:00) or a duration ago (24h), got {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def operator(args: argparse.Namespace) -> str:
    """Who acts: ``--by``, else the OS user (the CLI's default; never the library's)."""
    if args.by is not None:
        return str(args.by)
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        return "unknown"


def _config(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as e:
        raise InvalidArgument("--config", text, f"is not JSON ({e})") from None


def cmd_enqueue(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=False) as ledger:
        job_id = ledger.create_job(
            args.chat,
            _config(args.config),
            queue=args.queue,
            priority=args.priority,
            run_at=args.run_at,
            max_attempts=args.max_attempts,
            by=operator(args),
        )
        job = ledger.find_job(job_id)
    out(fmt.to_json(job) if args.json else f"enqueued job {job.id} on queue {job.queue!r}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=False) as ledger:
        job = ledger.find_job(args.job_id)
        cancelled = ledger.cancel(job.id, reason=args.reason, by=operator(args))
        job = ledger.find_job(job.id)
    if args.json:
        out(fmt.to_json({"cancelled": cancelled, "job": job}))
    elif cancelled:
        out(f"cancelled job {job.id}")
    else:
        out(f"job {job.id} was already {job.status.value}: nothing to cancel")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    if args.failed == (args.job_id is not None):
        raise InvalidArgument(
            "retry", args.job_id, "give either a JOB id or --failed (with --queue/--since)"
        )
    if not args.failed:
        if args.queue is not None or args.since is not None:
            raise InvalidArgument("--queue/--since", args.queue, "only go with --failed")
        with open_ledger(args, readonly=False) as ledger:
            job = ledger.retry(ledger.find_job(args.job_id).id, by=operator(args))
        out(fmt.to_json(job) if args.json else f"job {job.id} is pending again (retried)")
        return 0
    with open_ledger(args, readonly=False) as ledger:
        if not args.yes:
            matching = ledger.failed_jobs(queue=args.queue, since=args.since)
            return _confirm_needed(args, len(matching))
        ids = ledger.retry_failed_ids(queue=args.queue, since=args.since, by=operator(args))
    if args.json:
        out(fmt.to_json({"retried": len(ids), "jobs": ids}))
    else:
        out(f"retried {len(ids)} failed job(s)")
    return 0


def _confirm_needed(args: argparse.Namespace, count: int) -> int:
    """Without --yes a bulk retry only counts: nothing is written."""
    if args.json:
        out(fmt.to_json({"retried": 0, "would_retry": count, "dry_run": True}))
    else:
        out(f"{count} failed job(s) match; nothing written: rerun with --yes to retry them")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    return _queue_action(args, paused=True)


def cmd_resume(args: argparse.Namespace) -> int:
    return _queue_action(args, paused=False)


def _queue_action(args: argparse.Namespace, *, paused: bool) -> int:
    with open_ledger(args, readonly=False) as ledger:
        act = ledger.pause if paused else ledger.resume
        changed = act(args.queue, by=operator(args), reason=args.reason)
        now_paused = args.queue in ledger.paused_queues()
    word = "paused" if paused else "resumed"
    if args.json:
        out(fmt.to_json({"queue": args.queue, "paused": now_paused, "changed": changed}))
    elif changed:
        out(f"queue {args.queue!r} {word}")
    else:
        out(f"queue {args.queue!r} was already {'paused' if now_paused else 'not paused'}")
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=True) as ledger:
        states = ledger.queue_states()
    if args.json:
        out(fmt.to_json(states))
        return 0
    if not states:
        out("no queue was ever paused")
    for s in states:
        state = "paused" if s.paused else "running"
        by = f" by {s.by}" if s.by else ""
        out(f"{s.queue:<20} {state:<8} since {s.changed_at.isoformat()}{by}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=False) as ledger:
        report = ledger.archive(args.older_than, args.to, progress=_progress_bar("archiving"))
    if args.json:
        out(fmt.to_json(report))
    else:
        out(
            f"archived {report.archived_jobs} jobs ({report.archived_events} events) into "
            f"{report.archive}; the live ledger keeps {report.live_jobs} jobs "
            f"({report.live_events} events): {report.size_before} -> {report.size_after} bytes"
        )
    return 0


def _by(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--by", metavar="NAME", help="who acts, recorded in the event (default: the OS user)"
    )


def register(command: AddCommand) -> None:
    p = command("enqueue", cmd_enqueue, "create a pending job on QUEUE")
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument("--config", required=True, metavar="JSON", help="the job's config, as JSON")
    p.add_argument("--chat", type=int, default=0, metavar="ID", help="its chat id (default 0)")
    p.add_argument("--priority", type=int, default=0, help="higher is claimed first")
    p.add_argument("--run-at", type=moment, metavar="TIME", help="not claimable before TIME")
    p.add_argument("--max-attempts", type=int, default=1, metavar="N", help="attempts allowed")
    _by(p)

    p = command("cancel", cmd_cancel, "cancel a pending or running job")
    p.add_argument("job_id", metavar="JOB", help="a job id (or a unique prefix of one)")
    p.add_argument("--reason", help="why, recorded in the event")
    _by(p)

    p = command(
        "retry",
        cmd_retry,
        "send a failed or cancelled job back to pending as a new attempt; --failed: all failed",
    )
    p.add_argument("job_id", metavar="JOB", nargs="?", help="a job id (or a unique prefix)")
    p.add_argument("--failed", action="store_true", help="every failed job (with --yes)")
    p.add_argument("--queue", metavar="Q", help="with --failed: only this queue's")
    p.add_argument(
        "--since", type=moment, metavar="TIME", help="with --failed: failed at TIME or later"
    )
    p.add_argument("--yes", action="store_true", help="with --failed: really retry them")
    _by(p)

    for name, run, help in (
        ("pause", cmd_pause, "stop every worker from claiming QUEUE's jobs (running ones go on)"),
        ("resume", cmd_resume, "let workers claim a paused QUEUE's jobs again"),
    ):
        p = command(name, run, help)
        p.add_argument("queue", metavar="QUEUE")
        p.add_argument("--reason", help="why, recorded in the event")
        _by(p)

    command("queues", cmd_queues, "list the queues an operator paused or resumed")

    p = command(
        "archive",
        cmd_archive,
        "move the jobs finished more than AGE ago into a sealed archive file (SQLite)",
    )
    p.add_argument(
        "--older-than", type=duration, required=True, metavar="AGE", help="like 30d, 12h"
    )
    p.add_argument("--to", required=True, metavar="FILE", help="the new archive file")
