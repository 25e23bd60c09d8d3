"""Subagent trees (issue 18, section 1) on every backend, through the public API only: parent
links, children and descendants, cancels that cascade down the tree (law 13), cost that rolls
up, and the summary's tree. The teardown verifies every ledger (projection = fold)."""

from __future__ import annotations

import threading

import pytest

from ledger import (
    EventType,
    InvalidArgument,
    InvalidTransition,
    JobContext,
    JobNotFound,
    JobStatus,
    Ledger,
    Result,
    Worker,
)
from tests.conftest import FakeClock

from .support import CONFIG, state


def tree(ledger: Ledger) -> dict[str, str]:
    """root -> a, b; a -> a1, a2; a1 -> a1x. Returns the ids by name."""
    ids = {"root": ledger.create_job(7, {**CONFIG, "n": "root"})}
    for name, parent in (("a", "root"), ("b", "root"), ("a1", "a"), ("a2", "a"), ("a1x", "a1")):
        ids[name] = ledger.create_job(7, {**CONFIG, "n": name}, parent_id=ids[parent])
    return ids


def test_a_child_reads_back_its_parent(ledger: Ledger) -> None:
    root = ledger.create_job(1, CONFIG)
    child = ledger.create_job(1, CONFIG, parent_id=root)
    assert ledger.get_job(root).parent_id is None  # type: ignore[union-attr]
    assert ledger.get_job(child).parent_id == root  # type: ignore[union-attr]
    created = ledger.job_events(child)[0]
    assert created.type is EventType.CREATED and created.payload["parent_id"] == root


def test_a_parent_must_exist(ledger: Ledger) -> None:
    before = state(ledger)
    with pytest.raises(JobNotFound):
        ledger.create_job(1, CONFIG, parent_id="no-such-job")
    assert state(ledger) == before


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
def test_a_finished_parent_spawns_nothing(ledger: Ledger, end: str) -> None:
    parent = ledger.create_job(1, CONFIG)
    if end == "cancel":
        ledger.cancel(parent)
    else:
        ledger.claim("w")
        if end == "complete":
            ledger.complete(parent, "done")
        else:
            ledger.fail(parent, "broken", retry=False)
    before = state(ledger)
    with pytest.raises(InvalidTransition, match="children"):
        ledger.create_job(1, CONFIG, parent_id=parent)
    assert state(ledger) == before


def test_a_child_belongs_to_its_parents_chat(ledger: Ledger) -> None:
    parent = ledger.create_job(1, CONFIG)
    before = state(ledger)
    with pytest.raises(InvalidArgument, match="chat_id") as raised:
        ledger.create_job(2, CONFIG, parent_id=parent)
    assert "chat 1" in str(raised.value)
    assert state(ledger) == before


def test_a_running_parent_spawns_children_in_a_batch(ledger: Ledger) -> None:
    parent = ledger.create_job(1, CONFIG)
    ledger.claim("w")
    ids = ledger.create_jobs([{"chat_id": 1, "config": CONFIG, "parent_id": parent}] * 3)
    assert [j.id for j in ledger.children(parent)] == ids


def test_children_are_the_direct_ones_oldest_first(ledger: Ledger, clock: FakeClock) -> None:
    ids = tree(ledger)
    assert [j.id for j in ledger.children(ids["root"])] == [ids["a"], ids["b"]]
    assert [j.id for j in ledger.children(ids["a"])] == [ids["a1"], ids["a2"]]
    assert ledger.children(ids["b"]) == []


def test_descendants_list_parents_before_their_children(ledger: Ledger) -> None:
    ids = tree(ledger)
    below = [j.id for j in ledger.descendants(ids["root"])]
    assert sorted(below) == sorted(ids[n] for n in ("a", "b", "a1", "a2", "a1x"))
    for job in ledger.descendants(ids["root"]):
        if job.parent_id != ids["root"]:
            assert below.index(job.parent_id) < below.index(job.id)  # type: ignore[arg-type]
    assert [j.id for j in ledger.descendants(ids["a1"])] == [ids["a1x"]]


def test_children_and_descendants_of_an_unknown_job(ledger: Ledger) -> None:
    with pytest.raises(JobNotFound):
        ledger.children("nope")
    with pytest.raises(JobNotFound):
        ledger.descendants("nope")


def test_cancel_cascades_to_every_pending_and_running_descendant(ledger: Ledger) -> None:
    ids = tree(ledger)
    assert ledger.claim("w1").id == ids["root"]  # type: ignore[union-attr]
    assert ledger.claim("w2").id == ids["a"]  # type: ignore[union-attr]
    assert ledger.claim("w3").id == ids["b"]  # type: ignore[union-attr]
    ledger.complete(ids["b"], "done early")
    before = ledger.last_position()
    assert ledger.cancel(ids["root"], reason="user stopped")
    for name in ("root", "a", "a1", "a2", "a1x"):
        assert ledger.get_job(ids[name]).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert ledger.get_job(ids["b"]).status is JobStatus.COMPLETED  # type: ignore[union-attr]
    cancelled = ledger.read_all(after=before)
    assert {e.job_id for e in cancelled} == {ids[n] for n in ("root", "a", "a1", "a2", "a1x")}
    assert all(e.type is EventType.CANCELLED for e in cancelled)
    for event in cancelled:
        if event.job_id != ids["root"]:
            assert event.payload["cause"] == ids["root"]
            assert ids["root"] in event.payload["reason"]
        else:
            assert event.payload["reason"] == "user stopped" and event.payload["cause"] is None


