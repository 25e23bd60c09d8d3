"""Export and import: the log as JSON lines, one event per line, for moving, archiving, ``jq``.

A line is ``{"position", "job_id", "version", "type", "recorded_at", "data"}`` where ``data`` is
the event's own JSON. Import writes the events with their positions into an empty ledger and
then replays, so the projection comes out identical to the source's.
"""

from __future__ import annotations

from collections.abc import Iterable

import apsw
import msgspec

from . import events as ev
from . import store
from .errors import InvalidArgument, LedgerError


class ExportedEvent(msgspec.Struct, frozen=True):
    position: int
    job_id: str
    version: int
    type: str
    recorded_at: str
    data: msgspec.Raw


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ExportedEvent)
insert_exact_statement = (
    "INSERT INTO events (position, job_id, version, type, data, recorded_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


EXPORT_PAGE = 10_000


def export_page(conn: apsw.Connection, after: int, size: int) -> list[tuple[int, bytes]]:
    """Up to ``size`` events after ``after``, as (position, line)."""
    page = []
    for position, job_id, version, event_type, data, recorded_at in store.rows_after(
        conn, after, size
    ):
        raw = msgspec.Raw(data.encode() if isinstance(data, str) else data)
        line = _encoder.encode(
            ExportedEvent(position, job_id, version, event_type, recorded_at, raw)
        )
        page.append((position, line))
    return page


def import_lines(conn: apsw.Connection, lines: Iterable[bytes | str]) -> int:
    """Insert exported events into an empty log; inside a write transaction."""
    if store.last_position(conn) != 0:
        raise LedgerError("import needs a new or empty ledger; this one already has events")
    count = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = _decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise InvalidArgument(f"line {number}", line[:60], f"not an exported event: {e}") from e
        ev.decode(item.position, item.type, bytes(item.data))  # refuse what replay could not read
        try:
            conn.execute(
                insert_exact_statement,
                (
                    item.position,
                    item.job_id,
                    item.version,
                    item.type,
                    bytes(item.data).decode(),
                    item.recorded_at,
                ),
            )
        except apsw.ConstraintError as e:
            raise InvalidArgument(
                f"line {number}", line[:60], f"duplicate position or job version ({e})"
            ) from e
        count += 1
    return count
