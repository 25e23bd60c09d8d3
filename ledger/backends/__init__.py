"""Storage backends: one package per database, each holding all of that database's SQL.

`open_backend` picks one from what `Ledger` is given: a ``postgresql://`` (or ``postgres://``)
URL opens the PostgreSQL backend (the ``jobledger[postgres]`` extra), anything else is an SQLite
file path (or ``:memory:``). `protocol` documents what every backend provides.
"""

from __future__ import annotations

from typing import Any

from ..errors import StorageError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: str) -> bool:
    return target.startswith(POSTGRES_SCHEMES)


def open_backend(target: str, *, readonly: bool, durability: str, busy_timeout_ms: int) -> Any:
    """The backend for ``target``, opened and its schema created or checked."""
    if is_postgres_url(target):
        try:  # optional extra: imported only when asked for
            from .postgres import PostgresBackend  # type: ignore[attr-defined,unused-ignore]
        except ImportError as e:
            raise StorageError(
                f"opening {target.split('@')[-1]}: PostgreSQL support is not available ({e}); "
                "install it with `pip install 'jobledger[postgres]'`"
            ) from e
        return PostgresBackend(
            target, readonly=readonly, durability=durability, busy_timeout_ms=busy_timeout_ms
        )
    from .sqlite import SqliteBackend

    return SqliteBackend(
        target,
        readonly=readonly,
        durability=durability,  # type: ignore[arg-type]
        busy_timeout_ms=busy_timeout_ms,
    )
