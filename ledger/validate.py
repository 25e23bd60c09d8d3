"""Checks on caller input, run before any transaction starts, so bad input writes nothing.

Every check raises `InvalidArgument` naming the argument and what to pass instead.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from .errors import InvalidArgument

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
_encoder = msgspec.json.Encoder()


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
    if not isinstance(value, str):
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


def finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(name, value, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidArgument(name, value, "must be a finite number (not NaN or infinity)")
    return float(value)


def json_value(name: str, value: Any) -> Any:
    """Check that msgspec can store ``value`` as JSON without changing it silently."""
    json_bytes(name, value)
    return value


def json_bytes(name: str, value: Any) -> bytes:
    """`json_value`, returning the encoding so the caller need not encode twice."""
    try:
        encoded = _encoder.encode(value)
    except RecursionError as e:
        raise InvalidArgument(name, "<deeply nested>", "nested too deeply to encode") from e
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as e:
        raise InvalidArgument(name, value, f"cannot be encoded as JSON: {e}") from e
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise InvalidArgument(
            name,
            "<large value>",
            f"encodes to {len(encoded)} bytes; the limit is {MAX_PAYLOAD_BYTES}",
        )
    # msgspec writes NaN and infinities as null, which would change the data on the way back:
    # refuse instead. Only values that encoded a null can hold one, so the walk is rare.
    if b"null" in encoded and _has_non_finite(value):
        raise InvalidArgument(name, value, "contains NaN or infinity, which JSON cannot hold")
    return encoded


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return False
