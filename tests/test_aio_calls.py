"""How `AsyncLedger` hands a call to its thread: the commands' short path (no coroutine of
`_call`, no ``functools.partial``) keeps every promise of the long one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ledger import AsyncLedger, JobNotFound, LedgerError, StorageError
from tests.backends.sqlite.test_group_commit import Commits, log_of
from tests.test_group_commit_async import batched

CONFIG = {"role": "coder", "task": "aio calls"}


def test_a_command_before_open_opens_the_ledger(tmp_path: Path) -> None:
    """The first call may be a command, spelled out or not: it opens the ledger first."""

    async def main() -> None:
        spelled = AsyncLedger(tmp_path / "a.db")  # create_job: a method of AsyncLedger
        job_id = await spelled.create_job(1, CONFIG)
        assert await spelled.log_event(job_id, "progress", {"n": 1}) == 2
        await spelled.close()
        found = AsyncLedger(tmp_path / "b.db")  # create_jobs: found by __getattr__
        (first,) = await found.create_jobs([{"chat_id": 2, "config": CONFIG}])
        assert await found.log_event(first, "progress") == 2
        await found.close()

    asyncio.run(main())


def test_commands_are_coroutines_and_keep_their_order(tmp_path: Path) -> None:
    """A command is still a coroutine (``create_task`` takes it), its arguments and keywords
    reach the `Ledger` method, and one task's calls run in the order made."""

    async def main() -> None:
        async with AsyncLedger(tmp_path / "ledger.db") as lg:
            job_id = await lg.create_job(7, CONFIG, priority=3)
            task = asyncio.create_task(lg.log_event(job_id, "progress", {"n": 1}))
            assert await task == 2
            for n in range(2, 6):
                assert await lg.log_event(job_id, "progress", {"n": n}) == n + 1
            job = await lg.get_job(job_id)
            assert job is not None and job.priority == 3 and job.version == 6
            events = await lg.job_events(job_id)
            assert [e.payload for e in events][1:] == [{"n": n} for n in range(1, 6)]

    asyncio.run(main())


def test_a_failing_command_raises_its_own_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncLedger(tmp_path / "ledger.db") as lg:
            try:
                await lg.log_event("no-such-job", "progress")
            except JobNotFound:
                pass
            else:
                raise AssertionError("JobNotFound not raised")

    asyncio.run(main())


def test_each_caller_of_a_lost_commit_gets_an_error_of_its_own(tmp_path: Path) -> None:
    """A lost shared COMMIT: every caller gets a StorageError, each a separate object (one
    exception raised in many tasks would gather their tracebacks), and nothing is written."""

    async def main() -> None:
        async with AsyncLedger(tmp_path / "ledger.db", durability="full") as lg:
            job_id = await lg.create_job(1, CONFIG)
            commits = Commits(lg.ledger)
            commits.veto = 1
            outcomes = await batched(
                lg, [lambda n=n: lg.log_event(job_id, "progress", {"n": n}) for n in range(4)]
            )
            assert commits.count == 1
            assert all(isinstance(outcome, StorageError) for outcome in outcomes), outcomes
            assert len({id(outcome) for outcome in outcomes}) == len(outcomes)
            assert log_of(lg.ledger) == {job_id: [1]}

    asyncio.run(main())


def test_close_while_the_first_call_opens_the_ledger(tmp_path: Path) -> None:
    """The ledger a first call was opening when `close` ran is closed too, and that call is
    told the AsyncLedger was closed (a LedgerError, not the executor's RuntimeError)."""

    async def main() -> tuple[BaseException | None, AsyncLedger]:
        lg = AsyncLedger(str(tmp_path / "ledger.db"))
        call = asyncio.ensure_future(lg.create_job(1, {}))
        await asyncio.sleep(0)  # the call is now opening the ledger on its thread
        await lg.close()
        [outcome] = await asyncio.gather(call, return_exceptions=True)
        return outcome, lg

    outcome, lg = asyncio.run(main())
    assert isinstance(outcome, LedgerError) and "closed" in str(outcome), outcome
    inner = lg._ledger
    assert inner is not None and inner._backend._closed  # opened, then closed by close()
