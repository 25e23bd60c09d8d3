"""WAL checkpoints off the commit path: a short-lived thread copies the WAL back.

Why: SQLite checkpoints inside the COMMIT that takes the WAL past ``wal_autocheckpoint`` pages:
that one command copies every page of the WAL into the database file and syncs both files (two
fdatasyncs) before its caller hears back, so about one command in a hundred pays milliseconds
and the ledger's throughput pays for all of them (measured here at durability normal: a loop of
creates ran 11-14k/s with SQLite's own checkpoints and 14-16k/s with this module; the medians,
which skip those commits, did not move).

How: the write connection's WAL hook, which SQLite calls after every commit with the WAL's
length in pages, starts a thread each time the WAL has grown by `START` pages (SQLite's default
interval) since the last one. The thread opens a connection of its own, runs
``PRAGMA wal_checkpoint(PASSIVE)`` (it copies what no reader still needs, without waiting for
readers or writers; APSW lets the GIL go while SQLite copies and syncs, so the writer goes on
meanwhile, on another core), closes it and ends: between checkpoints nothing holds the file
open and no thread is left to stop, so a `Ledger` dropped without `close` leaks neither, and
`ledger archive` (which needs the file to itself) is not refused because of one. Setting the
hook turns SQLite's own automatic checkpoint off; what bounds the WAL instead:

- A WAL restarts from its beginning (and stops growing) only when a checkpoint has copied all
  of it and a writer then begins; one that runs while the writer keeps committing never quite
  catches up. So once the WAL reaches `LIMIT` pages the writer checkpoints itself, inside the
  commit's hook as SQLite's automatic checkpoint does, and only the tail the thread has not
  copied yet is left for it: the WAL then starts over (and ``journal_size_limit`` cuts the file
  back to `LIMIT` pages). With one writing `Ledger` the ``-wal`` file stays near `LIMIT` pages
  (16 MB at 4 KB pages, where SQLite's default keeps it near 4 MB).
- Several writers on one file (processes, or `Ledger` objects) commit in between each other's
  checkpoints, so neither the thread nor a writer's tail copy lets the WAL restart, and their
  checkpoints collide. A `Ledger` that sees another connection's commits (``PRAGMA
  data_version``, looked at every `START` pages) checkpoints as SQLite does by itself from
  then on: inside the commit that finds `START` pages in the WAL.
- A checkpoint cannot copy what a reader's snapshot still needs; as with SQLite's own, a long
  read transaction lets the WAL grow until it ends.

Forking: a thread inside SQLite when a process forks would leave the child's SQLite locked for
good, so a fork waits for a running checkpoint (`os.register_at_fork`), and the child starts
none of the parent's. Nothing here changes what is durable: a checkpoint only copies committed
pages, and a crash in the middle of one leaves the WAL to be copied again on the next open.
"""

from __future__ import annotations

import _thread
import logging
import os
import threading

import apsw

from .connection import connect

START = 1000  # pages the WAL grows by between two background checkpoints (SQLite's interval)
LIMIT = 4000  # pages in the WAL at which the writer checkpoints itself, so the WAL restarts
_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
log = logging.getLogger(__name__)

# Held by a checkpoint thread while it is inside SQLite, and by a fork while it forks.
_in_sqlite = threading.Lock()
_generation = [0]  # moves in every forked child: a Checkpointer made before it starts nothing


def _after_fork_in_child() -> None:
    _generation[0] += 1
    _in_sqlite.release()


os.register_at_fork(
    before=_in_sqlite.acquire,
    after_in_parent=_in_sqlite.release,
    after_in_child=_after_fork_in_child,
)


def attach(conn: apsw.Connection, path: str, busy_timeout_ms: int) -> Checkpointer:
    """Checkpoint ``conn``'s WAL this module's way (``conn``: the write connection of the file
    at ``path``); returns the `Checkpointer` to close before ``conn``."""
    checkpointer = Checkpointer(path, busy_timeout_ms)
    page_size = int(conn.execute("PRAGMA page_size").get)
    conn.execute(f"PRAGMA journal_size_limit={LIMIT * page_size}").fetchall()
    conn.set_wal_hook(checkpointer.hook)
    return checkpointer


