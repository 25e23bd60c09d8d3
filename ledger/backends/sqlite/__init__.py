"""The SQLite backend: a whole ledger in one file, through APSW.

Every ``import apsw`` and every SQL statement for SQLite lives in this package:
`connection` (opening, pragmas, write transactions), `events_table` (the append-only log and
the checkpoints), `jobs_table` (the jobs projection's table and queries), `timecodec` (how a time
is stored) and `backend` (the storage protocol on top of them).
"""

from .backend import SqliteBackend, SqliteSnapshot, SqliteTransaction
from .connection import DURABILITY_LEVELS, Durability

__all__ = [
    "DURABILITY_LEVELS",
    "Durability",
    "SqliteBackend",
    "SqliteSnapshot",
    "SqliteTransaction",
]
