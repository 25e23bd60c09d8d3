"""Backend configurations for the contract suite, and the fixtures that open ledgers on them.

Every test in ``tests/contract/`` runs once per configuration in `CONFIGURATIONS` (the test id
names it: ``test_x[sqlite-file]``, ``test_x[sqlite-memory]``, ``test_x[postgres]``). The tests use
only the public API (``from ledger import ...``), so they hold whatever the ledger's internals
become; a behaviour that exists on one backend only (triggers refusing raw SQL, fault injection,
power loss, a fixture file from an old release, several processes) is tested beside that backend
in ``tests/``, not here.

Fixtures:
    ``backend``      the `BackendConfig` of this run (parametrised over `CONFIGURATIONS`).
    ``open_ledger``  a `LedgerFactory`: ``open_ledger(**kwargs)`` opens a fresh, empty ledger on
                     that configuration with the test's `FakeClock` (``clock=`` overrides it, any
                     other `Ledger` keyword passes through). ``open_ledger.reopen(ledger)`` and
                     ``open_ledger.second_handle(ledger)`` need ``shared_between_handles``.
    ``ledger``       ``open_ledger()``: one fresh ledger, for the tests that need only one.
    ``clock``        the `FakeClock` of ``tests/conftest.py``, shared by every ledger of a test.

At teardown every ledger still open is verified (``verify().ok``: the projection equals the fold
of the log after every scenario) and closed.

Capabilities: a test that needs something not every configuration has says so with
``@pytest.mark.capability("shared_between_handles")`` and is skipped, with the reason, where the
configuration lacks it. ``shared_between_handles``: a second `Ledger` opened at the same location
is the same ledger (true for a file or a server; false for ``:memory:``, where every
``Ledger(":memory:")`` is a database of its own).

Adding a configuration (PostgreSQL is already listed, and runs once its backend exists): append
a `BackendConfig` to `CONFIGURATIONS` with
    ``name``                    the test id;
    ``new_location(tmp_path, n)`` the location of a test's n-th fresh, empty ledger: what is
                                passed to ``open`` (a path, ``":memory:"``, a URL);
    ``open(location, **kwargs)``  opens it (default: ``Ledger(location, **kwargs)``);
    ``discard(location)``       removes what ``new_location`` made, after the test (default: no-op);
    ``unavailable()``           None, or why this configuration cannot run here (the tests are
                                then skipped with that reason, never silently dropped);
    ``shared_between_handles``  see Capabilities.
The PostgreSQL entry runs once the module ``ledger.backends.postgres`` exists (a package with an
``__init__.py``, not only its ``schema.sql``), on the server
``LEDGER_TEST_POSTGRES_URL`` names, or else on the session's throwaway server that
``tests/postgres_cluster.py`` starts (``initdb`` + ``pg_ctl``); with neither it is skipped with
the reason. Each ledger gets a schema of its own (``create_schema``), dropped after the
test, so tests never see each other's rows or advisory locks. If the PostgreSQL
backend is opened some other way than ``Ledger(url)``, change ``open`` of that entry, nothing
else.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ledger import Ledger
from tests import postgres_cluster
from tests.conftest import FakeClock

POSTGRES_URL_VARIABLE = postgres_cluster.URL_VARIABLE
POSTGRES_BACKEND = "ledger.backends.postgres"
CAPABILITIES = {
    "shared_between_handles": "a second Ledger at the same location opens the same ledger",
}


def _no_cleanup(location: str) -> None:
    return None


def _always_available() -> str | None:
    return None


@dataclass(frozen=True)
class BackendConfig:
    """One way of storing a ledger that the whole contract must hold on."""

    name: str
    new_location: Callable[[Path, int], str]
    shared_between_handles: bool
    open: Callable[..., Ledger] = Ledger
    discard: Callable[[str], None] = _no_cleanup
    unavailable: Callable[[], str | None] = field(default=_always_available)

    def has(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {sorted(CAPABILITIES)}")
        return bool(getattr(self, capability))


# -- SQLite -------------------------------------------------------------------------------------


def _sqlite_file(tmp_path: Path, n: int) -> str:
    return str(tmp_path / f"contract-{n}.db")


def _sqlite_memory(tmp_path: Path, n: int) -> str:
    return ":memory:"


# -- PostgreSQL ---------------------------------------------------------------------------------


@functools.cache
def _postgres_unavailable() -> str | None:
    """Why the PostgreSQL configuration cannot run here, or None; asked once per session. The
    backend is looked for first, so no server is started for a backend that does not exist."""
    try:
        backend = importlib.util.find_spec(POSTGRES_BACKEND)
    except ModuleNotFoundError:
        backend = None
    if backend is None or backend.origin is None:  # None: a directory without code (only SQL)
        return f"the ledger has no PostgreSQL backend yet (no module {POSTGRES_BACKEND})"
    try:
        postgres_cluster.shared_url()
    except postgres_cluster.ClusterUnavailable as e:
        return f"no PostgreSQL server ({POSTGRES_URL_VARIABLE} unset and none could start): {e}"
    return None


def _postgres_location(tmp_path: Path, n: int) -> str:
    """The URL of a new, empty schema on the session's server (``search_path`` in the URL): a
    fresh ledger, several times faster to make than a database and as separate for the contract
    (tables, triggers, advisory locks are per schema; only NOTIFY channels are shared, and a
    spurious wake-up is harmless)."""
    return postgres_cluster.create_schema(postgres_cluster.shared_url(), prefix="contract")


CONFIGURATIONS: list[BackendConfig] = [
    BackendConfig("sqlite-file", _sqlite_file, shared_between_handles=True),
    BackendConfig("sqlite-memory", _sqlite_memory, shared_between_handles=False),
    BackendConfig(
        "postgres",
        _postgres_location,
        shared_between_handles=True,
        discard=postgres_cluster.drop_schema,
        unavailable=_postgres_unavailable,
    ),
]


# -- fixtures -----------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "capability(name): the contract test needs a backend capability "
        f"({', '.join(sorted(CAPABILITIES))}); skipped on configurations without it",
    )


@pytest.fixture(params=CONFIGURATIONS, ids=lambda config: config.name)
def backend(request: pytest.FixtureRequest) -> BackendConfig:
    config: BackendConfig = request.param
    reason = config.unavailable()
    if reason is not None:
        pytest.skip(f"{config.name}: {reason}")
    for mark in request.node.iter_markers("capability"):
        for capability in mark.args:
            if not config.has(capability):
                why = CAPABILITIES[capability]
                pytest.skip(f"{config.name} lacks {capability} ({why})")
    return config


class LedgerFactory:
    """Opens fresh ledgers on one configuration and cleans up after the test."""

    def __init__(self, config: BackendConfig, tmp_path: Path, clock: FakeClock) -> None:
        self.config = config
        self.clock = clock
        self._tmp_path = tmp_path
        self._opened: list[tuple[Ledger, str]] = []
        self._locations: list[str] = []

    def __call__(self, **kwargs: Any) -> Ledger:
        """A new, empty ledger."""
        location = self.config.new_location(self._tmp_path, len(self._locations))
        self._locations.append(location)
        return self._open(location, kwargs)

    def reopen(self, ledger: Ledger, **kwargs: Any) -> Ledger:
        """Close ``ledger`` and open its location again: what a restarted process would see."""
        location = self._location_of(ledger)
        self.close(ledger)
        return self._open(location, kwargs)

    def second_handle(self, ledger: Ledger, **kwargs: Any) -> Ledger:
        """Another open handle on the same ledger, as a second process would hold."""
        return self._open(self._location_of(ledger), kwargs)

    def close(self, ledger: Ledger) -> None:
        """Close ``ledger`` (again, harmlessly, if the test closed it) and leave it out of the
        teardown's verify."""
        self._opened = [(lg, loc) for lg, loc in self._opened if lg is not ledger]
        ledger.close()

    def finish(self) -> None:
        """Verify and close every ledger still open, then discard every location."""
        try:
            for opened, _ in self._opened:
                report = opened.verify()
                assert report.ok, f"projection differs from the log: {report.differences}"
        finally:
            for opened, _ in self._opened:
                opened.close()
            for location in self._locations:
                self.config.discard(location)

    def _open(self, location: str, kwargs: dict[str, Any]) -> Ledger:
        kwargs.setdefault("clock", self.clock)
        opened = self.config.open(location, **kwargs)
        self._opened.append((opened, location))
        return opened

    def _location_of(self, ledger: Ledger) -> str:
        if not self.config.shared_between_handles:
            raise AssertionError(
                f"{self.config.name} has no shared handles; mark the test "
                '@pytest.mark.capability("shared_between_handles")'
            )
        return next(loc for lg, loc in self._opened if lg is ledger)


@pytest.fixture
def open_ledger(
    backend: BackendConfig, tmp_path: Path, clock: FakeClock
) -> Iterator[LedgerFactory]:
    factory = LedgerFactory(backend, tmp_path, clock)
    yield factory
    factory.finish()


@pytest.fixture
def ledger(open_ledger: LedgerFactory) -> Ledger:
    """Overrides ``tests/conftest.py``'s file-only ``ledger``: one ledger on this configuration."""
    return open_ledger()
