"""Groups 4, 6, 7, 8: reading the log, replay, queries on a big ledger, claim vs table size."""

from __future__ import annotations

import functools
import gc
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import apsw
import pytest

from benchmarks import raw
from benchmarks.bigledger import big_ledger, finished_ledger
from benchmarks.conftest import size
from ledger import Ledger
from ledger.backends.sqlite import jobs_table as q
from ledger.backends.sqlite.jobs_table import index_statements, table_statement

_T = TypeVar("_T")
BIG_JOBS = size(100_000, 300)  # about 1,045,000 events at full size
READ_JOBS = size(9_570, 60)  # about 100,000 events
CHATS = size(10_000, 30)


@pytest.fixture(scope="module")
def big(cache_dir: Path) -> Path:
    return big_ledger(cache_dir, BIG_JOBS, CHATS)


@pytest.fixture(scope="module")
def read_db(cache_dir: Path) -> Path:
    return big_ledger(cache_dir, READ_JOBS, CHATS)


@pytest.fixture
def big_ro(big: Path) -> Iterator[tuple[Ledger, apsw.Connection]]:
    ledger = Ledger(str(big), readonly=True)
    conn = apsw.Connection(str(big), flags=apsw.SQLITE_OPEN_READONLY)
    yield ledger, conn
    ledger.close()
    conn.close()


@pytest.mark.parametrize("impl", ["ledger", "raw"])
def test_read_all(benchmark, read_db: Path, impl: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "4 read_all 100k events"
    with Ledger(str(read_db), readonly=True) as ledger:
        events = ledger.last_position()
        benchmark.extra_info["items"] = events
        if impl == "ledger":
            result = benchmark.pedantic(ledger.read_all, rounds=size(5, 1), iterations=1)
        else:
            conn = apsw.Connection(str(read_db), flags=apsw.SQLITE_OPEN_READONLY)
            result = benchmark.pedantic(raw.read_all, (conn,), rounds=size(5, 1), iterations=1)
            conn.close()
        assert len(result) == events


@pytest.fixture(scope="module")
def replay_copy(big: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Replay rewrites the projection, so it runs on a copy of the cached big ledger."""
    target = tmp_path_factory.mktemp("replay") / "ledger.db"
    shutil.copy(big, target)
    return target


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _peak_rss_growth(call: Callable[[], _T]) -> tuple[_T, float | None]:
    """``call()`` and how far the process's peak resident memory rose above what it held
    before, in MB (Linux: the peak is reset first; None elsewhere). Memory flat means this
    stays the same whatever the log's length (the fold's states go out in batches)."""

    def field(name: str) -> float:
        line = next(x for x in _STATUS.read_text().splitlines() if x.startswith(name))
        return int(line.split()[1]) / 1024

    if not _CLEAR_REFS.exists():
        return call(), None
    gc.collect()
    _CLEAR_REFS.write_text("5")  # the peak (VmHWM) starts again from what is resident now
    before = field("VmRSS")
    result = call()
    return result, field("VmHWM") - before


@pytest.mark.parametrize("impl", ["ledger", "raw"])
def test_replay(benchmark, replay_copy: Path, impl: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "6 replay 1M events"
    rounds = size(3, 1)
    if impl == "ledger":
        with Ledger(str(replay_copy)) as ledger:
            report = benchmark.pedantic(ledger.replay, rounds=rounds, iterations=1)
            benchmark.extra_info["items"] = report.events
            _, benchmark.extra_info["peak_rss_growth_mb"] = _peak_rss_growth(ledger.replay)
            assert ledger.verify().ok
    else:
        conn = raw.connect(str(replay_copy))
        schema = [table_statement, *index_statements]
        count = benchmark.pedantic(raw.replay, (conn, schema), rounds=rounds, iterations=1)
        benchmark.extra_info["items"] = count
        replay = functools.partial(raw.replay, conn, schema)
        _, benchmark.extra_info["peak_rss_growth_mb"] = _peak_rss_growth(replay)
        conn.close()
        with Ledger(str(replay_copy)) as ledger:  # the hand fold built the same table
            assert ledger.verify().ok


QUERIES = {
    "get_job": (
        lambda lg, job, chat: lg.get_job(job),
        lambda c, job, chat: c.execute(q.get_statement, (job,)).fetchall(),
    ),
    "pending_jobs(10)": (
        lambda lg, job, chat: lg.pending_jobs(10),
        lambda c, job, chat: c.execute(q.pending_statement, (10,)).fetchall(),
    ),
    "jobs_for_chat(20)": (
        lambda lg, job, chat: lg.jobs_for_chat(chat, 20),
        lambda c, job, chat: c.execute(q.for_chat_statement, (chat, 20)).fetchall(),
    ),
    "recent_events_for_chat(20)": (
        lambda lg, job, chat: lg.recent_events_for_chat(chat, 20),
        lambda c, job, chat: [
            raw._dec.decode(r[4])
            for r in c.execute(
                "SELECT position, job_id, version, type, data, recorded_at FROM events "
                "WHERE job_id IN (SELECT id FROM jobs WHERE chat_id = ?) AND type NOT IN "
                "('heartbeat') ORDER BY position DESC LIMIT 20",
                (chat,),
            )
        ],
    ),
    "active_jobs_summary": (
        lambda lg, job, chat: lg.active_jobs_summary(chat),
        lambda c, job, chat: (
            c.execute(q.running_for_chat_statement, (chat,)).fetchall(),
            c.execute(q.recent_finished_for_chat_statement, (chat, 3)).fetchall(),
        ),
    ),
}


@pytest.mark.parametrize("query", list(QUERIES))
@pytest.mark.parametrize("impl", ["ledger", "raw"])
def test_query(benchmark, big_ro, query: str, impl: str) -> None:  # type: ignore[no-untyped-def]
    ledger, conn = big_ro
    benchmark.group = f"7 query {query}"
    job = str(conn.execute("SELECT id FROM jobs WHERE rowid = ?", (BIG_JOBS // 2 + 1,)).get)
    chat = 1  # chat 1 holds a running job (i % 20 == 1), so the summary has both sections
    ledger_call, raw_call = QUERIES[query]
    if impl == "ledger":
        result = benchmark(ledger_call, ledger, job, chat)
    else:
        result = benchmark(raw_call, conn, job, chat)
    assert result


@pytest.mark.parametrize("finished", [size(10_000, 100), size(1_000_000, 1_000)])
@pytest.mark.parametrize("impl", ["ledger", "raw"])
def test_claim_vs_finished(  # type: ignore[no-untyped-def]
    benchmark, cache_dir: Path, tmp_path: Path, impl: str, finished: int
) -> None:
    """Claim cost must not grow with finished jobs (normal durability, to see past the fsync)."""
    benchmark.group = "8 claim with N finished jobs"
    pending = size(2_000, 50)
    source = finished_ledger(cache_dir, finished, pending)
    target = tmp_path / "ledger.db"
    shutil.copy(source, target)
    rounds = size(1_000, 20)
    if impl == "ledger":
        with Ledger(str(target), durability="normal") as ledger:
            benchmark.pedantic(lambda: ledger.claim("w"), rounds=rounds, iterations=1)
            assert ledger.running_jobs()  # each round claimed a job
    else:
        conn = raw.connect(str(target), "normal")
        benchmark.pedantic(lambda: raw.claim(conn, "w"), rounds=rounds, iterations=1)
        conn.close()
