"""Connecting to PostgreSQL, configuring sessions, the schema, and turning psycopg errors into
the ledger's own.

Every session the backend opens is set up here and nowhere else: ``TimeZone`` UTC (so every
``timestamptz`` comes back as the instant it was stored, and year 9999 UTC stays loadable), the
durability (``synchronous_commit``), the lock timeout and, for a read-only ledger,
``default_transaction_read_only``. A ``search_path`` given in the URL (``?options=-csearch_path=s``)
is libpq's business: the URL is handed to libpq as it is, and every statement of the backend
names its tables unqualified, so a ledger lives in whichever schema the URL selects.
"""

from __future__ import annotations

import hashlib
import re
import select
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.types.string import TextLoader

from ...errors import LedgerBusy, LedgerError, SchemaError, StorageError, StorageUnavailable
from . import catalog

Durability = Literal["full", "normal"]
# "normal" (synchronous_commit off): a commit returns before its WAL reaches the disk. A crash of
# the server (or of its machine) can lose the last few hundred milliseconds of acknowledged
# commits; it never corrupts the database or splits a transaction (PostgreSQL's own guarantee).
SYNCHRONOUS_COMMIT: dict[str, str] = {"full": "on", "normal": "off"}
STORE_SCHEMA_VERSION = 1
CONNECT_TIMEOUT = 10  # seconds: a wrong host fails in this time, not after the OS's minutes
_SCHEMA_TEXT: str | None = None
_SCHEMA_DIGEST: str | None = None


def schema_text() -> str:
    """``schema.sql``, the one readable schema file (run whole, as one transaction)."""
    global _SCHEMA_TEXT
    if _SCHEMA_TEXT is None:
        _SCHEMA_TEXT = resources.files(__package__).joinpath("schema.sql").read_text("utf-8")
    return _SCHEMA_TEXT


def redact(url: str) -> str:
    """``url`` without its password, for messages and ``Backend.target``."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
        if "password" in parts.query:
            parts = parts._replace(query=re.sub(r"(password=)[^&]*", r"\1***", parts.query))
        return urlunsplit(parts)
    except ValueError:
        return "the PostgreSQL URL"


class _UtcTimestamptzLoader(Loader):
    """``timestamptz`` as an aware datetime in `datetime.UTC` (psycopg's own gives a
    ``ZoneInfo("UTC")``; the domain compares ``tzinfo is UTC``). Wraps the fast C loader."""

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        base = psycopg.adapters.get_loader(oid, Format.TEXT)
        assert base is not None
        self._inner = base(oid, context)

    def load(self, data: Any) -> datetime:
        value: datetime = self._inner.load(data)
        return value.astimezone(UTC)


def _register_loaders(conn: psycopg.Connection[Any]) -> None:
    """After the session's TimeZone is set: psycopg's C loader already gives `datetime.UTC`
    when the server reports ``UTC`` (a Python loader per value costs a read ~5%), so the
    wrapper is only for a server that names the zone otherwise."""
    types = conn.adapters.types
    if conn.pgconn.parameter_status(b"TimeZone") != b"UTC":
        conn.adapters.register_loader(types["timestamptz"].oid, _UtcTimestamptzLoader)
    # json as its exact text: the ledger decodes event data itself (msgspec), byte for byte.
    conn.adapters.register_loader(types["json"].oid, TextLoader)


def session_statements(durability: str, lock_timeout_ms: int, readonly: bool) -> list[str]:
    statements = [
        "SET TimeZone TO 'UTC'",
        f"SET synchronous_commit TO {SYNCHRONOUS_COMMIT[durability]}",
        f"SET lock_timeout TO {int(lock_timeout_ms)}",
    ]
    if readonly:
        statements.append("SET default_transaction_read_only TO on")
    return statements


def configure(conn: psycopg.Connection[Any], statements: list[str]) -> None:
    """Apply the session settings (and the loaders) to a fresh connection; leaves it idle."""
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.autocommit = autocommit
    _register_loaders(conn)


def still_open(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection is still the server's, as far as it can tell without a round
    trip (a zero-timeout poll of its socket, about a microsecond).

    Why: a server that shuts down or crashes ends every connection, each with a last message
    and then the end of its stream; an idle client reads neither until it next sends. A command
    sent then fails with the connection's loss, which to the writer is an outcome it cannot
    know (did the server get the COMMIT?). Found before anything is sent, the connection is
    simply replaced. An idle connection's socket is readable only with such news (the writer
    and the readers do not LISTEN); what is read is kept by libpq for the next result."""
    if conn.closed or conn.broken:
        return False
    pgconn = conn.pgconn
    for _ in range(3):  # the server's last message, then the end of the stream
        if not select.select([pgconn.socket], [], [], 0)[0]:
            break
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            return False
    return pgconn.status == pq.ConnStatus.OK


