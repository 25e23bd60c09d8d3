"""How long a failed job waits before its next attempt."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import msgspec

from ..errors import InvalidArgument
from .timeutil import MAX_SECONDS


class RetryPolicy(msgspec.Struct, frozen=True):
    """Exponential backoff with jitter: the n-th retry waits ``base * factor**(n-1)`` seconds,
    capped at ``cap``, then scaled by a random factor in ``[1 - jitter, 1]`` so that jobs that
    failed together do not all come back in the same instant. The defaults: 10 s, 20 s, 40 s, ...
    up to one hour. The chosen time is written into the event, so replay never re-rolls it.

    Checked when built, so a bad policy fails at `Ledger(...)`, not at some later ``fail``:
    ``cap`` is at most `MAX_SECONDS` (about 31 years), which with the clock's range
    (`timeutil.LATEST`) keeps ``now + delay`` inside what a datetime can hold."""

    base: float = 10.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        _number("base", self.base, 0.0, MAX_SECONDS)
        _number("factor", self.factor, 1.0, math.inf)
        _number("cap", self.cap, 0.0, MAX_SECONDS)
        _number("jitter", self.jitter, 0.0, 1.0)

    def delay(self, attempt: int, rng: random.Random) -> timedelta:
        try:
            grown = self.base * self.factor ** max(attempt - 1, 0)
        except OverflowError:  # factor**n past the float range: the cap applies anyway
            grown = math.inf
        raw = min(self.cap, grown)
        return timedelta(seconds=raw * (1.0 - self.jitter * rng.random()))


def _number(field: str, value: object, low: float, high: float) -> None:
    name = f"RetryPolicy.{field}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(name, value, f"expected a number, got {type(value).__name__}")
    if not (low <= value <= high and math.isfinite(value)):
        limits = f"at least {low:g}" if math.isinf(high) else f"from {low:g} to {high:g}"
        raise InvalidArgument(name, value, f"must be a finite number {limits}")
