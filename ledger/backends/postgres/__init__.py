"""The PostgreSQL backend: a ledger on a server, through psycopg 3 (``jobledger[postgres]``).

Every ``import psycopg`` and every SQL statement for PostgreSQL lives in this package:
``schema.sql`` (the whole schema, run under an advisory lock at an open that finds the database
without this very text's digest), `connection`
(sessions, errors, the schema), `events_table` (the append-only log and the checkpoints),
`jobs_table` (the jobs projection) and `backend` (the storage protocol on top of them).
"""

from .backend import PostgresBackend, PostgresSnapshot, PostgresTransaction

__all__ = ["PostgresBackend", "PostgresSnapshot", "PostgresTransaction"]
