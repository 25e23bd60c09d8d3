"""Times as SQLite stores them: the ledger's canonical text (`domain.timeutil.to_text`).

``2026-11-23T21:53:12.000000+00:00``: readable in the ``sqlite3`` shell, and because every value
has the same width and offset, comparing the text compares the instants, so SQL can order and
filter on it with an index. Formatting a datetime costs more than a whole event insert's share of
Python, and the same instant is written many times (every event of a command shares its time;
replay turns each text back into the datetime it came from), so both directions are memoised.
"""

from __future__ import annotations

from datetime import datetime

from ...domain.timeutil import parse_text as _parse
from ...domain.timeutil import to_text as _format

_fromiso = datetime.fromisoformat
_texts: dict[datetime, str] = {}
_texts_back: dict[str, datetime] = {}
_MAX = 4096


def to_text(moment: datetime) -> str:
    text = _texts.get(moment)
    if text is None:
        text = _format(moment)
        if len(_texts) >= _MAX:
            _texts.clear()
            _texts_back.clear()
        _texts[moment] = text
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
        if len(_texts) >= _MAX:
            _texts.clear()
            _texts_back.clear()
        _texts[moment] = text
        _texts_back[text] = moment
    return moment
