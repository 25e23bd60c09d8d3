"""Replay's fast ways decide as the careful ways do: the scan's cheap time check refuses what the
strict one refuses, the fold's inline steps give the states `evolve` gives, and the rows a bulk
rebuild writes are the rows `row_values` makes."""

from __future__ import annotations

from datetime import timedelta

import apsw
import msgspec
import pytest

from ledger import JobStatus, Ledger
from ledger.backends.sqlite import events_table, jobs_table
from ledger.domain.logrules import LogCheck
from ledger.errors import UnfoldableEvent
from projections.jobs import JobsFold, evolve
from tests.conftest import FakeClock

_GOOD = "2026-01-31T12:34:56.123456+00:00"
_DIGIT_PLACES = [i for i, c in enumerate(_GOOD[:26]) if c.isdigit()]
# What could stand in a digit's place: a letter, a space, the characters that start an offset or
# separate fields, a digit of another script (one character in the GLOB, several UTF-8 bytes).
_NOT_DIGITS = ["a", " ", "+", "-", "Z", ":", ".", "T", "\u0663", "\uff10"]


def _log_of(ledger: Ledger) -> list:
    return ledger._backend.read("reading the log", lambda s: list(s.iter_events(0)))


def _no_subtree(state):  # type: ignore[no-untyped-def]
    return msgspec.structs.replace(state, subtree_cost_cents=0.0)


def _busy(ledger: Ledger, clock: FakeClock) -> None:
    """Every kind of event, trees with costs rolled up, jobs created and acted on later."""
    root = ledger.create_job(1, {"n": "root"}, max_attempts=2)
    child = ledger.create_job(1, {"n": "child"}, parent_id=root)
    grandchild = ledger.create_job(1, {"n": "grandchild"}, parent_id=child)
    for job_id in (root, child, grandchild):
        claimed = ledger.claim("w", lease=30)
        assert claimed is not None and claimed.id == job_id
        ledger.log_event(job_id, "progress", {"step": 1})
        ledger.log_event(job_id, "tool_call", {"tool": "search"})
        ledger.heartbeat(job_id)
    ledger.charge(grandchild, 2.5)
    ledger.complete(grandchild, "done", cost_cents=1.25)
    ledger.fail(child, "again", retry=False)
    ledger.log_event(root, "progress", {"step": 2})
    clock.advance(3600)
    ledger.rescue_expired()  # root: back to pending, one attempt left
    ledger.log_event(root, "progress", {"pending": True})
    ledger.cancel(root)
    ledger.retry(child, by="ops")


def test_the_scan_refuses_a_non_digit_in_every_digit_place_of_a_time(ledger: Ledger) -> None:
    """The scan checks the time's width and separators (a GLOB of ``?``) and leaves the digits
    to ``fromisoformat``: whatever stands in a digit's place, the event is refused as the strict
    check refuses it, never folded with a time it did not store."""
    job_id = ledger.create_job(1, {"a": 1})
    bad = [_GOOD[:i] + c + _GOOD[i + 1 :] for i in _DIGIT_PLACES for c in _NOT_DIGITS]
    conn = apsw.Connection(ledger.path)
    conn.execute("BEGIN IMMEDIATE")
    first = events_table.last_position(conn) + 1
    for version, at in enumerate([_GOOD, *bad], start=2):
        conn.execute(
            "INSERT INTO events (job_id, version, type, data, recorded_at) "
            'VALUES (?, ?, \'progress\', \'{"type":"progress","payload":1}\', ?)',
            (job_id, version, at),
        )
    conn.execute("COMMIT")
    good = next(events_table.iter_after(conn, first - 1))
    assert good.recorded_at.isoformat() == _GOOD
    for position, at in enumerate(bad, start=first + 1):
        with pytest.raises(UnfoldableEvent, match="not a time in the ledger's format") as raised:
            next(events_table.iter_after(conn, position - 1))
        assert raised.value.position == position, at
    conn.close()


def test_the_folds_inline_steps_give_the_states_evolve_gives(
    ledger: Ledger, clock: FakeClock
) -> None:
    """`JobsFold.apply` takes `advance`'s short way for activity events inline and rolls a
    job's own subtree cost into its own change: over a busy log its states are `evolve`'s, but
    for the costs of descendants rolled up into ancestors, which only the fold keeps."""
    _busy(ledger, clock)
    log = _log_of(ledger)
    fold = JobsFold()
    check = LogCheck()
    states: dict = {}
    for stored in log:
        assert check.problem(stored) is None
        fold.apply(stored)
        states[stored.job_id] = evolve(states.get(stored.job_id), stored)
    folded = {s.id: s for s in fold.states()}
    assert folded.keys() == states.keys()
    own = {
        job_id: s.subtree_cost_cents
        for job_id, s in folded.items()
        if not any(other.parent_id == job_id for other in folded.values())
    }
    for job_id, state in states.items():
        if job_id in own:  # a leaf: its subtree is its own cost, as `evolve` keeps it
            assert folded[job_id] == state
        else:
            assert _no_subtree(folded[job_id]) == _no_subtree(state)
    grandchild = next(s for s in folded.values() if s.config_json == '{"n":"grandchild"}')
    root = next(s for s in folded.values() if s.config_json == '{"n":"root"}')
    assert grandchild.subtree_cost_cents == root.subtree_cost_cents == 3.75
    assert ledger.replay().jobs == 3
    assert ledger.verify().ok


def test_a_bulk_insert_writes_the_rows_row_values_makes(ledger: Ledger, clock: FakeClock) -> None:
    """`jobs_table.bulk_rows` (replay's batches) builds each row its own way: over every state
    of a busy log (pending, running, finished, retried; times shared between columns or not)
    it gives `row_values`' rows, value for value and type for type."""
    _busy(ledger, clock)
    assert ledger.claim("w", lease=30) is not None  # the retried child: running again
    failed = ledger.create_job(1, {"n": "fails"})
    assert ledger.claim("w", lease=30) is not None
    ledger.fail(failed, "no", retry=False)
    ledger.create_job(1, {"n": "later"}, run_at=clock() + timedelta(hours=1))
    fold = JobsFold()
    for stored in _log_of(ledger):
        fold.apply(stored)
    states = list(fold.states())
    assert {s.status for s in states} == set(JobStatus)
    bulk = jobs_table.bulk_rows(states)
    for state, row in zip(states, bulk, strict=True):
        expected = jobs_table.row_values(state)
        assert tuple(row) == expected
        assert [type(v) for v in row] == [type(v) for v in expected]
