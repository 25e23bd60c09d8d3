"""The queues projection's fold: one `QueueState` per queue that an operator acted on.

A queue's own events (`QueuePaused`, `QueueResumed`) live in its stream ``queue:<name>`` of the
events table. `evolve` folds them into whether the queue is paused, by whom and since when; every
backend stores the result in its ``queues`` table, which its claim query consults, so a paused
queue is honoured by every worker of every process at the moment the pause commits. Pure, like
the jobs fold: the state depends only on the events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import msgspec

from ledger.domain import events as ev
from ledger.domain.events import StoredEvent
from ledger.errors import CorruptEvent


class QueueState(msgspec.Struct, frozen=True, kw_only=True):
    """A queue as the fold of its stream. Field order is the storage order of every backend."""

    queue: str
    paused: bool
    by: str | None  # who paused or resumed it last
    reason: str | None
    changed_at: datetime  # when it was last paused or resumed
    version: int  # the stream's version (its last event's)


FIELDS: tuple[str, ...] = QueueState.__struct_fields__


def queue_of(stream_id: str) -> str:
    return stream_id[len(ev.QUEUE_STREAM) :]


def evolve(state: QueueState | None, stored: StoredEvent) -> QueueState:
    """The queue's state after ``stored`` (``state`` None: no event of this queue before)."""
    event = stored.event
    if not isinstance(event, ev.QueuePaused | ev.QueueResumed):
        raise CorruptEvent(
            stored.position, ev.tag_of(event), f"stream {stored.job_id} holds only queue events"
        )
    return QueueState(
        queue=queue_of(stored.job_id),
        paused=isinstance(event, ev.QueuePaused),
        by=event.by,
        reason=event.reason,
        changed_at=stored.recorded_at,
        version=stored.version,
    )


class QueuesFold:
    """`evolve` over the queue events of a stream of events, the states touched kept until
    `take`. ``load``: a queue's stored state (inside the command's transaction)."""

    __slots__ = ("_dirty", "_load", "_states")

    def __init__(self, load: Callable[[str], QueueState | None] | None = None) -> None:
        self._load = load
        self._states: dict[str, QueueState | None] = {}
        self._dirty: dict[str, None] = {}

    def state(self, queue: str) -> QueueState | None:
        if queue in self._states:
            return self._states[queue]
        state = None if self._load is None else self._load(queue)
        self._states[queue] = state
        return state

    def apply(self, stored: StoredEvent) -> QueueState:
        queue = queue_of(stored.job_id)
        state = evolve(self.state(queue), stored)
        self._states[queue] = state
        self._dirty[queue] = None
        return state

    def states(self) -> Iterator[QueueState]:
        return (s for s in self._states.values() if s is not None)

    def take(self) -> list[QueueState]:
        """The states changed since the last `take` (in the order first changed). A command
        that changed none (nearly all: a job's) pays one test, not a list and a reset."""
        if not self._dirty:
            if self._states:  # states read, none changed: forget them as `reset` does
                self._states.clear()
            return []
        out = [s for q in self._dirty if (s := self._states[q]) is not None]
        self.reset()
        return out

    def reset(self) -> None:
        self._states.clear()
        self._dirty.clear()
