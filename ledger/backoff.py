"""How long a failed job waits before its next attempt."""

from __future__ import annotations

import random
from datetime import timedelta

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True):
    """Exponential backoff with jitter: the n-th retry waits ``base * factor**(n-1)`` seconds,
    capped at ``cap``, then scaled by a random factor in ``[1 - jitter, 1]`` so that jobs that
    failed together do not all come back in the same instant. The defaults: 10 s, 20 s, 40 s, ...
    up to one hour. The chosen time is written into the event, so replay never re-rolls it."""

    base: float = 10.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.25

    def delay(self, attempt: int, rng: random.Random) -> timedelta:
        raw = min(self.cap, self.base * self.factor ** max(attempt - 1, 0))
        return timedelta(seconds=raw * (1.0 - self.jitter * rng.random()))
