"""Checks on caller input, run before any transaction starts, so bad input writes nothing.

Every check raises `InvalidArgument` naming the argument and what to pass instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
from typing import Any

import msgspec

from ..errors import InvalidArgument

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
# How deep a config or payload may nest (a list or dict counts as one level). Far below Python's
# recursion limit, so decoding, comparing and replaying a stored value can never hit it, whatever
# the caller's stack depth.
MAX_DEPTH = 64
# The longest queue name, idempotency key, parent id or worker id, in characters. They are index
# keys on PostgreSQL, whose B-tree refuses an entry above about 2,700 bytes (a third of a page;
# one compressed well might pass, a random one not): 512 characters are at most 2,048 bytes of
# UTF-8, so a name either backend takes the other takes too. Hash a longer key first.
MAX_KEY_LENGTH = 512
_encoder = msgspec.json.Encoder()
_isfinite = math.isfinite
_LEAF_TYPES = frozenset({str, bool, type(None)})


def integer(name: str, value: Any, *, minimum: int = INT64_MIN, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name, value, f"expected an int, got {type(value).__name__}")
    if not minimum <= value <= INT64_MAX:
        raise InvalidArgument(name, value, f"must be between {minimum} and {INT64_MAX}")
    return value


def limit(value: Any) -> int:
    return integer("limit", value, minimum=0)


def text(name: str, value: Any, *, optional: bool = False, nonempty: bool = False) -> Any:
    if value is None and optional:
        return None
    if type(value) is not str:
        if isinstance(value, str):  # it would be stored as a plain str, and msgspec refuses it
            why = (
                f"expected a plain str, got the str subclass {type(value).__name__}; pass str(...)"
            )
            raise InvalidArgument(name, value, why)
        raise InvalidArgument(name, value, f"expected a str, got {type(value).__name__}")
    if nonempty and not value:
        raise InvalidArgument(name, value, "must not be empty")
    if value.isascii() and len(value) <= MAX_PAYLOAD_BYTES:
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgument(name, value, f"not valid Unicode text ({e.reason})") from e
    if len(value) > MAX_PAYLOAD_BYTES:
        raise InvalidArgument(name, value[:20], f"longer than {MAX_PAYLOAD_BYTES} characters")
    return value


def key(name: str, value: Any) -> str:
    """A queue name or key passed on its own (a claim's queues): a non-empty str of at most
    `MAX_KEY_LENGTH` characters."""
    checked: str = text(name, value, nonempty=True)
    if len(checked) > MAX_KEY_LENGTH:
        raise InvalidArgument(name, checked, TOO_LONG)
    return checked


TOO_LONG = (
    f"longer than {MAX_KEY_LENGTH} characters, the most a queue name, key or id may hold; "
    "for a longer key pass its hash (hashlib.sha256(key.encode()).hexdigest())"
)


def finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(name, value, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidArgument(name, value, "must be a finite number (not NaN or infinity)")
    return float(value)


def json_value(name: str, value: Any) -> Any:
    """Check that ``value`` may be stored as a config or payload (see `json_bytes`)."""
    json_bytes(name, value)
    return value


def json_bytes(name: str, value: Any) -> bytes:
    """Enforce law 9 and return the JSON encoding, so the caller need not encode twice.

    A config or payload holds JSON-native values only, because those (and only those) read back
    equal and of the same type: str (valid Unicode), int in int64 range, finite float, bool, None,
    list, and dict with str keys, nested at most `MAX_DEPTH` levels and at most
    `MAX_PAYLOAD_BYTES` encoded. msgspec would quietly turn a tuple, set, datetime, bytes, Struct
    or non-str key into something else, write NaN as null and copy a `msgspec.Raw` verbatim
    (even invalid JSON), so those are refused, with where they are and what to pass instead.

    Exact types, not isinstance: a str Enum or a dict subclass would read back as plain str or
    dict. The walk is one flat loop per level (no recursion, no path strings) because this is on
    the `log_event` / `create_job` hot path; only a refusal pays for `_explain`.
    """
    if not _is_json_native(value):
        raise _refusal(name, value)
    try:
        encoded = _encoder.encode(value)
    except UnicodeEncodeError:
        raise _refusal(name, value) from None  # finds the lone surrogate and says where
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise InvalidArgument(
            name,
            "<large value>",
            f"encodes to {len(encoded)} bytes of JSON; the limit is {MAX_PAYLOAD_BYTES} "
            "(16 MiB): store large data elsewhere and record a reference to it",
        )
    return encoded


def _is_json_native(value: Any) -> bool:
    """True when ``value`` holds only JSON-native values within `MAX_DEPTH` (strings' Unicode
    validity is left to the encoder). Breadth-first, one level at a time."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return _is_native_scalar(value)
    level = [value]
    for _ in range(MAX_DEPTH):
        deeper: list[Any] = []
        for node in level:
            if type(node) is dict:
                for key, item in node.items():
                    if type(key) is not str:
                        return False
                    kind = type(item)
                    if kind in _LEAF_TYPES:
                        continue
                    if kind is dict or kind is list:
                        deeper.append(item)
                    elif not _is_native_number(kind, item):
                        return False
            else:
                for item in node:
                    kind = type(item)
                    if kind in _LEAF_TYPES:
                        continue
                    if kind is dict or kind is list:
                        deeper.append(item)
                    elif not _is_native_number(kind, item):
                        return False
        if not deeper:
            return True
        level = deeper
    return False  # nested more than MAX_DEPTH levels (or it contains itself)


def _is_native_number(kind: type, item: Any) -> bool:
    if kind is int:
        return bool(INT64_MIN <= item <= INT64_MAX)
    return kind is float and _isfinite(item)


def _is_native_scalar(value: Any) -> bool:
    kind = type(value)
    return kind in _LEAF_TYPES or _is_native_number(kind, value)


def _refusal(name: str, value: Any) -> InvalidArgument:
    """The `InvalidArgument` for a value `_is_json_native` (or the encoder) refused: the first
    offending part in order, its path (``$.a[2]``, as msgspec writes them) and what to pass."""
    stack: list[tuple[str, int, Any]] = [("$", 0, value)]
    while stack:
        path, depth, item = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if depth == MAX_DEPTH:
                return InvalidArgument(name, "<deeply nested>", _TOO_DEEP)
            children = _children(path, item)
            if isinstance(children, str):
                return InvalidArgument(name, item, f"at {path}: {children}")
            stack.extend((p, depth + 1, child) for p, child in reversed(children))
            continue
        why = _scalar_problem(item)
        if why is not None:
            return InvalidArgument(name, item, f"at {path}: {why}")
    return InvalidArgument(name, value, "cannot be stored as JSON")  # not reached


_NOT_UNICODE = "not valid Unicode (it holds a lone surrogate); fix the text"
_TOO_DEEP = (
    f"nested more than {MAX_DEPTH} levels deep (or it contains itself); "
    "flatten it, or store it as a JSON string"
)


def _children(path: str, node: dict[Any, Any] | list[Any]) -> list[tuple[str, Any]] | str:
    """The node's children with their paths, or why one of its keys is refused."""
    if isinstance(node, list):
        return [(f"{path}[{i}]", child) for i, child in enumerate(node)]
    children = []
    for key, child in node.items():
        if type(key) is not str:
            return (
                f"the key {key!r} ({_type_name(key)}) is not a str, and only str keys read back as "
                'written (JSON turns 1 into "1", and two keys may then collide); '
                "convert the keys to str yourself"
            )
        if not _valid_unicode(key):
            return f"the key {key!r} is {_NOT_UNICODE}"
        label = f".{key}" if key.isidentifier() else f"[{_encoder.encode(key).decode()}]"
        children.append((path + label, child))
    return children


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalar_problem(item: Any) -> str | None:
    kind = type(item)
    if kind is str:
        return None if _valid_unicode(item) else _NOT_UNICODE
    if _is_native_scalar(item):
        return None
    if kind is int:
        return (
            f"an int outside the int64 range {INT64_MIN}..{INT64_MAX}; "
            "store bigger numbers as a str"
        )
    if kind is float:
        return 'NaN or infinity, which JSON cannot hold; pass None or a str such as "inf"'
    return f"{_type_name(item)} is not JSON-native; {_hint(item)}"


def _type_name(item: Any) -> str:
    kind = type(item)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _hint(item: Any) -> str:
    """What to pass instead of a value that is not JSON-native."""
    if isinstance(item, enum.Enum):
        return "pass its .value"
    if isinstance(item, tuple):
        return "a tuple would read back as a list: pass a list"
    if isinstance(item, set | frozenset):
        return "pass a list (sorted, if order should not matter)"
    if isinstance(item, bytes | bytearray | memoryview):
        return "pass text (for binary data, base64-encode it)"
    if isinstance(item, dt.datetime | dt.date | dt.time):
        return "pass its .isoformat() text"
    if isinstance(item, dt.timedelta):
        return "pass its .total_seconds()"
    if isinstance(item, msgspec.Raw):
        return "pass the decoded value: msgspec.json.decode(raw)"
    if isinstance(item, msgspec.Struct):
        return "pass msgspec.to_builtins(value)"
    if dataclasses.is_dataclass(item):
        return "pass dataclasses.asdict(value)"
    if isinstance(item, dict):
        return "pass a plain dict: dict(value)"
    if isinstance(item, list):
        return "pass a plain list: list(value)"
    for base in (str, int, float):
        if isinstance(item, base):
            return f"pass a plain {base.__name__}: {base.__name__}(value)"
    return "only str, int, float, bool, None, list and dict with str keys can be stored"
