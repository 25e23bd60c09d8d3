"""A throwaway PostgreSQL server for the test session: ``initdb`` + ``pg_ctl`` on a temporary dir.

The suite starts its own server so a fresh machine goes green with the README's test command and
no tests silently depend on a server someone left running. The cluster listens on a Unix socket
in its own directory only (``listen_addresses = ''``): no port to collide with, nothing reachable
from outside. PostgreSQL refuses to run as root, and the tests run as root here, so as root the
server runs as the unprivileged user ``postgres`` (the Debian package creates it).

Use from tests:
    ``postgres_url``       (session) the URL of database ``ledger_test`` on the session's server;
                           skips, with the reason, only when no server can be started at all.
    ``postgres_schema``    (function) a URL whose connections use a new, empty schema of the
                           test's own (``search_path``), dropped after: the fast default.
    ``postgres_database``  (function) a URL of a new, empty database of its own, dropped after;
                           for what a schema cannot separate (NOTIFY channels, database-wide
                           settings, an empty database).
    `shared_url()`         the same server from plain code (a conftest, a configuration list):
                           starts it on first use, returns its URL or raises `ClusterUnavailable`.

Starting the server exports ``LEDGER_TEST_POSTGRES_URL`` so child processes (and the contract
suite's configuration) find it. If that variable is already set when the session starts, its
server is used as it is and nothing is started or stopped.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

URL_VARIABLE = "LEDGER_TEST_POSTGRES_URL"
DATABASE = "ledger_test"
SUPERUSER = "postgres"
SERVER_USER = "postgres"  # who runs the server when the tests run as root
PORT = 5432  # only names the socket file; the socket lives in the cluster's own directory
_DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
_SETTINGS = {
    "listen_addresses": "''",
    "max_connections": "100",
    "port": str(PORT),
    "timezone": "'UTC'",
}


class ClusterUnavailable(Exception):
    """No PostgreSQL server can be started here; the message says why and what to install."""


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then the highest Debian
    version under ``/usr/lib/postgresql/*/bin``. None when there is none."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    candidates = [
        Path(bindir) for bindir in glob.glob(_DEBIAN_BINARIES) if _has_tools(Path(bindir))
    ]
    return max(candidates, key=_major_version, default=None)


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))


def _major_version(bindir: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> (15,); unparsable names sort lowest."""
    match = re.search(r"postgresql/([\d.]+)/bin", str(bindir))
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def _server_identity() -> dict[str, Any]:
    """subprocess arguments that drop root to ``postgres``; none when not root."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ClusterUnavailable(
            f"running as root and there is no user {SERVER_USER!r} to run PostgreSQL as "
            f"(it refuses root); create it: useradd --system {SERVER_USER}"
        ) from None
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _run(command: list[str], identity: dict[str, Any], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, **identity)
    if result.returncode != 0:
        raise ClusterUnavailable(f"{what} failed ({result.returncode}): {result.stderr.strip()}")


def url_for(socket_dir: Path | str, database: str, port: int = PORT) -> str:
    """A libpq URL for ``database`` over the Unix socket in ``socket_dir``."""
    return (
        f"postgresql://{SUPERUSER}@/{database}?host={quote(str(socket_dir), safe='/')}&port={port}"
    )


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@dataclass
class Cluster:
    """One running server in ``directory`` (data in ``data/``, the socket in ``directory``)."""

    directory: Path
    bindir: Path
    identity: dict[str, Any]

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = DATABASE) -> str:
        return url_for(self.directory, database)

    def start(self) -> None:
        """initdb, write the settings, start and wait until it accepts connections."""
        if self.identity:
            os.chown(self.directory, self.identity["user"], self.identity["group"])
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER]
        # --no-sync: the cluster is thrown away, so initdb need not flush it (saves seconds);
        # the server itself keeps its default fsync settings.
        initdb += ["-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        _run(initdb, self.identity, "initdb")
        settings = dict(_SETTINGS, unix_socket_directories=f"'{self.directory}'")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        log = str(self.directory / "server.log")
        start = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-t", "60"]
        _run([*start, "start"], self.identity, f"pg_ctl start (see {log})")

    def restart(self) -> None:
        """A clean restart (``pg_ctl restart -m fast``): every connection is ended, no commit
        is lost, the server's start time changes."""
        log = str(self.directory / "server.log")
        restart = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-t", "60"]
        _run([*restart, "-m", "fast", "restart"], self.identity, f"pg_ctl restart (see {log})")

    def pause(self) -> None:
        """Shut the server down (``pg_ctl stop -m fast``), its data kept: `resume` starts it."""
        stop = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m", "fast"]
        _run([*stop, "stop"], self.identity, "pg_ctl stop")

    def resume(self) -> None:
        log = str(self.directory / "server.log")
        start = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-t", "60"]
        _run([*start, "start"], self.identity, f"pg_ctl start (see {log})")

    def crash(self, within: float = 60.0) -> None:
        """A crash: one backend killed (SIGKILL), so the postmaster ends every other and runs
        crash recovery (it empties every UNLOGGED table; its own start time stays). Returns
        once the server accepts connections again."""
        import psycopg  # only where a cluster runs: psycopg is an optional extra

        deadline = time.monotonic() + within
        with psycopg.connect(self.url(), autocommit=True) as witness:
            victim = psycopg.connect(self.url(), autocommit=True)
            os.kill(victim.info.backend_pid, signal.SIGKILL)
            victim.close()
            while True:  # until the postmaster ends the witness too: it is resetting
                try:
                    witness.execute("SELECT 1")
                except psycopg.OperationalError:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError("the server did not end its other connections")
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=5).close()
                return
            except psycopg.OperationalError:  # "the database system is in recovery mode"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # a poll for the server to accept connections again

    def stop(self) -> None:
        """Stop at once (the data is thrown away) and remove the directory."""
        subprocess.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate", "-w"],
            capture_output=True,
            timeout=60,
            **self.identity,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster() -> Cluster:
    """A new, running cluster with database ``ledger_test``; raises `ClusterUnavailable`."""
    bindir = find_binaries()
    if bindir is None:
        raise ClusterUnavailable(
            "no PostgreSQL binaries (initdb, pg_ctl) on PATH or under "
            f"{_DEBIAN_BINARIES}; install them (Debian: apt-get install postgresql)"
        )
    identity = _server_identity()
    # /tmp, not pytest's tmp_path: the server user must reach it, and a Unix socket path must
    # stay under ~100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="ledger-pg-", dir="/tmp" if identity else None))
    cluster = Cluster(directory, bindir, identity)
    try:
        cluster.start()
        admin(cluster.url("postgres"), f'CREATE DATABASE "{DATABASE}" TEMPLATE template0')
    except BaseException:
        cluster.stop()
        raise
    return cluster


