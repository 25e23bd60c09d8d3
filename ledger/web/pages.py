"""The dashboard's pages: each reads through the library (`Ledger`'s read methods) and renders a
Jinja template with autoescaping on, so text from configs and payloads is always shown as text.

Query parameters are checked here and a bad one is a 400 page that says what was wrong; the
library's own errors map to pages too (`JobNotFound`: 404, `InvalidArgument`: 400).
"""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..api import Ledger
from ..cli import format as fmt
from ..domain.model import EventType, JobEvent, JobStatus
from ..errors import InvalidArgument, JobNotFound, LedgerError
from ..reads import ThroughputBucket

PAGE_SIZE = 50
EVENTS_PAGE_SIZE = 100
MAX_PAGE = 10**9
_TEMPLATES = Path(__file__).parent / "templates"
STATUSES = [s.value for s in JobStatus]


class BadRequest(Exception):
    """A query parameter the page cannot use: answered with a 400 page naming it."""

    def __init__(self, name: str, value: str, why: str) -> None:
        super().__init__(f"{name}={value!r}: {why}")


class NothingToDo(LedgerError):
    """An action that had nothing to change (the job had ended, the queue was already paused):
    answered with a 409 page; the library wrote nothing."""


class Site:
    """What every page needs: the ledger, whether actions are on, and the templates."""

    def __init__(self, ledger: Ledger, *, allow_actions: bool) -> None:
        self.ledger = ledger
        self.allow_actions = allow_actions
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=True,  # every {{ }} is escaped: a config holding <script> shows as text
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["pretty"] = pretty
        self.env.filters["compact"] = lambda value: msgspec.json.encode(value).decode()
        self.env.filters["short"] = lambda job_id: job_id[:8]
        self.env.globals["age"] = lambda then: fmt.age(self.ledger.now(), then)
        self.env.globals["timestamp"] = lambda when: "-" if when is None else fmt.timestamp(when)
        self.env.globals["duration"] = lambda s: "-" if s is None else fmt.duration(s)

    def can(self, action: str) -> bool:
        """Whether the library offers ``action`` (retry and pause arrive in later releases)."""
        return hasattr(self.ledger, action)

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("title", "ledger")
        html = self.env.get_template(template).render(
            allow_actions=self.allow_actions, can=self.can, statuses=STATUSES, **context
        )
        return HTMLResponse(html, status_code=status_code)

    def error(self, status_code: int, message: str) -> HTMLResponse:
        titles = {
            400: "Bad request",
            403: "Refused",
            404: "Not found",
            409: "Conflict",
            503: "Unavailable",
        }
        title = titles.get(status_code, "Error")
        return self.render("error.html", status_code, title=title, message=message)


