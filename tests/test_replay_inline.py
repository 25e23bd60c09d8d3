"""Replay's inline way for the commonest event (`rebuild.fold_events`: the next activity event of
a job created in the batch, checked and folded without `LogCheck.problem` and `JobsFold.apply`)
and the fold's deferred version and time decide as the careful ways do: the same states, and
the same refusals at the same positions with the same words."""

from __future__ import annotations

from datetime import datetime

import msgspec
import pytest

from ledger import Ledger
from ledger.domain import events as ev
from ledger.domain.logrules import LogCheck
from ledger.errors import UnfoldableEvent
from ledger.rebuild import fold_events
from projections.jobs import JobsFold, evolve
from tests.conftest import FakeClock
from tests.test_replay_fast_way import _busy, _log_of, _no_subtree


def _careful(log: list) -> tuple[dict, str | None, int | None]:
    """Every event checked by `LogCheck.problem` and folded by `evolve`, one by one."""
    check = LogCheck()
    states: dict = {}
    for stored in log:
        why = check.problem(stored)
        if why is not None:
            return states, why, stored.position
        states[stored.job_id] = evolve(states.get(stored.job_id), stored)
    return states, None, None


def _inline(log: list, *, flush: bool) -> dict:
    """`fold_events`' states: kept in the fold (verify), or flushed as new rows (replay)."""
    fold = JobsFold()
    flushed: dict = {}

    def save(f: JobsFold) -> None:
        f.flush_to(lambda new, changed: flushed.update({s.id: s for s in new}))

    fold_events(iter(log), fold, LogCheck(), save=save if flush else None)
    return {**flushed, **{s.id: s for s in fold.states()}}


def test_the_inline_way_folds_the_states_the_careful_way_folds(
    ledger: Ledger, clock: FakeClock
) -> None:
    _busy(ledger, clock)
    for _ in range(3):  # activity in runs on jobs created in the batch, then lifecycle events
        job_id = ledger.create_job(2, {"n": "more"})
        claimed = ledger.claim("w", lease=30)
        assert claimed is not None
        for step in range(4):
            ledger.log_event(claimed.id, "progress", {"step": step}, attempt=claimed.attempts)
        ledger.heartbeat(claimed.id)
        ledger.log_event(job_id, "tool_call", {"tool": "t"})
        ledger.complete(claimed.id, "done")
    log = _log_of(ledger)
    want, why, _ = _careful(log)
    assert why is None
    for flush in (False, True):
        got = _inline(log, flush=flush)
        assert got.keys() == want.keys()
        for job_id, state in want.items():  # the fold alone rolls descendants' costs up
            assert _no_subtree(got[job_id]) == _no_subtree(state)
            assert got[job_id].updated_at is state.updated_at
    assert ledger.replay().jobs == len(want)
    assert ledger.verify().ok


@pytest.mark.parametrize(
    "damage",
    ["version_gap", "version_repeat", "version_text", "attempt_too_big", "attempt_naive_time"],
)
def test_the_inline_way_refuses_what_the_careful_way_refuses(
    ledger: Ledger, clock: FakeClock, damage: str
) -> None:
    """An activity event of a job created in the batch that breaks the log's rules is refused
    at its position with `LogCheck.problem`'s words, whichever way it went."""
    job_id = ledger.create_job(1, {"a": 1})
    for step in range(3):
        ledger.log_event(job_id, "progress", {"step": step})
    log = _log_of(ledger)
    i = 2  # the second progress event: the inline way's (its job created, its first one seen)
    stored = log[i]
    assert type(stored.event) is ev.Progress
    if damage == "version_gap":
        stored = msgspec.structs.replace(stored, version=stored.version + 1)
    elif damage == "version_repeat":
        stored = msgspec.structs.replace(stored, version=stored.version - 1)
    elif damage == "version_text":
        stored = msgspec.structs.replace(stored, version=str(stored.version))
    elif damage == "attempt_too_big":
        event = msgspec.structs.replace(stored.event, attempt=2**63)
        stored = msgspec.structs.replace(stored, event=event)
    else:
        naive = datetime(2026, 1, 1)
        event = msgspec.structs.replace(stored.event, attempt=naive)
        stored = msgspec.structs.replace(stored, event=event)
    log[i] = stored
    _, want_why, want_at = _careful(log)
    assert want_why is not None and want_at == stored.position
    fold = JobsFold()
    with pytest.raises(UnfoldableEvent) as raised:
        fold_events(iter(log), fold, LogCheck())
    assert raised.value.position == want_at
    assert want_why in str(raised.value)
