"""The eventsourcing aggregate of the peer benchmark; a module of its own so that the events'
topics (module and class names) resolve when the log is read back."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import Aggregate, event


class BenchJob(Aggregate):
    """A job as an eventsourcing aggregate: created with its chat and config, then progress."""

    @event("Created")
    def __init__(self, chat_id: int, config: Any) -> None:
        self.chat_id = chat_id
        self.config = config
        self.steps = 0

    @event("Progressed")
    def progress(self, payload: Any) -> None:
        self.steps += 1