def check_reader(conn: psycopg.Connection[Any]) -> None:
    """The readers' pool's check (``ConnectionPool(check=...)``) of a connection it hands out:
    a closed one is discarded and another one taken, so a read after a server's restart runs
    on a new connection instead of failing on the old one."""
    if not still_open(conn):
        raise psycopg.OperationalError("the server closed this idle connection")


def connect(url: str, statements: list[str], doing: str, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, **kwargs)
    except psycopg.Error as e:
        raise wrap_error(e, doing) from e
    try:
        configure(conn, statements)
    except psycopg.Error as e:
        conn.close()
        raise wrap_error(e, doing) from e
    return conn


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def wrap_error(e: psycopg.Error, doing: str) -> LedgerError:
    """The ledger's error for a psycopg one, with a hint on what to do. Never contains a
    password: libpq's messages name the host and user, not the password."""
    why = _first_line(e)
    if isinstance(e, pg_errors.ReadOnlySqlTransaction):
        return StorageError(f"{doing}: this ledger was opened read-only ({why})")
    if isinstance(e, pg_errors.LockNotAvailable | pg_errors.QueryCanceled):
        return LedgerBusy(
            f"{doing}: another transaction held a lock for the whole busy timeout ({why}); "
            "retry, or pass a longer busy_timeout"
        )
    if isinstance(e, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return LedgerBusy(f"{doing}: PostgreSQL kept aborting this transaction ({why}); retry")
    if isinstance(e, pg_errors.FeatureNotSupported):
        return SchemaError(f"{doing}: {why}")
    if isinstance(e, pg_errors.UndefinedTable | pg_errors.UndefinedColumn):
        return StorageError(f"{doing}: the ledger's tables are missing or reshaped ({why})")
    if isinstance(e, pg_errors.DiskFull):
        return StorageError(f"{doing}: the server's disk is full ({why}); free space and retry")
    if _unreachable(e):
        return StorageUnavailable(
            f"{doing}: cannot reach the PostgreSQL server ({why}); check the URL's host, port, "
            "user, password and database"
        )
    return StorageError(f"{doing}: PostgreSQL error {type(e).__name__}: {why}")


# The server's SQLSTATEs for a connection it ended or refused: class 08 (connection exception),
# a shutdown (57P01), a crash of another backend (57P02), starting up or recovering (57P03),
# too many connections (53300). Other operational errors (an index row too large, an I/O error,
# a program limit) give the same answer every time: not an outage.
_UNREACHABLE = frozenset({"57P01", "57P02", "57P03", "53300"})


def _unreachable(e: psycopg.Error) -> bool:
    """Whether ``e`` says the server could not be reached (the same call may succeed later):
    an error of the connection itself (libpq's own, without a SQLSTATE) or one of those."""
    if not isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    state = e.sqlstate
    return state is None or state.startswith("08") or state in _UNREACHABLE


class LockedOutOfOrder(pg_errors.SerializationFailure):
    """A lock a transaction could only take out of the lock order was held: raised in place of
    waiting for it (`PostgresTransaction.lock_found_below`), so the transaction runs again and
    takes it in order. Retryable, as a serialisation failure is."""


def is_retryable(e: psycopg.Error) -> bool:
    """Errors after which running the same transaction again may well succeed: PostgreSQL aborted
    it to break a deadlock or a serialisation conflict, or a concurrent command took the same
    idempotency key first (the retry then finds that job)."""
    if isinstance(e, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return True
    diag = getattr(e, "diag", None)
    return isinstance(e, pg_errors.UniqueViolation) and (
        getattr(diag, "constraint_name", None)
        in ("jobs_idempotency", "projection_checkpoints_pkey")
    )


_SCHEMA_PROBE = "SELECT to_regclass('ledger_schema') IS NOT NULL"
_VERSION = "SELECT version FROM ledger_schema"


_FINGERPRINT: str | None = None
# The catalog's definitions printed the same way whatever the session's settings (with
# quote_all_identifiers on, every name comes quoted: another fingerprint, another run).
_AS_PRINTED = "SET LOCAL quote_all_identifiers = off"


def schema_digest() -> str:
    """The SHA-256 of ``schema.sql``'s text: what the last run of it records in the database."""
    global _SCHEMA_DIGEST
    if _SCHEMA_DIGEST is None:
        _SCHEMA_DIGEST = hashlib.sha256(schema_text().encode()).hexdigest()
    return _SCHEMA_DIGEST


def _fingerprint() -> str:
    """The catalog fingerprint's query for ``schema.sql``'s objects (`catalog`)."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        _FINGERPRINT = catalog.fingerprint_query(schema_text())
    return _FINGERPRINT


def create_schema(conn: psycopg.Connection[Any]) -> None:
    """Run ``schema.sql`` as one transaction (its advisory lock makes concurrent starts safe),
    unless the database holds this very text's schema, untouched since: the last run recorded
    the text's digest (`schema_digest`) and the catalog fingerprint of what it made
    (`catalog`), and both are as recorded, the log's counter row there. Why skip it: its DDL
    takes table locks (CREATE OR REPLACE TRIGGER, CREATE INDEX IF NOT EXISTS) that conflict
    with other processes' writes, so a worker starting while others wrote stalled them and
    deadlocked with one now and then (PostgreSQL broke it after a second). A database of an
    older text (or from before the digest), or one whose functions, triggers, indexes, tables
    or columns changed since (an older release ran its file after this one, something was
    dropped or disabled by hand), gets the whole file, as before. The text goes as one
    simple-protocol query (no parameters), as the file expects, the record appended to it."""
    digest = schema_digest()
    fingerprint = _fingerprint()
    probe = (
        f"SELECT version, script_sha256, catalog_md5 = {fingerprint}, "
        "EXISTS (SELECT FROM event_counter) FROM ledger_schema"
    )
    try:
        conn.execute(_AS_PRINTED)
        row = conn.execute(probe.encode()).fetchone()
    except psycopg.Error:  # no ledger here yet, or one from before the digest
        row = None
    conn.rollback()
    if row is not None and tuple(row) == (STORE_SCHEMA_VERSION, digest, True, True):
        return
    record = (
        f"\n{_AS_PRINTED};\n"
        f"UPDATE ledger_schema SET script_sha256 = '{digest}', catalog_md5 = {fingerprint};\n"
    )
    conn.execute((schema_text() + record).encode())
    conn.commit()


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """For a read-only ledger: the database must hold a ledger this code can read."""
    try:
        present = conn.execute(_SCHEMA_PROBE).fetchone()
        if not present or not present[0]:
            raise SchemaError(
                "this PostgreSQL database (or schema) holds no ledger; open it once without "
                "readonly to create one, or check the URL's database and search_path"
            )
        row = conn.execute(_VERSION).fetchone()
    finally:
        conn.rollback()
    if row is None or row[0] > STORE_SCHEMA_VERSION:
        raise SchemaError(
            f"this ledger was written by a newer release (PostgreSQL schema "
            f"{None if row is None else row[0]}, this code knows up to {STORE_SCHEMA_VERSION}); "
            "upgrade the jobledger package"
        )