def admin(url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    try:
        import psycopg
    except ImportError:
        raise ClusterUnavailable(
            "psycopg is not installed; pip install -e '.[test]' (or '.[postgres]')"
        ) from None
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement)  # built from constants and generated names only


def create_database(url: str, prefix: str = "ledger_test") -> str:
    """A new, empty database on ``url``'s server; returns its URL. ``template0`` is the
    pristine template, so nothing another test left in ``template1`` leaks in."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin(url, f'CREATE DATABASE "{name}" TEMPLATE template0')
    return with_database(url, name)


def drop_database(url: str) -> None:
    """Drop the database ``url`` names, disconnecting whoever is still in it."""
    name = urlsplit(url).path.lstrip("/")
    admin(with_database(url, "postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_schema(url: str, prefix: str = "test") -> str:
    """A new, empty schema in ``url``'s database; returns a URL whose connections use it
    (``search_path`` in the URL's ``options``). Several times faster than a new database, and
    just as separate for tables, functions and triggers (not for NOTIFY channels, which are per
    database)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin(url, f'CREATE SCHEMA "{name}"')
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("options", f"-csearch_path={name}")]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def drop_schema(url: str) -> None:
    """Drop the schema a `create_schema` URL names, with everything in it."""
    options = dict(parse_qsl(urlsplit(url).query))["options"]
    name = options.removeprefix("-csearch_path=")
    admin(url, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


# -- one server per test session -----------------------------------------------------------------

_shared: Cluster | None = None
_failure: str | None = None
_owner_pid: int | None = None


def shared_url() -> str:
    """The session's server URL: ``LEDGER_TEST_POSTGRES_URL`` if it was set, else a cluster
    started on first use (and exported in that variable). Raises `ClusterUnavailable` with the
    reason, every call, if it cannot start."""
    global _shared, _failure, _owner_pid
    if _shared is not None:
        return _shared.url()
    if _failure is not None:
        raise ClusterUnavailable(_failure)
    existing = os.environ.get(URL_VARIABLE)
    if existing:
        return existing
    try:
        _shared = start_cluster()
    except ClusterUnavailable as e:
        _failure = str(e)
        raise
    _owner_pid = os.getpid()
    atexit.register(stop_shared)  # a backstop; the session-finish hook stops it first
    os.environ[URL_VARIABLE] = _shared.url()
    return _shared.url()


def stop_shared() -> None:
    """Stop the session's cluster if this process started it (never from a forked child)."""
    global _shared
    if _shared is not None and os.getpid() == _owner_pid:
        _shared.stop()
        if os.environ.get(URL_VARIABLE) == _shared.url():
            del os.environ[URL_VARIABLE]
        _shared = None


# -- pytest plugin (registered from tests/conftest.py) -------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_shared()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The session server's ``ledger_test`` database; skips only if no server can start."""
    try:
        return shared_url()
    except ClusterUnavailable as e:
        pytest.skip(f"no PostgreSQL server: {e}")


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A URL whose connections see only a fresh, empty schema of this test, dropped afterwards."""
    url = create_schema(postgres_url)
    yield url
    drop_schema(url)


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A URL of a fresh, empty database for this test alone, dropped afterwards."""
    url = create_database(postgres_url)
    yield url
    drop_database(url)
