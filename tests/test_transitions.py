"""The one table of transitions is the one the code keeps: every event the ledger writes moves a
job only along a transition `TRANSITIONS` allows for the event's command."""

from __future__ import annotations

import msgspec

from ledger import JobStatus, Ledger
from ledger.domain import events as ev
from ledger.domain.state import FIELDS
from ledger.domain.transitions import FINAL, STATUSES, TRANSITIONS
from projections.jobs import COMMAND_OF_EVENT, advance, evolve
from tests.conftest import FakeClock


def _busy(ledger: Ledger, clock: FakeClock) -> None:
    ids = [ledger.create_job(1, {"n": n}, max_attempts=2) for n in range(7)]
    for n, job_id in enumerate(ids):
        ledger.claim(f"w{n}", lease=30)
        ledger.log_event(job_id, "progress", {"n": n})
    ledger.heartbeat(ids[0])
    ledger.charge(ids[0], 1)  # spending on the running job: running -> running
    ledger.complete(ids[0], "done")
    ledger.fail(ids[1], "retry me")
    ledger.fail(ids[2], "give up", retry=False)
    ledger.cancel(ids[3])
    ledger.release(ids[4], worker_id="w4")
    ledger.log_event(ids[4], "progress", {"pending": True})
    ledger.cancel(ids[4])
    clock.advance(3600)
    ledger.rescue_expired()  # ids[5], ids[6]: back to pending (attempts left)
    for _ in range(2):
        job = ledger.claim("late", lease=30)
        assert job is not None
    clock.advance(3600)
    ledger.rescue_expired()  # the last attempts: failed
    ledger.retry(ids[2], by="ops")  # an operator's retry: failed -> pending


def test_every_event_moves_a_job_along_an_allowed_transition(
    ledger: Ledger, clock: FakeClock
) -> None:
    _busy(ledger, clock)
    log = ledger._backend.read("reading the log", lambda snapshot: list(snapshot.iter_events(0)))
    states: dict = {}
    seen_commands = set()
    for stored in log:
        e = stored
        before = states.get(e.job_id)
        after = evolve(before, stored)
        command = COMMAND_OF_EVENT[type(stored.event)]
        seen_commands.add(command)
        transition = TRANSITIONS[command]
        if before is not None:
            assert before.status in transition.sources, (command, before.status)
        assert after.status in transition.targets, (command, after.status)
        states[e.job_id] = after
    assert seen_commands == set(TRANSITIONS)  # the scenario exercises every command
    assert ledger.verify().ok


def test_final_states_are_the_ones_no_command_leaves() -> None:
    assert {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED} == FINAL
    assert set(STATUSES) == set(JobStatus)
    assert all(s.is_final == (s in FINAL) for s in JobStatus)


def test_every_event_names_the_fields_it_changed(ledger: Ledger, clock: FakeClock) -> None:
    """`advance` names the fields each event set (a backend writes only those columns): over
    every event of a busy log, the state after is the state before with those fields set, each
    field it does not name is unchanged, version and updated_at are named first (and are the
    event's), and an activity event names only those two."""
    _busy(ledger, clock)
    log = ledger._backend.read("reading the log", lambda snapshot: list(snapshot.iter_events(0)))
    states: dict = {}
    short = 0
    for stored in log:
        before = states.get(stored.job_id)
        after, moved = advance(before, stored)
        if before is not None:
            assert moved is not None and len(set(moved)) == len(moved)
            assert moved[:2] == ("version", "updated_at")
            assert (after.version, after.updated_at) == (stored.version, stored.recorded_at)
            full = {name: getattr(after, name) for name in moved}
            assert after == msgspec.structs.replace(before, **full)
            for name in FIELDS:
                if name not in moved:
                    assert getattr(after, name) == getattr(before, name), name
            activity = type(stored.event) in ev.ACTIVITY_EVENTS.values()
            assert not activity or moved == ("version", "updated_at")
            short += activity
        states[stored.job_id] = after
    assert short >= 8  # the scenario's started/progress events took the short way
    assert ledger.verify().ok
