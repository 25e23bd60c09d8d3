"""Plain-text rendering for the command line: tables, ages, one-line payloads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from .model import Job, JobEvent

_encoder = msgspec.json.Encoder()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "-"
    s = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def clip(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def role(job: Job) -> str:
    value = job.config.get("role") if isinstance(job.config, dict) else None
    return value if isinstance(value, str) else "-"


def job_rows(now: datetime, jobs: Sequence[Job]) -> str:
    rows = [
        (
            j.id[:8],
            j.status.value,
            j.queue,
            role(j),
            f"{j.attempts}/{j.max_attempts}",
            age(now, j.created_at),
            clip(j.error_message or j.result_summary, 50),
        )
        for j in jobs
    ]
    return table(("ID", "STATUS", "QUEUE", "ROLE", "ATTEMPTS", "AGE", "SUMMARY/ERROR"), rows)


def payload_text(payload: Any) -> str:
    return _encoder.encode(payload).decode()


def event_line(event: JobEvent, *, with_job: bool = True) -> str:
    when = event.created_at.strftime("%Y-%m-%d %H:%M:%S")
    job = f"{event.job_id[:8]}  " if with_job else ""
    return f"{event.position:>8}  {when}  {job}v{event.version:<3} {event.type.value:<15} " + clip(
        payload_text(event.payload), 100
    )


def job_details(job: Job) -> str:
    fields = msgspec.structs.asdict(job)
    width = max(len(k) for k in fields)
    out = []
    for key, value in fields.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif not isinstance(value, str) and value is not None:
            value = payload_text(value)
        out.append(f"{key.ljust(width)}  {'-' if value is None else value}")
    return "\n".join(out)


def to_json(value: Any) -> str:
    return _encoder.encode(value).decode()
