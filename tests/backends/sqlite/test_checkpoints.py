"""WAL checkpoints off the commit path (`ledger.backends.sqlite.checkpoints`): they run on a
thread of their own, the WAL stays bounded under writes that never pause, closing stops the
thread, and a process killed in the middle of it all loses nothing it acknowledged."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import apsw
import pytest

from ledger import Ledger
from ledger.backends.sqlite import checkpoints
from ledger.backends.sqlite.backend import SqliteBackend
from tests.conftest import ROOT

CONFIG = {"role": "coder", "task": "fill the WAL"}


def _checkpointer(ledger: Ledger) -> checkpoints.Checkpointer:
    backend = ledger._backend
    assert isinstance(backend, SqliteBackend) and backend._checkpoints is not None
    return backend._checkpoints


def _wal_pages(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return 0 if not wal.exists() else (wal.stat().st_size - 32) // (4096 + 24)


def _fill(ledger: Ledger, pages: int) -> int:
    """Create jobs one command at a time until the commits have written ``pages`` WAL pages."""
    written = 0
    ck = _checkpointer(ledger)
    last = ck._pages
    while written < pages:
        ledger.create_job(7, CONFIG)
        now = ck._pages
        written += now - last if now >= last else now
        last = now
    return written


def test_checkpoints_run_on_a_thread_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path, durability="normal") as ledger:
        ck = _checkpointer(ledger)
        assert ck.background == 0 and not ck.running()  # nothing started until the WAL needs it
        _fill(ledger, checkpoints.START + 50)
        ck.idle()
        assert ck.background >= 1
        assert ck.inline == 0  # the writer did not copy the WAL itself
        assert not ck.running()  # the thread ended with its checkpoint: nothing holds the file
        # what was copied is in the database file itself: read it with the WAL out of the way
        copied = apsw.Connection(
            f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READONLY
        )
        assert copied.execute("SELECT count(*) FROM jobs").get > 0
        copied.close()


def test_the_wal_stays_bounded_when_writes_never_pause(tmp_path: Path) -> None:
    """A checkpoint running beside a writer never catches up with the WAL's end, so the WAL
    would only grow; the writer's own checkpoint at LIMIT lets it start over."""
    path = tmp_path / "ledger.db"
    with Ledger(path, durability="normal") as ledger:
        written = _fill(ledger, 3 * checkpoints.LIMIT)
        ck = _checkpointer(ledger)
        assert written >= 3 * checkpoints.LIMIT
        assert ck.inline >= 1
        assert _wal_pages(path) < 2 * checkpoints.LIMIT  # not the 3 x LIMIT written
        count = ledger.count_jobs()
    assert not Path(f"{path}-wal").exists()  # the last close checkpointed and removed it
    with Ledger(path, readonly=True) as reopened:
        assert reopened.count_jobs() == count
        assert reopened.verify().ok


def test_a_reader_keeps_what_it_reads_while_checkpoints_run(tmp_path: Path) -> None:
    """A read transaction left open pins its snapshot: checkpoints copy only what it no longer
    needs, and it keeps reading the same state however much is written meanwhile."""
    path = tmp_path / "ledger.db"
    with Ledger(path, durability="normal") as ledger:
        ledger.create_jobs([{"chat_id": 7, "config": CONFIG}] * 10)
        reader = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        reader.execute("BEGIN")
        before = reader.execute("SELECT count(*) FROM jobs").get
        _fill(ledger, 2 * checkpoints.START)
        _checkpointer(ledger).idle()
        assert reader.execute("SELECT count(*) FROM jobs").get == before == 10
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM jobs").get == ledger.count_jobs() > 10
        reader.close()


def test_a_read_only_or_memory_ledger_has_no_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    for ledger in (Ledger(path, readonly=True), Ledger(":memory:")):
        backend = ledger._backend
        assert isinstance(backend, SqliteBackend) and backend._checkpoints is None
        ledger.close()


def test_sigkill_while_checkpoints_run_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """A child creates jobs without a pause (a background checkpoint is running most of the
    time) and prints each id once create_job returned; it is killed at several points."""
    db = tmp_path / "ledger.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    acked: list[str] = []
    for round_number, kill_after in enumerate((400, 1500, 3000)):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.checkpoint_child", str(db)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None
        this_round = 0
        for line in child.stdout:
            text = line.decode().strip()
            if len(text) == 36:  # a whole id (the line the kill tears is not counted)
                acked.append(text)
                this_round += 1
            if this_round >= kill_after:
                break
        assert this_round >= kill_after, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        conn = apsw.Connection(str(db))
        assert conn.execute("PRAGMA integrity_check").get == "ok"
        stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        conn.close()
        missing = set(acked) - stored
        assert not missing, f"round {round_number}: acknowledged jobs lost: {sorted(missing)[:3]}"
    with Ledger(db) as ledger:
        assert ledger.verify().ok
        assert ledger.count_jobs() >= len(acked)


