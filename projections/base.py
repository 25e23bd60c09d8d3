"""The contract every projection keeps, and the checkpoint table they share.

A projection owns its tables. It never opens a transaction: it is handed a connection that is
already inside the command's (or replay's) write transaction, so its rows commit or roll back
together with the events they come from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import apsw

from ledger.errors import CorruptEvent
from ledger.events import StoredEvent


class UnfoldableEvent(CorruptEvent):
    """An event that decodes but cannot be folded where it stands in the log: it breaks a rule
    every log the ledger writes keeps (its job has no created event before it, a version gap,
    an unreadable timestamp, ...). Only a write that went around the ledger (raw SQL, another
    tool) can put it there; `verify` reports it and replay refuses at its position."""

    def __init__(self, position: int, event_type: str, why: str) -> None:
        super().__init__(position, event_type, why)
        self.why = why
        self.args = (
            f"event at position {position} (type {event_type!r}) cannot be applied: {why}; "
            "the ledger never writes such a log: was it changed around it? (`ledger verify`)",
        )


checkpoint_schema_statement = """CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name TEXT PRIMARY KEY,
    schema_version INTEGER NOT NULL,
    position INTEGER NOT NULL
)"""
checkpoint_select_statement = (
    "SELECT schema_version, position FROM projection_checkpoints WHERE name = ?"
)
checkpoint_upsert_statement = (
    "INSERT INTO projection_checkpoints (name, schema_version, position) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET schema_version = excluded.schema_version, "
    "position = excluded.position"
)
checkpoint_advance_statement = "UPDATE projection_checkpoints SET position = ? WHERE name = ?"


class ProjectionWriter(Protocol):
    def apply(self, stored: StoredEvent) -> None:
        """Fold one event into the projection's state (the one place rows are computed)."""

    def flush(self) -> None:
        """Write what `apply` computed to the tables."""


class Projection(Protocol):
    name: str
    schema_version: int
    tables: tuple[str, ...]

    def create_schema(self, conn: apsw.Connection, *, indexes: bool = True) -> None: ...

    def create_indexes(self, conn: apsw.Connection) -> None: ...

    def drop_schema(self, conn: apsw.Connection) -> None: ...

    def writer(self, conn: apsw.Connection) -> ProjectionWriter: ...

    def dump(self, conn: apsw.Connection) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        """Every row as (table, key, {column: value}) in key order, for `verify`."""
        ...


def read_checkpoint(conn: apsw.Connection, name: str) -> tuple[int, int] | None:
    try:
        row = conn.execute(checkpoint_select_statement, (name,)).fetchone()
    except apsw.SQLError:  # no checkpoint table yet: nothing was ever applied
        return None
    return None if row is None else (int(row[0]), int(row[1]))


def write_checkpoint(conn: apsw.Connection, projection: Projection, position: int) -> None:
    conn.execute(
        checkpoint_upsert_statement, (projection.name, projection.schema_version, position)
    )