class Checkpointer:
    """The checkpoints of one writable SQLite ledger file (see the module docstring). `hook`
    is the write connection's WAL hook; `close` waits for a running checkpoint."""

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self._path = os.path.abspath(path)  # the thread's open must not follow a later chdir
        self._busy_timeout_ms = busy_timeout_ms
        self._running = threading.Lock()  # held while a checkpoint thread runs
        self._generation = _generation[0]
        self._closed = False
        self._pages = 0  # the WAL's length at the last commit (shorter now: it restarted)
        self._next = START  # the WAL's length at which the next checkpoint starts
        self._version: int | None = None  # PRAGMA data_version at the last look
        self.shared = False  # another connection writes the file: SQLite's own checkpoints
        self.background = 0  # checkpoints a thread ran (for tests and diagnostics)
        self.inline = 0  # checkpoints the writer ran itself (at `LIMIT`, or `shared`)

    def hook(self, conn: apsw.Connection, database: str, pages: int) -> int:
        """The write connection's WAL hook: called after each commit, with the GIL held, so it
        stays cheap (a comparison, mostly). It never raises: the commit it follows is durable
        already, and an error here would be reported as that commit's."""
        try:
            if self.shared:  # SQLite's own way (its default hook does just this)
                if pages >= START:
                    self._checkpoint_inline(conn)
                return apsw.SQLITE_OK
            if pages < self._pages:  # the WAL started over
                self._next = START
            self._pages = pages
            if pages >= self._next and self._another_writer(conn):
                self.shared = True
                log.info("%s has another writer: SQLite's own checkpoints from now", self._path)
                self._checkpoint_inline(conn)
                return apsw.SQLITE_OK
            if pages >= LIMIT:
                self._checkpoint_inline(conn)
            elif pages >= self._next:
                self._next = pages + START
                self._start()
        except Exception:
            log.warning("starting a checkpoint of %s failed", self._path, exc_info=True)
        return apsw.SQLITE_OK

    def _another_writer(self, conn: apsw.Connection) -> bool:
        """Whether another connection committed to this file since the last look (``PRAGMA
        data_version`` moves for other connections' commits only; a look from the shared
        memory, no I/O). Several writers commit in between each other's checkpoints, so
        neither the thread nor the writer's tail copy ever lets the WAL restart, and their
        checkpoints collide: measured with 3 processes of 2 writers, the WAL grew to 88-161 MB
        and 10-15% fewer jobs were written than with SQLite's own checkpoints (44-62 MB)."""
        version = int(conn.execute("PRAGMA data_version").get)
        before, self._version = self._version, version
        return before is not None and before != version

    def _checkpoint_inline(self, conn: apsw.Connection) -> None:
        """Copy the WAL's tail, so the next transaction restarts it. Busy (a thread, or another
        process, is checkpointing) is a result, not an error: tried again at the next commit."""
        try:
            busy = conn.execute(_CHECKPOINT).get[0]  # (busy, WAL pages, pages copied)
        except apsw.Error as e:  # an I/O error, a full disk: say so, the next commit retries
            log.warning("checkpoint of %s by the writer failed: %s", self._path, e)
        else:
            self.inline += not busy

    def _start(self) -> None:
        """Start a checkpoint thread unless one runs. `_thread.start_new_thread`, not
        `threading.Thread`: ``Thread.start`` waits until the new thread has run, which with
        other threads wanting the GIL took milliseconds, inside the commit's hook, with the
        write lock held (8 threads in group commit lost a fifth of their throughput)."""
        if self._closed or self._generation != _generation[0]:
            return  # closed, or a forked child: the parent's checkpoints are not its own
        if not self._running.acquire(blocking=False):
            return  # one is running: the WAL's growth meanwhile is the next one's
        try:
            _thread.start_new_thread(self._run, ())
        except BaseException:  # at interpreter shutdown, or no thread to be had: `hook` logs it
            self._running.release()
            raise

    def _run(self) -> None:
        with _in_sqlite:  # a fork waits until the checkpoint is done
            try:
                conn = connect(self._path, busy_timeout_ms=self._busy_timeout_ms, create=False)
                try:
                    conn.execute(_CHECKPOINT).fetchall()
                finally:
                    conn.close()
            except Exception as e:
                log.warning("background checkpoint of %s failed: %s", self._path, e)
            else:
                self.background += 1
            finally:
                self._running.release()  # still under `_in_sqlite`: a fork sees it released

    def running(self) -> bool:
        """Whether a checkpoint thread is running (a forked child's inherited ones: never)."""
        return self._generation == _generation[0] and self._running.locked()

    def idle(self) -> None:
        """Wait for the running checkpoint, if any (tests; `close`). In a forked child the
        parent's thread does not exist: nothing to wait for."""
        if self._generation == _generation[0]:
            with self._running:
                pass

    def close(self) -> None:
        """Start no more checkpoints and wait for a running one, before the backend closes the
        write connection (whose close checkpoints what is left)."""
        self._closed = True
        self.idle()
