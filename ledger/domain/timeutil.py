"""Time in the domain: aware UTC datetimes, and the checks on the times and durations callers
pass in. The domain never reads a clock: the `Ledger` takes one (a callable) and hands each
command its time; how a backend stores a time is the backend's business."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from ..errors import InvalidArgument

Clock = Callable[[], datetime]

# The longest duration `seconds` accepts (about 31.7 years): leases, backoff caps, timeouts.
MAX_SECONDS = 10**9
# SQLite's busy timeout is a C int of milliseconds: at most 2**31 - 1 ms, about 24.8 days.
MAX_BUSY_TIMEOUT = (2**31 - 1) // 1000
# The times the ledger takes (a job's run_at, the clock's now). The room above LATEST is more
# than a longest lease plus a longest retry backoff, so ``now + lease`` and ``now + delay`` never
# leave what `datetime` can hold (OverflowError); the day after datetime.min leaves room for
# "the last hour" in stats and for any timezone offset.
EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
LATEST = datetime(9900, 1, 1, tzinfo=UTC)


def check_aware(name: str, moment: object) -> datetime:
    """A timezone-aware datetime between `EARLIEST` and `LATEST`, as UTC."""
    if type(moment) is datetime and moment.tzinfo is UTC:
        if EARLIEST <= moment <= LATEST:
            return moment
        raise _out_of_range(name, moment)
    if not isinstance(moment, datetime):
        raise InvalidArgument(name, moment, "expected a timezone-aware datetime")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidArgument(name, moment, "naive datetime; pass one with a timezone (UTC)")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # datetime.max at a negative offset is past year 9999 in UTC
        raise _out_of_range(name, moment) from None
    if EARLIEST <= utc <= LATEST:
        return utc
    raise _out_of_range(name, moment)


def _out_of_range(name: str, moment: datetime) -> InvalidArgument:
    return InvalidArgument(
        name,
        moment,
        f"outside the times the ledger can schedule ({EARLIEST.date()} to {LATEST.date()} UTC, "
        "leaving room for leases and retry delays); use a time in that range",
    )


def seconds(name: str, value: float | timedelta, *, maximum: float = MAX_SECONDS) -> float:
    """A positive, finite duration in seconds, less than ``maximum``, from a number or a
    timedelta."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(name, value, "expected seconds (a number) or a timedelta")
    if not (0 < value < maximum):
        raise InvalidArgument(
            name, value, f"must be a positive, finite number of seconds below {maximum:.10g}"
        )
    return float(value)


# The ledger's one text form of a time: fixed-width ISO-8601 in UTC with microseconds
# (``2026-11-23T21:53:12.000000+00:00``). Exports carry it, and the SQLite backend stores it:
# every value has the same width and offset, so comparing the text compares the instants.
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}\+00:00")


_iso = msgspec.json.Encoder().encode  # a UTC datetime as b'"2026-11-23T21:53:12.000001Z"'


def to_text(moment: datetime) -> str:
    """``moment`` in the canonical text form. Cut from msgspec's ISO-8601 (its ``Z`` becomes
    ``+00:00``; it leaves out a zero fraction): 7x cheaper than ``isoformat(timespec=...)``,
    which cost a command more than its event insert's share of Python."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    encoded = _iso(moment)
    size = len(encoded)
    if size == 29:
        return encoded[1:27].decode() + "+00:00"
    if size == 22:  # no fraction: a whole second
        return encoded[1:20].decode() + ".000000+00:00"
    return moment.isoformat(timespec="microseconds")  # not reached for a datetime in UTC


def parse_text(text: object) -> datetime | None:
    """The time a canonical text names, or None when ``text`` is not one."""
    if type(text) is not str or _CANONICAL.fullmatch(text) is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # the shape is right, but not the month, day or hour
        return None
