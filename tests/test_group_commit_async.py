"""Group commit through `AsyncLedger` (issue 17): the ledger's thread runs queued commands in
shared transactions and answers only after the COMMIT.

Batches are forced, not hoped for: a blocking call holds the ledger's thread until the
coroutines' calls are all queued behind it (its queue's size, polled with a deadline), so they
are taken off the queue together and run as one batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from ledger import AsyncLedger, InvalidTransition, JobNotFound, Ledger, LedgerError, StorageError
from ledger.backends.sqlite.backend import SqliteBackend
from tests.backends.sqlite.test_group_commit import Commits, log_of

CONFIG = {"role": "coder", "task": "group commit async"}
WAIT = 30.0  # seconds: the most any wait here may last before the test fails


async def batched(
    lg: AsyncLedger, calls: list[Callable[[], Coroutine[Any, Any, Any]]]
) -> list[Any]:
    """Run ``calls`` as one batch of the ledger's thread: block the thread, queue them all
    behind it, then let it go; their outcomes (a result or the exception), in order."""
    release, blocker = await block(lg)
    tasks = [asyncio.ensure_future(call()) for call in calls]
    await until(lambda: lg._executor._queue.qsize() == len(calls), "the calls queued")
    release.set()
    assert blocker.result(WAIT) is True
    return await asyncio.gather(*tasks, return_exceptions=True)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (a deadline, not a sleep that synchronises)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


async def block(lg: AsyncLedger) -> tuple[threading.Event, Any]:
    """Hold the ledger's thread in a call of its own (running: off the queue and out of the
    batch it was taken in) until the returned event is set."""
    running, release = threading.Event(), threading.Event()

    def hold() -> bool:
        running.set()
        return release.wait(WAIT)

    blocker = lg._executor.submit(hold)
    await until(running.is_set, "the ledger's thread held")
    return release, blocker


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


def test_64_coroutines_lose_nothing_acknowledged_and_share_commits(path: Path) -> None:
    """64 coroutines creating and logging at FULL durability: every acknowledged write is in
    the log, gap-free, verify is green, and commits were shared (fewer than commands)."""
    tasks, rounds = 64, 3

    async def main() -> tuple[list[tuple[str, int]], int]:
        async with AsyncLedger(path, durability="full") as lg:
            commits = Commits(lg.ledger)

            async def one(n: int) -> list[tuple[str, int]]:
                acked = []
                for i in range(rounds):
                    job_id = await lg.create_job(n, {**CONFIG, "i": i})
                    acked.append((job_id, 1))
                    acked.append((job_id, await lg.log_event(job_id, "progress", {"i": i})))
                return acked

            results = await asyncio.gather(*(one(n) for n in range(tasks)))
            return [ack for acked in results for ack in acked], commits.count

    acked, commits = asyncio.run(main())
    commands = tasks * rounds * 2
    assert len(acked) == commands
    assert 0 < commits < commands
    with Ledger(path) as ledger:
        versions = log_of(ledger)
        assert sorted(acked) == sorted((j, v) for j, vs in versions.items() for v in vs)
        assert ledger.verify().ok


def test_a_batch_is_one_commit_and_an_invalid_command_fails_alone(path: Path) -> None:
    """One batch of commands, among them invalid ones (the first of the batch too): they get
    their own errors, the others succeed, all in one COMMIT."""

    async def main() -> None:
        async with AsyncLedger(path, durability="full") as lg:
            pending = await lg.create_job(1, CONFIG)
            commits = Commits(lg.ledger)
            outcomes = await batched(
                lg,
                [
                    lambda: lg.complete(pending, "done", "success", 0.0, 1),  # the first: invalid
                    lambda: lg.create_job(2, CONFIG),
                    lambda: lg.log_event(pending, "progress", {"n": 1}),
                    lambda: lg.log_event("no-such-job", "progress", {}),
                    lambda: lg.complete(pending, "done", "success", 0.0, 1),
                    lambda: lg.log_event(pending, "progress", {"n": 2}),
                    lambda: lg.create_job(3, CONFIG),
                ],
            )
            assert commits.count == 1
            first, created, v2, missing, invalid, v3, created2 = outcomes
            assert isinstance(first, InvalidTransition) and isinstance(invalid, InvalidTransition)
            assert isinstance(missing, JobNotFound)
            assert (v2, v3) == (2, 3)
            versions = log_of(lg.ledger)
            assert versions == {pending: [1, 2, 3], created: [1], created2: [1]}
            assert lg.ledger.verify().ok

    asyncio.run(main())


def test_claims_in_one_batch_take_different_jobs(path: Path) -> None:
    """Claims sharing one transaction each see the ones before: five claims over five pending
    jobs take five different jobs, in one COMMIT; a sixth finds none."""

    async def main() -> None:
        async with AsyncLedger(path, durability="full") as lg:
            ids = {await lg.create_job(1, {**CONFIG, "n": n}) for n in range(5)}
            commits = Commits(lg.ledger)
            claims = await batched(lg, [lambda n=n: lg.claim(f"w{n}", lease=60) for n in range(6)])  # type: ignore[misc]
            assert commits.count == 1
            assert {job.id for job in claims[:5]} == ids and claims[5] is None
            assert all(job.status == "running" for job in claims[:5])
            assert lg.ledger.verify().ok

    asyncio.run(main())


def test_a_failed_commit_tells_every_coroutine_of_the_batch(path: Path) -> None:
    """The batch's COMMIT fails: every coroutine in it gets a LedgerError that says nothing was
    written, none of the events is in the log, and the next calls succeed at the right
    positions."""

    async def main() -> None:
        async with AsyncLedger(path, durability="full") as lg:
            job_id = await lg.create_job(1, CONFIG)
            commits = Commits(lg.ledger)
            commits.veto = 1
            outcomes = await batched(
                lg,
                [lambda n=n: lg.log_event(job_id, "progress", {"n": n}) for n in range(5)]
                + [lambda: lg.create_job(2, CONFIG)],
            )
            assert commits.count == 1
            for outcome in outcomes:
                assert isinstance(outcome, StorageError), outcome
                assert "nothing of it was written" in str(outcome)
            assert log_of(lg.ledger) == {job_id: [1]}
            assert await lg.log_event(job_id, "progress", {"after": True}) == 2
            again = await batched(
                lg, [lambda: lg.create_job(3, CONFIG), lambda: lg.log_event(job_id, "progress")]
            )
            assert again[1] == 3
            assert log_of(lg.ledger) == {job_id: [1, 2, 3], again[0]: [1]}
            assert lg.ledger.verify().ok

    asyncio.run(main())


def test_a_read_splits_a_batch_and_only_the_lost_group_fails(path: Path) -> None:
    """A batch [write, write, read, write, write] runs as two shared transactions around the
    read; when the first COMMIT fails only its two callers get the error, the read sees
    nothing of it and the second group commits."""

    async def main() -> None:
        async with AsyncLedger(path, durability="full") as lg:
            job_id = await lg.create_job(1, CONFIG)
            commits = Commits(lg.ledger)
            commits.veto = 1
            outcomes = await batched(
                lg,
                [
                    lambda: lg.log_event(job_id, "progress", {"lost": 1}),
                    lambda: lg.log_event(job_id, "progress", {"lost": 2}),
                    lambda: lg.get_job(job_id),
                    lambda: lg.log_event(job_id, "progress", {"kept": 1}),
                    lambda: lg.log_event(job_id, "progress", {"kept": 2}),
                ],
            )
            assert commits.count == 2
            lost1, lost2, read, kept1, kept2 = outcomes
            assert isinstance(lost1, StorageError) and isinstance(lost2, StorageError)
            assert read.version == 1
            assert (kept1, kept2) == (2, 3)
            payloads = [e.payload for e in await lg.job_events(job_id)][1:]
            assert payloads == [{"kept": 1}, {"kept": 2}]
            assert log_of(lg.ledger) == {job_id: [1, 2, 3]}
            assert lg.ledger.verify().ok

    asyncio.run(main())


def test_reads_between_writes_see_their_own_acknowledged_writes(path: Path) -> None:
    """Coroutines that write and read back by turns: each read sees the writes it was already
    acknowledged, in batches that mix reads and writes."""

    async def main() -> None:
        async with AsyncLedger(path, durability="full") as lg:
            commits = Commits(lg.ledger)

            async def one(n: int) -> int:
                job_id = await lg.create_job(n, CONFIG)
                job = await lg.get_job(job_id)
                assert job is not None and job.version == 1
                for i in range(3):
                    version = await lg.log_event(job_id, "progress", {"i": i})
                    job = await lg.get_job(job_id)
                    assert job is not None and job.version == version == i + 2
                return len(await lg.job_events(job_id))

            counts = await asyncio.gather(*(one(n) for n in range(32)))
            assert counts == [4] * 32
            assert commits.count < 32 * 4
            assert lg.ledger.verify().ok

    asyncio.run(main())


def test_cancelling_an_awaiting_task_does_not_break_the_thread(path: Path) -> None:
    """A task cancelled while its calls wait behind others: the thread goes on, the other
    calls of the batch are answered, and the ledger is consistent afterwards."""

    async def main() -> None:
        async with AsyncLedger(path, durability="full") as lg:
            release, blocker = await block(lg)
            keep = [asyncio.ensure_future(lg.create_job(n, CONFIG)) for n in range(4)]
            doomed: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(lg.create_job(9, CONFIG)) for _ in range(2)
            ]
            doomed.append(asyncio.ensure_future(lg.get_job("whatever")))
            await until(lambda: lg._executor._queue.qsize() == 7, "7 calls queued")
            for task in doomed:
                task.cancel()
            release.set()
            assert blocker.result(WAIT) is True
            kept = await asyncio.gather(*keep)
            for task in doomed:
                with pytest.raises(asyncio.CancelledError):
                    await task
            after = await lg.create_job(5, CONFIG)
            versions = log_of(lg.ledger)
            assert all(versions[j] == [1] for j in [*kept, after])
            assert len(versions) in (5, 6, 7)  # the cancelled creates may have run: not lost
            assert lg.ledger.verify().ok

    asyncio.run(main())


def test_memory_ledger_coroutines_commit_each_command_alone() -> None:
    """``:memory:`` through AsyncLedger: group commit is off, batches still run, every command
    its own COMMIT, an invalid one fails alone."""

    async def main() -> None:
        async with AsyncLedger(":memory:") as lg:
            backend = lg.ledger._backend
            assert isinstance(backend, SqliteBackend) and backend._writes.enabled is False
            pending = await lg.create_job(1, CONFIG)
            commits = Commits(lg.ledger)
            outcomes = await batched(
                lg,
                [lambda n=n: lg.create_job(n, CONFIG) for n in range(5)]
                + [lambda: lg.complete(pending, "done", "success", 0.0, 1)],
            )
            assert isinstance(outcomes[-1], InvalidTransition)
            assert commits.count == 5
            versions = log_of(lg.ledger)
            assert set(outcomes[:-1]) | {pending} == set(versions)
            assert lg.ledger.verify().ok

    asyncio.run(main())


def test_closing_after_a_batch_keeps_every_acknowledged_write(path: Path) -> None:
    """Writes acknowledged just before ``close`` are durable in the file reopened after."""

    async def main() -> list[str]:
        lg = AsyncLedger(path, durability="full")
        await lg.open()
        ids = await asyncio.gather(*(lg.create_job(n, CONFIG) for n in range(16)))
        await lg.close()
        with pytest.raises(LedgerError, match="closed"):
            await lg.create_job(1, CONFIG)
        return list(ids)

    ids = asyncio.run(main())
    with Ledger(path) as ledger:
        assert set(log_of(ledger)) == set(ids)
        assert ledger.verify().ok


def test_threads_and_coroutines_on_one_ledger_share_commits_safely(path: Path) -> None:
    """An `AsyncLedger` wrapping a `Ledger` that threads use at the same time: the ledger's
    thread joins the threads' open groups and they join its; nothing acknowledged is lost."""
    with Ledger(path, durability="full") as ledger:
        start = threading.Barrier(5)
        acked: list[tuple[str, int]] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def thread(n: int) -> None:
            try:
                start.wait(WAIT)
                for i in range(10):
                    job_id = ledger.create_job(n, CONFIG)
                    version = ledger.log_event(job_id, "progress", {"i": i})
                    with lock:
                        acked.extend([(job_id, 1), (job_id, version)])
            except BaseException as e:
                errors.append(e)

        async def coroutines() -> None:
            async with AsyncLedger(ledger) as lg:

                async def one(n: int) -> None:
                    for i in range(5):
                        job_id = await lg.create_job(100 + n, CONFIG)
                        version = await lg.log_event(job_id, "progress", {"i": i})
                        with lock:
                            acked.extend([(job_id, 1), (job_id, version)])

                await asyncio.to_thread(start.wait, WAIT)
                await asyncio.gather(*(one(n) for n in range(16)))

        threads = [threading.Thread(target=thread, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        asyncio.run(coroutines())
        for t in threads:
            t.join(WAIT)
        assert not errors and not any(t.is_alive() for t in threads)
        assert len(acked) == 4 * 10 * 2 + 16 * 5 * 2
        versions = log_of(ledger)
        assert sorted(acked) == sorted((j, v) for j, vs in versions.items() for v in vs)
        assert ledger.verify().ok