def test_a_failing_thread_start_fails_no_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook runs after SQLite committed: a thread that cannot start (interpreter shutdown,
    a process limit) is logged, the command still returns, and the writer's own checkpoint at
    LIMIT keeps the WAL bounded."""

    def refuse(function: object, args: object) -> None:
        raise RuntimeError("can't start new thread")

    path = tmp_path / "ledger.db"
    with Ledger(path, durability="normal") as ledger:
        monkeypatch.setattr(checkpoints._thread, "start_new_thread", refuse)
        written = _fill(ledger, checkpoints.LIMIT + 200)  # every create returned
        ck = _checkpointer(ledger)
        assert ck.background == 0 and ck.inline >= 1
        assert written >= checkpoints.LIMIT
        count = ledger.count_jobs()
    monkeypatch.undo()
    with Ledger(path) as reopened:
        assert reopened.count_jobs() == count and reopened.verify().ok


def test_a_ledger_dropped_without_close_leaves_nothing_holding_the_file(tmp_path: Path) -> None:
    """No thread waits between checkpoints and none keeps a connection: once a dropped
    `Ledger` is collected, archiving (which needs the file to itself) is not refused."""
    path = tmp_path / "ledger.db"
    dropped = Ledger(path, durability="normal")
    _fill(dropped, checkpoints.START + 50)
    _checkpointer(dropped).idle()
    del dropped
    gc.collect()
    with Ledger(path) as ledger:
        report = ledger.archive(timedelta(0), tmp_path / "archive.db")
        assert report is not None and ledger.verify().ok


def test_a_forked_child_starts_none_of_its_parents_checkpoints(tmp_path: Path) -> None:
    """A child inherits the parent's `Ledger` objects but not their threads; its own `Ledger`
    checkpoints as usual. Forks land while the parent's checkpoints run."""
    parent = Ledger(tmp_path / "parent.db", durability="normal")
    inherited = _checkpointer(parent)
    children = []
    for n in range(12):
        _fill(parent, checkpoints.START // 2)  # a checkpoint starts about every other round
        pid = os.fork()
        if pid == 0:  # the child: exit status 0 when all holds, 1 (or a hang) when not
            code = 1
            try:
                inherited._start()
                started = len(os.listdir("/proc/self/task")) > 1  # a thread of the parent's
                with Ledger(tmp_path / f"child{n}.db", durability="normal") as own:
                    own.create_jobs([{"chat_id": 7, "config": CONFIG}] * 20)
                    code = 0 if not started and own.count_jobs() == 20 else 1
            finally:
                os._exit(code)
        children.append(pid)
    deadline = time.monotonic() + 60
    for pid in children:
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:  # a hung child: fail, not hang
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"child {pid} hung (its SQLite locked by a fork mid-checkpoint?)")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(done[1]) == 0
    parent.close()


def test_a_file_with_another_writer_checkpoints_the_sqlite_way(tmp_path: Path) -> None:
    """Two writers commit in between each other's checkpoints, so a background thread would
    never let the WAL restart: once a Ledger sees another connection's commits (PRAGMA
    data_version), it checkpoints as SQLite does by itself, and the WAL keeps restarting."""
    path = tmp_path / "ledger.db"
    with Ledger(path, durability="normal") as one, Ledger(path, durability="normal") as two:
        ck = _checkpointer(one)
        for _ in range(5000):  # a few thousand WAL pages at most
            one.create_job(1, CONFIG)
            two.create_job(2, CONFIG)
            if ck.shared and _checkpointer(two).shared:
                break
        assert ck.shared and _checkpointer(two).shared
        ck.idle()  # a thread started before the switch counts itself when it ends
        shared_at, high_water = ck.background, _wal_pages(path)
        for _ in range(600):  # some 5,000 WAL pages more
            one.create_job(1, CONFIG)
            two.create_job(2, CONFIG)
        assert ck.background == shared_at  # no thread started since
        assert _wal_pages(path) <= high_water + 100  # it restarted: the file did not grow
        assert one.count_jobs() == two.count_jobs()
    with Ledger(path) as reopened:
        assert reopened.verify().ok


def test_a_lone_writer_is_not_taken_for_two(tmp_path: Path) -> None:
    """Its own commits, its checkpoint thread and a reader move nothing that says another
    writer: it keeps checkpointing off the commit path."""
    path = tmp_path / "ledger.db"
    with Ledger(path, durability="normal") as ledger, Ledger(path, readonly=True) as reader:
        for _ in range(4):
            _fill(ledger, checkpoints.START)
            assert reader.count_jobs() > 0
        ck = _checkpointer(ledger)
        ck.idle()
        assert not ck.shared and ck.background >= 2
