"""Plain-text rendering for the command line: tables, ages, one-line payloads."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from ..domain.model import Job, JobEvent

_encoder = msgspec.json.Encoder()


def char_width(char: str) -> int:
    """Terminal columns one character takes: 2 for wide (CJK, fullwidth), 0 for combining marks
    and other zero-width characters, else 1."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def width(text: str) -> int:
    """Terminal columns ``text`` takes, so columns line up with wide text in them."""
    if text.isascii():
        return len(text)
    return sum(char_width(c) for c in text)


def pad(text: str, columns: int) -> str:
    """``text`` padded with spaces to ``columns`` terminal columns (``str.ljust`` counts
    characters, which misaligns wide ones)."""
    return text + " " * max(0, columns - width(text))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [width(h) for h in headers]
    for row in rows:
        widths = [max(w, width(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(pad(cell, w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def duration(seconds: float) -> str:
    """A span of time for people: tenths under a minute (``4.2s``), then the largest whole unit
    (``5m``, ``3h``, ``2d``). Rounds down, so a job 59.96 s old is not shown as a minute."""
    s = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{math.floor(s * 10) / 10:.1f}s"


def age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "-"
    return duration((now - then).total_seconds())


def timestamp(when: datetime) -> str:
    """A time with its zone: the ledger's times are UTC, shown as ``2026-01-01 12:00:00Z``."""
    if when.tzinfo is None:  # never from the ledger; say so rather than pretend it is UTC
        return when.strftime("%Y-%m-%d %H:%M:%S") + " (no zone)"
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def clip(text: str | None, columns: int) -> str:
    """One line of at most ``columns`` terminal columns, ending in ``…`` when cut."""
    text = (text or "").replace("\n", " ")
    if width(text) <= columns:
        return text
    out, used = [], 0
    for char in text:
        w = char_width(char)
        if used + w > columns - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "…"


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
    when = timestamp(event.created_at)
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