def pretty(value: Any) -> str:
    """A payload or config as indented JSON (times and all, as msgspec encodes them)."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def traceback_of(event: JobEvent) -> str | None:
    payload = event.payload
    if event.type in (EventType.ERROR, EventType.FAILED) and isinstance(payload, dict):
        tb = payload.get("traceback")
        return tb if isinstance(tb, str) else None
    return None


# -- query parameters --------------------------------------------------------------------------


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > 1000:
        raise BadRequest(name, value[:20] + "...", "longer than 1000 characters")
    return value


def _int(request: Request, name: str, *, minimum: int, maximum: int) -> int | None:
    value = _text(request, name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(name, value, "expected a whole number") from None
    if not minimum <= number <= maximum:
        raise BadRequest(name, value, f"must be between {minimum} and {maximum}")
    return number


def _page(request: Request, name: str = "page") -> int:
    return _int(request, name, minimum=1, maximum=MAX_PAGE) or 1


def _status(request: Request) -> str | None:
    status = _text(request, "status")
    if status is not None and status not in STATUSES:
        raise BadRequest("status", status, f"unknown status; known: {', '.join(STATUSES)}")
    return status


# -- pages -------------------------------------------------------------------------------------


def _chart(buckets: list[ThroughputBucket], label: str) -> dict[str, Any]:
    """Bars for one chart: finished jobs per slice, and the share of them that failed."""
    bars: list[dict[str, Any]] = []
    for b in buckets:
        completed = b.finished.get("completed", 0)
        failed = b.finished.get("failed", 0)
        done = completed + failed
        bars.append(
            {
                "start": b.start,
                "completed": completed,
                "failed": failed,
                "failure_rate": failed / done if done else 0.0,
            }
        )
    top = max([bar["completed"] + bar["failed"] for bar in bars] + [1])
    return {"label": label, "bars": bars, "top": top}


def overview(site: Site, request: Request) -> HTMLResponse:
    stats = site.ledger.stats()
    queues = sorted({q for by_queue in stats.counts.values() for q in by_queue})
    paused = _paused(site)
    charts = [
        _chart(site.ledger.throughput(span=timedelta(hours=1), buckets=12), "last hour (5 min)"),
        _chart(site.ledger.throughput(span=timedelta(days=1), buckets=24), "last day (1 h)"),
    ]
    return site.render(
        "overview.html",
        title="Overview",
        stats=stats,
        queues=queues,
        paused=paused,
        charts=charts,
    )


def _paused(site: Site) -> set[str]:
    """The paused queues, when the library can tell (an operator's pause/resume)."""
    reader = getattr(site.ledger, "paused_queues", None)
    if reader is None:
        return set()
    try:
        return set(reader())
    except LedgerError:
        return set()


def job_list(site: Site, request: Request) -> HTMLResponse:
    filters: dict[str, Any] = {
        "queue": _text(request, "queue"),
        "status": _status(request),
        "chat_id": _int(request, "chat", minimum=-(2**63), maximum=2**63 - 1),
        "text": _text(request, "q"),
    }
    page = _page(request)
    result = site.ledger.search_jobs(**filters, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    query = {k: v for k, v in request.query_params.items() if k != "page" and v != ""}
    return site.render(
        "jobs.html",
        title="Jobs",
        result=result,
        page=page,
        pages=max(1, -(-result.total // PAGE_SIZE)),
        query=query,
        filters=filters,
    )


def job_page(site: Site, request: Request) -> HTMLResponse:
    job = site.ledger.find_job(request.path_params["job_id"])
    events = site.ledger.job_events(job.id)
    page = _page(request, "events_page")
    shown = events[(page - 1) * EVENTS_PAGE_SIZE : page * EVENTS_PAGE_SIZE]
    timeline = [{"event": e, "traceback": traceback_of(e)} for e in shown]
    return site.render(
        "job.html",
        title=f"Job {job.id[:8]}",
        job=job,
        timeline=timeline,
        page=page,
        pages=max(1, -(-len(events) // EVENTS_PAGE_SIZE)),
        event_count=len(events),
        final=job.status.is_final,
    )


def chat_page(site: Site, request: Request) -> HTMLResponse:
    chat_id = _chat_id(request.path_params["chat_id"])
    page = _page(request)
    result = site.ledger.search_jobs(
        chat_id=chat_id, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE
    )
    return site.render(
        "chat.html",
        title=f"Chat {chat_id}",
        chat_id=chat_id,
        summary=site.ledger.active_jobs_summary(chat_id),
        result=result,
        page=page,
        pages=max(1, -(-result.total // PAGE_SIZE)),
        query={},
    )


def _chat_id(text: str) -> int:
    try:
        chat_id = int(text)
    except ValueError:
        raise BadRequest("chat", text, "expected a whole number") from None
    if not -(2**63) <= chat_id < 2**63:
        raise BadRequest("chat", text, "outside the 64-bit range of chat ids")
    return chat_id


def workers_page(site: Site, request: Request) -> HTMLResponse:
    page = _page(request)
    result = site.ledger.search_jobs(
        status="running", offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE
    )
    now = site.ledger.now()
    rows = [{"job": j, "lease_left": _left(now, j.lease_expires_at)} for j in result.jobs]
    workers = sorted({j.worker_id or "?" for j in result.jobs})
    return site.render(
        "workers.html",
        title="Workers",
        rows=rows,
        workers=workers,
        result=result,
        page=page,
        pages=max(1, -(-result.total // PAGE_SIZE)),
        query={},
    )


def _left(now: datetime, until: datetime | None) -> str:
    if until is None:
        return "-"
    seconds = (until - now).total_seconds()
    return "expired" if seconds <= 0 else fmt.duration(seconds)


# -- actions -----------------------------------------------------------------------------------


def act(site: Site, action: str, target: str, by: str) -> str:
    """Run one operator action through the library, naming who acted; returns where to go."""
    ledger: Any = site.ledger
    if action == "cancel":
        job = ledger.find_job(target)
        cancel = ledger.cancel
        if "by" in inspect.signature(cancel).parameters:
            done = cancel(job.id, reason="cancelled from the dashboard", by=by)
        else:
            done = cancel(job.id, reason=f"cancelled from the dashboard by {by}")
        if not done:
            raise NothingToDo(f"job {job.id} has already ended; nothing was written")
        return f"/jobs/{job.id}"
    if not site.can(action):
        raise InvalidArgument("action", action, "this version of the ledger does not offer it")
    if action == "retry":
        job = ledger.find_job(target)
        ledger.retry(job.id, by=by)
        return f"/jobs/{job.id}"
    if getattr(ledger, action)(target, by=by) is False:  # pause, resume: a queue
        state = "paused" if action == "pause" else "not paused"
        raise NothingToDo(f"queue {target!r} is already {state}; nothing was written")
    return "/"


__all__ = [
    "BadRequest",
    "JobNotFound",
    "Site",
    "act",
    "chat_page",
    "job_list",
    "job_page",
    "overview",
    "workers_page",
]
