"""The contract every projection keeps.

A projection is a name, a version of its shape and a fold. The fold never does I/O: it is handed
the events (and, for a live command, a way to load a state from inside the command's
transaction), so its results commit or roll back together with the events they come from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Projection(Protocol):
    name: str
    schema_version: int

    def fold(self, load: Callable[[str], Any] | None = None) -> Any: ...
