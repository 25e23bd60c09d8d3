"""Group commit on SQLite: `ledger.backends.group`'s core over an APSW write connection.

Every statement reports its error as it runs, so `flush` has nothing to do; the transaction's
own statements (SAVEPOINT, RELEASE, COMMIT) go through one cursor kept for them, since
`Connection.execute` makes a new cursor object for every statement.
"""

from __future__ import annotations

from functools import partial

import apsw

from ...errors import LedgerError
from ..group import Group, GroupCommit
from .connection import begin_immediate, rollback, wrap_sqlite_error

__all__ = ["Group", "GroupCommit", "SqliteTransactions"]


class SqliteTransactions:
    """`ledger.backends.group.Transactions` on one APSW connection."""

    error = apsw.Error

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn
        execute = conn.cursor().execute
        # The statements of every command as partials (C calls), not methods: a lone caller's
        # command runs begin and commit, and pays nothing measurable for the driver.
        self.begin = partial(begin_immediate, conn)
        self.savepoint = partial(execute, "SAVEPOINT command")
        self.release = partial(execute, "RELEASE command")
        self.commit = partial(execute, "COMMIT")
        self.rollback = partial(rollback, conn)

    def rollback_to(self) -> None:
        self._conn.execute("ROLLBACK TO command")
        self._conn.execute("RELEASE command")

    def flush(self) -> None:
        return None

    def in_transaction(self) -> bool:
        return not self._conn.get_autocommit()

    def aborted(self, reason: str) -> Exception:
        return apsw.AbortError(reason)

    def uncertain(self, error: Exception) -> bool:
        return False  # a COMMIT SQLite reports failed did not commit (its atomic commit)

    def interrupted_commit(self) -> bool | None:
        # The COMMIT is one C call: an interrupt lands before it ran or after it returned.
        return not self.in_transaction()

    def wrap(self, error: Exception, doing: str) -> LedgerError:
        assert isinstance(error, apsw.Error)
        return wrap_sqlite_error(error, doing)
