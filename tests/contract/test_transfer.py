"""Export and import: the log as JSON lines, loaded into a fresh ledger of the same configuration,
gives the same ledger."""

from __future__ import annotations

import json

import pytest

from ledger import EventType, JobStatus, Ledger, LedgerError
from tests.conftest import FakeClock
from tests.contract.conftest import LedgerFactory
from tests.contract.support import CONFIG, all_jobs, busy_ledger, state


def test_export_then_import_gives_the_same_ledger(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Promise: `import_events(export_events())` into a new, empty ledger gives the same events
    at the same positions and the same jobs, and verifies."""
    source = open_ledger()
    busy_ledger(source, clock)
    copy = open_ledger()
    report = copy.import_events(source.export_events())
    assert state(copy) == state(source)
    assert (report.events, report.jobs) == (source.last_position(), 9)
    assert copy.verify().ok


def test_an_imported_ledger_carries_on_where_the_source_stopped(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Promise: after an import, commands continue each job's versions and the global positions
    from where the source stopped, and a pending job is claimable."""
    source = open_ledger()
    ids = busy_ledger(source, clock)
    copy = open_ledger()
    copy.import_events(source.export_events())
    version = copy.log_event(ids[7], EventType.PROGRESS, {"after": "import"})
    assert version == source.get_job(ids[7]).version + 1  # type: ignore[union-attr]
    assert copy.last_position() == source.last_position() + 1
    clock.advance(60)
    claimed = copy.claim("new-worker")
    assert claimed is not None and claimed.status is JobStatus.RUNNING


def test_export_after_a_position_gives_only_later_events(ledger: Ledger, clock: FakeClock) -> None:
    """Promise: `export_events(after)` gives one JSON line per event after ``after``, in position
    order."""
    busy_ledger(ledger, clock)
    lines = list(ledger.export_events())
    assert [json.loads(line)["position"] for line in lines] == [
        e.position for e in ledger.read_all()
    ]
    later = [json.loads(line)["position"] for line in ledger.export_events(after=10)]
    assert later == [e.position for e in ledger.read_all(after=10)] and later[0] == 11
    assert list(ledger.export_events(after=ledger.last_position())) == []


def test_import_into_a_ledger_with_events_is_refused(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Promise: import loads into a new or empty ledger only; into one that has events it is
    refused with a `LedgerError` and writes nothing."""
    source = open_ledger()
    busy_ledger(source, clock)
    target = open_ledger()
    target.create_job(1, CONFIG)
    before = state(target)
    with pytest.raises(LedgerError):
        target.import_events(source.export_events())
    assert state(target) == before


def test_a_bad_line_imports_nothing(open_ledger: LedgerFactory, clock: FakeClock) -> None:
    """Promise: import is all or nothing: a line that is not an exported event, anywhere in the
    input, is refused with a `LedgerError`, and the ledger stays empty."""
    source = open_ledger()
    busy_ledger(source, clock)
    lines = list(source.export_events())
    target = open_ledger()
    for bad in (b"not json", b'{"position": "one"}'):
        with pytest.raises(LedgerError):
            target.import_events([*lines[:-1], bad])
        assert target.last_position() == 0 and all_jobs(target) == []
    target.import_events(lines)  # the good lines alone still import
    assert state(target) == state(source)


def test_an_export_that_starts_later_imports_at_its_own_positions(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Promise: an export of the log after a position (`export_events(after)`) imports into an
    empty ledger, every event at its own position with its own hash; the copy's head is the
    source's, it verifies (its chain starts at its first event), and it carries on from there."""
    source = open_ledger()
    source.create_job(1, CONFIG)
    second = source.create_job(2, {"second": True})
    source.log_event(second, EventType.PROGRESS, {"n": 1})
    head = source.head()
    later = list(source.export_events(after=1))  # the second job's whole stream
    copy = open_ledger()
    report = copy.import_events(later)
    assert (report.events, report.jobs) == (2, 1)
    assert copy.head() == head
    assert [(e.position, e.job_id, e.version) for e in copy.read_all()] == [
        (e.position, e.job_id, e.version) for e in source.read_all(after=1)
    ]
    assert copy.get_job(second) == source.get_job(second)
    assert copy.verify().ok
    copy.log_event(second, EventType.PROGRESS, {"n": 2})
    assert copy.last_position() == head[0] + 1
    assert copy.verify(expect_head=head).ok


def test_an_export_that_starts_inside_a_job_is_refused(
    open_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """Promise: an export whose first event of a job is not that job's creation (the export began
    after it) is refused with a `LedgerError` naming the line, and writes nothing."""
    source = open_ledger()
    job = source.create_job(1, CONFIG)
    source.log_event(job, EventType.PROGRESS, {"n": 1})
    copy = open_ledger()
    with pytest.raises(LedgerError, match="line 1"):
        copy.import_events(source.export_events(after=1))
    assert copy.last_position() == 0 and all_jobs(copy) == []
