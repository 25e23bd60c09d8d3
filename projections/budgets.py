"""The budgets projection's fold: one `BudgetState` per chat whose budget was ever set.

A chat's own events (`BudgetSet`) live in its stream ``chat:<id>`` of the events table. The fold
keeps only the limit (and the stream's version): what a chat has spent and reserved is not
stored twice, it is summed from the jobs projection (its jobs' ``cost_cents``, and the
``max_cost_cents`` still open of its running jobs) by the backend, inside the claim's or the
charge's own transaction. So the budget a claim checks is always the fold of the log, and replay
rebuilds every budget with the jobs. Pure, like the jobs fold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import msgspec

from ledger.domain import events as ev
from ledger.domain.events import StoredEvent
from ledger.errors import CorruptEvent


class BudgetState(msgspec.Struct, frozen=True, kw_only=True):
    """A chat's budget as the fold of its stream. Field order is the storage order."""

    chat_id: int
    limit_cents: float | None  # None: unlimited (the budget was removed)
    changed_at: datetime
    version: int  # the stream's version (its last event's)


FIELDS: tuple[str, ...] = BudgetState.__struct_fields__


def chat_of(stored: StoredEvent) -> int:
    """The chat a ``chat:<id>`` stream belongs to (its events also carry it)."""
    event = stored.event
    if not isinstance(event, ev.BudgetSet) or stored.job_id != ev.chat_stream(event.chat_id):
        raise CorruptEvent(
            stored.position,
            ev.tag_of(event),
            f"stream {stored.job_id} holds only budget_set events of its own chat",
        )
    return event.chat_id


def evolve(state: BudgetState | None, stored: StoredEvent) -> BudgetState:
    """The chat's budget after ``stored`` (``state`` None: no budget event of it before)."""
    chat_id = chat_of(stored)
    event = stored.event
    assert isinstance(event, ev.BudgetSet)
    return BudgetState(
        chat_id=chat_id,
        limit_cents=event.limit_cents,
        changed_at=stored.recorded_at,
        version=stored.version,
    )


class BudgetsFold:
    """`evolve` over the budget events of a stream of events, the states touched kept until
    `take`. ``load``: a chat's stored budget (inside the command's transaction)."""

    __slots__ = ("_dirty", "_load", "_states")

    def __init__(self, load: Callable[[int], BudgetState | None] | None = None) -> None:
        self._load = load
        self._states: dict[int, BudgetState | None] = {}
        self._dirty: dict[int, None] = {}

    def state(self, chat_id: int) -> BudgetState | None:
        if chat_id in self._states:
            return self._states[chat_id]
        state = None if self._load is None else self._load(chat_id)
        self._states[chat_id] = state
        return state

    def apply(self, stored: StoredEvent) -> BudgetState:
        chat_id = chat_of(stored)
        state = evolve(self.state(chat_id), stored)
        self._states[chat_id] = state
        self._dirty[chat_id] = None
        return state

    def states(self) -> Iterator[BudgetState]:
        return (s for s in self._states.values() if s is not None)

    def take(self) -> list[BudgetState]:
        """The states changed since the last `take` (in the order first changed). A command
        that changed none (nearly all: a job's) pays one test, not a list and a reset."""
        if not self._dirty:
            if self._states:  # states read, none changed: forget them as `reset` does
                self._states.clear()
            return []
        out = [s for c in self._dirty if (s := self._states[c]) is not None]
        self.reset()
        return out

    def reset(self) -> None:
        if self._states:
            self._states.clear()
            self._dirty.clear()
