"""UTC time: the one format the ledger stores and the checks on what callers pass in.

Times are stored as fixed-width ISO-8601 text in UTC (``2026-11-23T21:53:12.000000+00:00``):
readable with the ``sqlite3`` shell, and because every value has the same width and offset,
comparing the text compares the instants, so SQL can order and filter on it with an index.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from .errors import InvalidArgument

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def to_db(moment: datetime) -> str:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def check_aware(name: str, moment: object) -> datetime:
    if type(moment) is datetime and moment.tzinfo is UTC:
        return moment
    if not isinstance(moment, datetime):
        raise InvalidArgument(name, moment, "expected a timezone-aware datetime")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidArgument(name, moment, "naive datetime; pass one with a timezone (UTC)")
    return moment.astimezone(UTC)


def seconds(name: str, value: float | timedelta) -> float:
    """A positive, finite duration in seconds from a number or a timedelta."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(name, value, "expected seconds (a number) or a timedelta")
    if not (0 < value < 10**9):
        raise InvalidArgument(name, value, "must be a positive, finite number of seconds")
    return float(value)
