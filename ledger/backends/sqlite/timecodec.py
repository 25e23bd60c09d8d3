"""Times as SQLite stores them: the ledger's canonical text (`domain.timeutil.to_text`).

``2026-11-23T21:53:12.000000+00:00``: readable in the ``sqlite3`` shell, and because every value
has the same width and offset, comparing the text compares the instants, so SQL can order and
filter on it with an index. The same instant is often written several times in a row (a command's
time is its event's time and its row's ``updated_at``; a new job's three times are one), so the
last one formatted is kept, looked up by identity: a dict keyed by datetime was a loss, hashing a
new aware datetime costs more than formatting it. Texts read back are memoised by text.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ...domain.timeutil import parse_text as _parse
from ...domain.timeutil import to_text as _format

_fromiso = datetime.fromisoformat
# Canonical texts and the instants they name: filled by `to_text` (what a command writes, its
# next command reads back: a claim's times, a job's created_at) and `from_canonical`, read by
# `jobs_table` in place of parsing (a str's hash is cheaper than ``fromisoformat``).
known_times: dict[str, datetime] = {}
_texts_back = known_times
_MAX = 4096
_last: tuple[datetime | None, str] = (None, "")  # the last time formatted, and its text


def to_text(moment: datetime) -> str:
    global _last
    last = _last  # one read: another thread may replace it (a tuple, swapped whole)
    if last[0] is moment:  # held here, so never a new object at a freed one's address
        return last[1]
    text = _format(moment)
    _last = (moment, text)
    if type(moment) is datetime and moment.tzinfo is UTC:  # exactly what parsing text gives
        if len(known_times) >= _MAX:
            known_times.clear()
        known_times[text] = moment
    return text


def from_text(text: str) -> datetime:
    """A stored time, for reads: any ISO-8601 form parses (only the canonical form is ever
    written; a fold checks that strictly with `from_canonical`)."""
    return _fromiso(text)


def optional_text(moment: datetime | None) -> str | None:
    return None if moment is None else to_text(moment)


def optional_time(text: str | None) -> datetime | None:
    return None if text is None else from_text(text)


def from_canonical(text: str) -> datetime | None:
    """`from_text`, strictly: None unless ``text`` is exactly the canonical form (a fold checks
    every stored time this way: another form got there around the ledger)."""
    moment = _texts_back.get(text)
    if moment is not None:
        return moment
    moment = _parse(text)
    if moment is not None:
        if len(_texts_back) >= _MAX:
            _texts_back.clear()
        _texts_back[text] = moment
    return moment
