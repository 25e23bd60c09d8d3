"""Export and import: the log as JSON lines, one event per line, for moving, archiving, ``jq``.

A line is ``{"position", "job_id", "version", "type", "recorded_at", "data", "hash"}`` where
``data`` is the event's own JSON and ``hash`` its chain hash (`domain.chain`; null for an event
written before the chain existed; lines of older exports have no ``hash`` at all). Import
recomputes the chain and refuses a line whose hash does not match, naming it. Import writes the
events with their positions into an empty ledger and then replays, so the projection comes out
identical to the source's. It trusts nothing: every line
is checked as replay would need it (see `Importer`), and one bad line refuses the whole import.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from array import array
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

import msgspec

from .domain import chain
from .domain import events as ev
from .domain import validate as check
from .domain.events import StoredEvent
from .domain.logrules import LogCheck
from .domain.timeutil import parse_text, to_text
from .domain.validate import MAX_DEPTH
from .errors import CorruptEvent, InvalidArgument, LedgerError


class ExportedEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    position: int
    job_id: str
    version: int
    type: str
    recorded_at: str
    data: msgspec.Raw
    hash: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ExportedEvent)
EXPORT_PAGE = 10_000


def export_page(snapshot: Any, after: int, size: int) -> list[tuple[int, bytes]]:
    """Up to ``size`` events after ``after``, as (position, line)."""
    page = []
    for position, job_id, version, event_type, data, recorded_at, digest in snapshot.export_rows(
        after, size
    ):
        if not isinstance(recorded_at, str):
            recorded_at = to_text(recorded_at)
        raw = msgspec.Raw(data.encode() if isinstance(data, str) else data)
        line = _encoder.encode(
            ExportedEvent(position, job_id, version, event_type, recorded_at, raw, digest)
        )
        page.append((position, line))
    return page


MAX_POSITION = 2**53
"""The largest position an import accepts. Positions are exact as JSON numbers in every tool up to
here (jq and JavaScript read numbers as doubles), and SQLite's largest rowid (2**63 - 1) is far
enough above it that appends after an import never run out: past it SQLite would pick free rowids
at random, and positions would stop growing (law 4)."""


class Importer:
    """Loads exported lines into an empty log, refusing anything replay could not have produced.

    Every line is checked in full before it is inserted: the envelope (exactly the exported fields,
    with their types), positions that only grow and stay within `MAX_POSITION`, the event's data
    (it decodes, and its tag is the line's ``type``), and the log's own rules (`rebuild.LogCheck`:
    each job's versions run 1, 2, 3, ... from its ``created``, times in the stored format, ints
    that fit SQLite). A refusal is an `InvalidArgument` naming the line; the caller's transaction
    then rolls back every line before it. Remembers which line held which position, so a refusal
    found later (by the replay that follows) can name its line too."""

    def __init__(self) -> None:
        self._positions = array("q")
        self._numbers = array("q")
        self._check = LogCheck()
        self._chain = chain.Walker()
        self._last = 0

    def load(self, tx: Any, lines: Iterable[bytes | str]) -> int:
        """Insert the lines' events; inside a write transaction. Returns how many."""
        if tx.last_position() != 0:
            raise LedgerError("import needs a new or empty ledger; this one already has events")
        for number, line in enumerate(lines, start=1):
            data = _line_bytes(number, line)
            if not data.strip():
                continue  # blank lines (a trailing one, say) carry no event
            item, text, at = self._checked(number, data)
            if not self._positions and item.position > 1:
                # an export that began after position 1: the chain starts at its first event
                # (written first: PostgreSQL's insert trigger lets an empty log start later
                # only where the chain's start says so)
                tx.write_checkpoint(chain.START, 1, item.position)
            tx.insert_exact(
                item.position, item.job_id, item.version, item.type, text, at, item.hash
            )
            self._positions.append(item.position)
            self._numbers.append(number)
        first = tx.events_after(0, 1) if self._positions else []
        if first and first[0][0] != self._positions[0]:
            # another process appended to the empty log between the look above and the first
            # line's insert (PostgreSQL: the look takes no lock), and the lines went after it
            raise LedgerError(
                f"another writer appended event {first[0][0]} to this ledger while the import "
                "began; nothing of the import was written: import into a new, empty ledger "
                "that nothing else writes to"
            )
        return len(self._positions)

    def _checked(self, number: int, line: bytes) -> tuple[ExportedEvent, str, datetime]:
        def refuse(why: str) -> InvalidArgument:
            return InvalidArgument(f"line {number}", line[:60], why)

        try:
            item = _decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            partial = "" if line.endswith(b"\n") else " (no newline at its end: was it cut short?)"
            raise refuse(f"not an exported event{partial}: {e}") from e
        except RecursionError as e:  # msgspec parses nesting by recursion, even for Raw
            raise refuse(
                f"nested deeper than any value the ledger stores (at most {MAX_DEPTH})"
            ) from e
        if not 0 < item.position <= MAX_POSITION:
            raise refuse(f"position {item.position} is outside 1 to {MAX_POSITION}")
        if item.position <= self._last:
            raise refuse(
                f"position {item.position} does not follow the previous line's {self._last}: "
                "positions only grow (lines out of order, or repeated?)"
            )
        if self._last and item.position != self._last + 1:
            raise refuse(
                f"position {item.position} skips from the previous line's {self._last}: "
                "positions run without gaps (lines missing from the export?)"
            )
        data = bytes(item.data)
        try:
            event = ev.decode(item.position, item.type, data)
        except CorruptEvent as e:
            raise refuse(f"its data cannot be read back: {e}") from e
        value = _held_value(event)
        if value is not _NOTHING:
            try:  # what create_job and log_event would refuse, the log cannot hold either
                check.json_value("its " + _held_name(event), value)
            except InvalidArgument as e:
                raise refuse(str(e)) from e
        at = parse_text(item.recorded_at)
        if at is None:
            raise refuse(
                f"its recorded_at {item.recorded_at!r} is not a time in the ledger's format "
                "(like 2026-01-31T12:00:00.000000+00:00, UTC)"
            )
        stored = StoredEvent(item.position, item.job_id, item.version, at, event)
        problem = self._check.problem(stored)
        if problem is not None:
            raise refuse(problem + " (a line missing, or a log edited outside the ledger?)")
        row = (item.position, item.job_id, item.version, item.type, data, to_text(at), item.hash)
        try:
            (self._chain.step if self._last else self._start_chain)(row)
        except chain.Break as e:
            raise refuse(f"its hash does not fit the chain: {e.what}") from e
        self._last = item.position
        return item, data.decode(), at

    def _start_chain(self, row: chain.ChainRow) -> None:
        """The first line: chained from the genesis hash at position 1; an export that starts
        later is taken from its own first hash on (the events before it are not here)."""
        if row[6] is not None and not _is_hex_digest(row[6]):
            raise chain.Break(row[0], f"{row[6]!r} is not a hash (64 lowercase hex digits)")
        if row[0] == 1:
            self._chain.step(row)
        else:
            self._chain.anchor(row)

    def refusal(self, error: CorruptEvent) -> InvalidArgument:
        """The replay after the load refused an event: name the line it came from."""
        index = bisect.bisect_left(self._positions, error.position)
        found = index < len(self._positions) and self._positions[index] == error.position
        name = f"line {self._numbers[index]}" if found else "import"
        return InvalidArgument(name, f"position {error.position}", str(error))


_NOTHING = object()


def _is_hex_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _held_value(event: ev.Event) -> object:
    """The caller's value an event carries (a job's config, an activity's payload)."""
    if type(event) is ev.JobCreated:
        return event.config
    if isinstance(event, ev.Activity):
        return event.payload
    if type(event) is ev.JobCharged:
        return event.detail
    return _NOTHING


def _held_name(event: ev.Event) -> str:
    if type(event) is ev.JobCharged:
        return "detail"
    return "config" if type(event) is ev.JobCreated else "payload"


def _line_bytes(number: int, line: object) -> bytes:
    """The line as UTF-8 bytes, refusing what is not text."""
    if not isinstance(line, bytes | str):
        raise InvalidArgument(f"line {number}", line, "expected bytes or str (a line of an export)")
    try:
        if isinstance(line, str):
            return line.encode("utf-8")
        line.decode("utf-8")  # msgspec checks strings, but not the raw ``data`` it keeps
        return line
    except (UnicodeDecodeError, UnicodeEncodeError) as e:
        raise InvalidArgument(f"line {number}", line[:60], f"not UTF-8 text ({e.reason})") from e


class _Closable(Protocol):
    def last_position(self) -> int: ...

    def close(self) -> None: ...


def creates_file(path: str) -> bool:
    """Whether opening a ledger at ``path`` will create the file (nothing is there yet)."""
    if path in ("", ":memory:") or path.startswith("file:"):
        return False  # no file of that name, or a URI: nothing of ours to remove later
    return not os.path.lexists(path)


def discard_empty(ledger: _Closable, path: str) -> bool:
    """Close ``ledger`` and remove its file (with ``-wal``/``-shm``) if it holds no events: for a
    refused import into a file the import created. Call it only for a path `creates_file` said
    was new; a file that existed before is never removed. True when it was removed."""
    try:
        empty = ledger.last_position() == 0
    except LedgerError:
        empty = False  # cannot tell: keep it
    ledger.close()
    if not empty:
        return False
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    return True
