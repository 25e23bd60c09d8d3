"""Commands that look at a ledger: ``jobs``, ``show``, ``events``, ``summary``, ``stats``.

Each opens the ledger read-only (never creating a file) and prints what the library returns;
which events to show and how to follow the log are the library's (`Ledger.iter_events`,
`Ledger.follow`), so the dashboard and the async API show the same."""

from __future__ import annotations

import argparse
import sys

from ..domain.model import EventType, JobStatus
from ..domain.validate import INT64_MAX
from . import format as fmt
from .common import AddCommand, natural, open_ledger, out


def cmd_jobs(args: argparse.Namespace) -> int:
    limit = args.limit
    with open_ledger(args, readonly=True) as ledger:
        jobs = ledger.jobs(  # one more than asked: tells whether the list was cut
            status=args.status,
            chat_id=args.chat,
            queue=args.queue,
            limit=limit + 1 if limit < INT64_MAX else limit,
        )
        cut = len(jobs) > limit
        del jobs[limit:]
        out(fmt.to_json(jobs) if args.json else fmt.job_rows(ledger.now(), jobs))
    if cut:  # on stderr, so the listing (or its JSON) on stdout stays whole
        sys.stderr.write(f"(showing the newest {limit} jobs; there are more: --limit N for more)\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=True) as ledger:
        job = ledger.find_job(args.job_id)
        events = ledger.job_events(job.id)
        children = ledger.children(job.id)
        if args.json:
            out(fmt.to_json({"job": job, "children": children, "events": events}))
        else:
            out(fmt.job_details(job))
            if children:  # the subagents it spawned (`ledger tree` shows the whole subtree)
                out("\nchildren:")
                for child in children:
                    out(f"  {child.id}  {child.status.value}")
            out("\nevents:")
            for event in events:
                out(fmt.event_line(event, with_job=False))
                traceback = (
                    event.payload.get("traceback") if isinstance(event.payload, dict) else None
                )
                if event.type is EventType.ERROR and isinstance(traceback, str):
                    out(
                        "\n".join("          | " + line for line in traceback.rstrip().splitlines())
                    )
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    if args.count == 0:  # asked for nothing: print nothing, and do not even open the file
        return 0
    with open_ledger(args, readonly=True) as ledger:
        job_id = None if args.job is None else ledger.find_job(args.job).id
        filters = {"job_id": job_id, "chat_id": args.chat, "types": args.type}
        events = (
            ledger.follow(args.after, poll=args.interval, **filters)
            if args.follow
            else ledger.iter_events(args.after, **filters)
        )
        for printed, event in enumerate(events, start=1):
            out(fmt.to_json(event) if args.json else fmt.event_line(event))
            if args.follow:
                sys.stdout.flush()  # a follower is read as it goes, often through a pipe
            if args.count is not None and printed >= args.count:
                break
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=True) as ledger:
        text = ledger.active_jobs_summary(args.chat_id)
        out(
            fmt.to_json({"chat_id": args.chat_id, "summary": text})
            if args.json
            else text.rstrip("\n")
        )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with open_ledger(args, readonly=True) as ledger:
        stats = ledger.stats()
        now = ledger.now()
    if args.json:
        out(fmt.to_json(stats))
        return 0
    rows = [
        (status, queue, str(n))
        for status, queues in stats.counts.items()
        for queue, n in queues.items()
    ]
    out(fmt.table(("STATUS", "QUEUE", "JOBS"), rows) if rows else "no jobs")
    finished = ", ".join(f"{n} {s}" for s, n in sorted(stats.finished_last_hour.items())) or "none"
    out(f"\nfinished in the last hour: {finished}")
    p50 = "-" if stats.duration_p50 is None else fmt.duration(stats.duration_p50)
    p95 = "-" if stats.duration_p95 is None else fmt.duration(stats.duration_p95)
    out(f"duration of completed jobs: p50 {p50}, p95 {p95}")
    out(f"total cost: {stats.total_cost_cents:.2f} cents")
    out(
        f"in the log: {stats.claimed} claimed, {stats.completed} completed, {stats.failed} "
        f"failed, {stats.retried} retried, {stats.rescued} rescued"
    )
    oldest = stats.oldest_pending
    out(
        "oldest pending: "
        + ("none" if oldest is None else f"{oldest.id[:8]} ({fmt.age(now, oldest.created_at)} old)")
    )
    return 0


def register(command: AddCommand) -> None:
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
