"""The hash chain over the log: the stable encoding of an event and how hashes link.

Each event's hash is ``SHA-256(previous hash || envelope || fields)``, so it covers every event
before it: an edit, a deletion or an insertion anywhere changes every hash from there on, and a
head recorded earlier (`parse_head`) no longer matches once the log was truncated or rewritten.

The encoding (version 1; never changes, a new one would get a new genesis):

- the previous event's hash as its 32 raw bytes (for position 1: `GENESIS`),
- ``position`` and ``version`` as signed 64-bit big-endian integers,
- the byte lengths of ``job_id``, ``type``, ``recorded_at`` (4 bytes each, big-endian) and of
  ``data`` (8 bytes, big-endian),
- then those four as UTF-8 bytes in that order: ``job_id``, ``type``, ``recorded_at`` in the
  ledger's canonical text (``2026-01-31T12:00:00.000000+00:00``, `timeutil.to_text`) and ``data``
  exactly as stored (the event's JSON text).

Lengths first make the encoding unambiguous (no separator can be forged inside a field). A hash
is stored and shown as 64 lowercase hex digits.

Logs written before the chain existed (store schema 1) have events without a stored hash. The
chain still starts at position 1 over every event: their hashes are computed, not stored, and
the first stored hash (written by the first append after the upgrade) covers all of them. So an
old event changed after the upgrade is detected at the first hashed event; one changed before
the upgrade was never covered. Once an event carries a hash, every later one must.

Pure: no I/O, no clock; the backends and verify call it with the rows they read.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from ..errors import InvalidArgument

ALGORITHM = "sha256"
GENESIS = hashlib.sha256(b"jobledger event chain v1").digest()
"""The "previous hash" of position 1."""

START = "chain_start"
"""The checkpoint row naming where a log begins when it is not position 1 (an import of an export
that began later): verify starts the chain there, taking that event's stored hash as given. A
log without it starts at 1, so events deleted from its front break the chain."""

_HEADER = struct.Struct(">qqIIIQ")
_sha256 = hashlib.sha256

# (position, job_id, version, type, data as stored, recorded_at text, stored hash hex or None)
ChainRow = tuple[int, str, int, str, bytes, str, str | None]


def link(
    previous: bytes,
    position: int,
    job_id: str,
    version: int,
    event_type: str,
    data: bytes,
    recorded_at: str,
) -> bytes:
    """The hash of one event, given the hash of the event before it (raw bytes)."""
    job = job_id.encode()
    tag = event_type.encode()
    at = recorded_at.encode()
    header = _HEADER.pack(position, version, len(job), len(tag), len(at), len(data))
    return _sha256(b"".join((previous, header, job, tag, at, data))).digest()


def link_row(previous: bytes, row: ChainRow) -> bytes:
    """`link` for a row as the backends read it; ``TypeError``/``ValueError`` for a row no
    ledger wrote (a value of the wrong type, an out-of-range number)."""
    position, job_id, version, event_type, data, recorded_at, _ = row
    try:
        if isinstance(data, str):
            data = data.encode()
        return link(previous, position, job_id, version, event_type, bytes(data), recorded_at)
    except (struct.error, AttributeError, UnicodeEncodeError) as e:
        raise ValueError(f"a value the chain cannot encode ({e})") from e


def hash_of(rows: Iterable[ChainRow], start: bytes = GENESIS) -> bytes:
    """The chain's hash after ``rows`` (which must follow the event whose hash is ``start``)."""
    current = start
    for row in rows:
        current = link_row(current, row)
    return current


class Break(Exception):
    """Where the chain stops matching: the position and what is wrong there."""

    def __init__(self, position: int | None, what: str) -> None:
        super().__init__(what)
        self.position = position
        self.what = what


class Walker:
    """Walks the log in position order, recomputing the chain, and raises `Break` at the first
    event that does not fit it: a stored hash that differs from the recomputed one, a position
    that skips (a deleted event), or an event without a hash after hashed ones."""

    __slots__ = ("current", "hashed", "position")

    def __init__(self) -> None:
        self.current = GENESIS
        self.position = 0
        self.hashed = False

    def step(self, row: ChainRow) -> None:
        position, stored = row[0], row[6]
        if position != self.position + 1:
            raise Break(
                position,
                f"position {position} follows position {self.position}: "
                f"{'events are' if position > self.position + 2 else 'an event is'} missing "
                "(deleted around the ledger)",
            )
        try:
            computed = link_row(self.current, row)
        except (TypeError, ValueError) as e:
            raise Break(position, f"the event cannot be hashed: {e}") from e
        if stored is None:
            if self.hashed:
                raise Break(position, "the event has no hash, but events before it have")
        elif stored != computed.hex():
            self.hashed, self.current, self.position = True, computed, position
            raise Break(position, _mismatch(position, stored, computed.hex()))
        else:
            self.hashed = True
        self.current, self.position = computed, position

    def anchor(self, row: ChainRow) -> None:
        """Start at ``row`` without checking its link (the events before it are not here: an
        import of an export that began after position 1); its stored hash, if any, is taken
        as the chain's value there, and the walk checks every row after it."""
        position, stored = row[0], row[6]
        try:
            computed = link_row(self.current, row)
        except (TypeError, ValueError) as e:
            raise Break(position, f"the event cannot be hashed: {e}") from e
        self.hashed = stored is not None
        self.current = bytes.fromhex(stored) if stored is not None else computed
        self.position = position

    @property
    def head_hex(self) -> str:
        return self.current.hex()


def _mismatch(position: int, stored: str, computed: str) -> str:
    return (
        f"the stored hash of position {position} is {stored[:16]}..., but its content and the "
        f"events before it hash to {computed[:16]}...: this event, or one before it that has no "
        "stored hash of its own, was changed around the ledger"
    )


def parse_head(text: object) -> tuple[int, str]:
    """``POS:HASH`` (what ``ledger head`` prints) as (position, hash hex), or `InvalidArgument`."""
    why = "expected POSITION:HASH as `ledger head` prints it (like 42:3f5a...; 64 hex digits)"
    if not isinstance(text, str) or text.count(":") != 1:
        raise InvalidArgument("expect_head", text, why)
    position_text, digest = text.split(":")
    if not position_text.isdigit() or not position_text.isascii():
        raise InvalidArgument("expect_head", text, why)
    return check_head((int(position_text), digest))


def check_head(head: object) -> tuple[int, str]:
    """A (position, hash hex) pair as `Ledger.head` returns it, checked."""
    why = "expected (position, hash) as Ledger.head() returns it: an int >= 0 and 64 hex digits"
    if isinstance(head, str):
        return parse_head(head)
    if not isinstance(head, tuple | list) or len(head) != 2:
        raise InvalidArgument("expect_head", head, why)
    position, digest = head
    if type(position) is not int or position < 0 or not isinstance(digest, str):
        raise InvalidArgument("expect_head", head, why)
    digest = digest.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidArgument("expect_head", head, why)
    return position, digest