def test_cancel_of_a_middle_job_leaves_the_rest_of_the_tree(ledger: Ledger) -> None:
    ids = tree(ledger)
    assert ledger.cancel(ids["a1"])
    statuses = {n: ledger.get_job(i).status for n, i in ids.items()}  # type: ignore[union-attr]
    assert statuses["a1"] is statuses["a1x"] is JobStatus.CANCELLED
    assert {statuses[n] for n in ("root", "a", "a2", "b")} == {JobStatus.PENDING}
    assert ledger.job_events(ids["a1x"])[-1].payload["cause"] == ids["a1"]


def test_cancel_without_cascade_ends_only_that_job(ledger: Ledger) -> None:
    ids = tree(ledger)
    assert ledger.cancel(ids["root"], cascade=False)
    assert ledger.get_job(ids["root"]).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    for name in ("a", "b", "a1", "a2", "a1x"):
        assert ledger.get_job(ids[name]).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_a_cascade_is_one_transaction(ledger: Ledger) -> None:
    """Law 2 and 13: the cascade's events have consecutive positions, after the root's
    children were cancelled in the same command (nothing else interleaves)."""
    ids = tree(ledger)
    before = ledger.last_position()
    ledger.cancel(ids["root"])
    added = ledger.read_all(after=before)
    assert [e.position for e in added] == list(range(before + 1, before + 7))


def test_cancel_of_a_finished_job_writes_nothing(ledger: Ledger) -> None:
    ids = tree(ledger)
    ledger.cancel(ids["root"], cascade=False)
    before = state(ledger)
    assert ledger.cancel(ids["root"]) is False
    assert state(ledger) == before


def test_cost_rolls_up_the_tree(ledger: Ledger) -> None:
    ids = tree(ledger)
    for _ in ids:
        ledger.claim("w")
    ledger.charge(ids["a1x"], 2.0)
    ledger.complete(ids["a1x"], "ok", cost_cents=1.0)
    ledger.complete(ids["a2"], "ok", cost_cents=4.0)
    ledger.charge(ids["b"], 0.5)
    ledger.complete(ids["root"], "ok", cost_cents=10.0)
    cost = {n: ledger.get_job(i) for n, i in ids.items()}
    assert cost["a1x"].cost_cents == 3.0 and cost["a1x"].subtree_cost_cents == 3.0  # type: ignore[union-attr]
    assert cost["a1"].cost_cents is None and cost["a1"].subtree_cost_cents == 3.0  # type: ignore[union-attr]
    assert cost["a"].subtree_cost_cents == 7.0  # type: ignore[union-attr]
    assert cost["b"].subtree_cost_cents == 0.5  # type: ignore[union-attr]
    assert cost["root"].subtree_cost_cents == 17.5  # type: ignore[union-attr]


def test_replay_rebuilds_parents_and_subtree_costs(ledger: Ledger) -> None:
    ids = tree(ledger)
    for _ in ids:
        ledger.claim("w")
    ledger.complete(ids["a1x"], "ok", cost_cents=2.5)
    ledger.charge(ids["a"], 1.0)
    before = {n: ledger.get_job(i) for n, i in ids.items()}
    ledger.replay()
    assert {n: ledger.get_job(i) for n, i in ids.items()} == before
    assert before["root"].subtree_cost_cents == 3.5  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_the_summary_indents_running_subagents(ledger: Ledger, clock: FakeClock) -> None:
    root = ledger.create_job(3, {"role": "lead", "task": "plan"})
    ledger.claim("w")
    child = ledger.create_job(3, {"role": "coder", "task": "code"}, parent_id=root)
    other = ledger.create_job(3, {"role": "solo", "task": "alone"})
    ledger.claim("w")
    grandchild = ledger.create_job(3, {"role": "tester", "task": "test"}, parent_id=child)
    ledger.claim("w")
    ledger.claim("w")
    clock.advance(5)
    lines = ledger.active_jobs_summary(3).splitlines()
    assert lines == [
        "## Running Subagents",
        f'- {root[:8]} (lead): running 5s - "plan"',
        f'  - {child[:8]} (coder): running 5s - "code"',
        f'    - {grandchild[:8]} (tester): running 5s - "test"',
        f'- {other[:8]} (solo): running 5s - "alone"',
    ]


def test_a_running_descendants_worker_sees_cancelled(ledger: Ledger) -> None:
    """The worker running a child sees ``ctx.cancelled`` once its parent's cancel cascades to
    it, and records no result for it."""
    parent = ledger.create_job(1, CONFIG, queue="agents")
    child = ledger.create_job(1, CONFIG, parent_id=parent)
    started, seen = threading.Event(), threading.Event()

    def handler(job: object, ctx: JobContext) -> Result:
        started.set()
        waiting = threading.Event()
        for _ in range(2000):  # up to 20 s, done as soon as the cancel is seen
            if ctx.cancelled:
                seen.set()
                break
            waiting.wait(0.01)
        return Result("finished regardless")

    worker = Worker(
        ledger, handler, worker_id="w", queues=["default"], poll_interval=0.01, heartbeat_every=0.02
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert started.wait(20)
        assert ledger.get_job(child).status is JobStatus.RUNNING  # type: ignore[union-attr]
        assert ledger.cancel(parent)
        assert seen.wait(20)
    finally:
        worker.stop()
        thread.join(20)
    job = ledger.get_job(child)
    assert job is not None and job.status is JobStatus.CANCELLED and job.result_summary is None
