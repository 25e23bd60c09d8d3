"""A command's events and its job row as one statement on PostgreSQL (`postgres.combined`).

What is proved here, each against a real server:
- a lone ``create_job`` sends one statement in all (no BEGIN, no COMMIT: outside a transaction
  block it is its own transaction), and the job, its event, its ``created_position`` and the
  projection checkpoint read back as before;
- a lone ``log_event`` sends BEGIN, its locked read, one statement (event, row and checkpoint)
  and COMMIT, and the checkpoint is the log's head;
- several events of one job in one command are one multi-row INSERT whose insert trigger still
  sees each earlier row: versions and positions come out in order, and a gap is still refused
  (and nothing of the command is written);
- a failing combined statement (a taken version) is the caller's `ConcurrencyError`, and
  nothing of it is written;
- a transaction in which a command read but wrote nothing still ends (its COMMIT is sent);
  one that sent nothing at all sends nothing;
- a write started from inside a write's command is refused in words, and the command goes on;
- a claim sends its three looks (expired leases, holders on its host, the claim query) before
  it reads any of them, and locks no budget row in that look when there is anything to rescue;
- ``create_jobs`` is not combined (measured slower as one statement), and each new row still
  names its own created event's position; a batch with a taken idempotency key writes the
  other jobs and answers the first job's id for that one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from ledger import ConcurrencyError, Ledger, LedgerError, StorageError

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from ledger.backends.postgres import jobs_table  # noqa: E402
from ledger.backends.postgres.backend import PostgresBackend  # noqa: E402
from ledger.domain import events as ev  # noqa: E402

CONFIG = {"role": "coder", "task": "combined statements"}
READ = "READ"  # `Sent`'s mark for a fetch of a result


def backend_of(ledger: Ledger) -> PostgresBackend:
    backend = ledger._backend
    assert isinstance(backend, PostgresBackend)
    return backend


class Sent:
    """The statements the writer connection sends, in order (every statement goes through a
    cursor's ``execute``, ``Connection.execute``'s too; other connections' are left out). With
    ``reads``, each fetch of a result on the writer is recorded among them as ``READ``."""

    def __init__(
        self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, *, reads: bool = False
    ) -> None:
        self.statements: list[str] = []
        writer = backend_of(ledger)._conn
        original = psycopg.Cursor.execute

        def execute(cursor: Any, statement: Any, params: Any = None, **kwargs: Any) -> Any:
            if cursor.connection is writer:
                self.statements.append(" ".join(str(statement).split()))
            return original(cursor, statement, params, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)
        for name in ("fetchone", "fetchall") if reads else ():
            fetch = getattr(psycopg.Cursor, name)

            def watched(cursor: Any, *args: Any, _fetch: Any = fetch, **kwargs: Any) -> Any:
                if cursor.connection is writer:
                    self.statements.append(READ)
                return _fetch(cursor, *args, **kwargs)

            monkeypatch.setattr(psycopg.Cursor, name, watched)

    def take(self) -> list[str]:
        taken, self.statements = self.statements, []
        return taken


@pytest.fixture
def ledger(postgres_schema: str) -> Iterator[Ledger]:
    with Ledger(postgres_schema, durability="full") as opened:
        yield opened


def checkpoint_and_head(url: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT position FROM projection_checkpoints WHERE name = 'jobs'), "
            "(SELECT last_position FROM event_counter)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_lone_create_is_one_statement_and_reads_back(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.create_job(1, CONFIG)  # the schema's first write
    sent = Sent(ledger, monkeypatch)
    job_id = ledger.create_job(7, CONFIG, queue="q1", priority=3)
    statements = sent.take()
    assert len(statements) == 1 and statements[0].startswith("WITH e AS (INSERT INTO events")
    assert "j AS (INSERT INTO jobs" in statements[0]
    assert "UPDATE projection_checkpoints" in statements[0]
    job = ledger.get_job(job_id)
    assert job is not None and job.config == CONFIG and job.chat_id == 7 and job.queue == "q1"
    [created] = ledger.job_events(job_id)
    assert created.version == 1
    with psycopg.connect(postgres_schema, autocommit=True) as conn:
        row = conn.execute("SELECT created_position FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None and row[0] == created.position
    assert checkpoint_and_head(postgres_schema) == (created.position, created.position)
    assert ledger.verify().ok


def test_a_lone_log_event_sends_its_writes_and_the_checkpoint_in_one_statement(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = ledger.create_job(1, CONFIG)
    sent = Sent(ledger, monkeypatch)
    assert ledger.log_event(job_id, "progress", {"n": 1}) == 2
    statements = sent.take()
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT"
    assert len(statements) == 4 and statements[1].startswith("SELECT")
    combined = statements[2]
    assert combined.startswith("WITH e AS (INSERT INTO events")
    assert "j AS (UPDATE jobs" in combined and "UPDATE projection_checkpoints" in combined
    last = ledger.job_events(job_id)[-1]
    assert last.version == 2 and last.payload == {"n": 1}
    assert checkpoint_and_head(postgres_schema) == (last.position, last.position)
    assert ledger.verify().ok


def _progress(n: int) -> ev.Event:
    return ev.ACTIVITY_EVENTS["progress"](payload=msgspec.Raw(msgspec.json.encode({"n": n})))


def _log_by_hand(tx: Any, job_id: str, after: int | None, versions: int) -> list[int]:
    """Through the write transaction ``tx``: ``versions`` events appended to ``job_id`` after
    version ``after`` (None: the job's own), its row saved as the fold would (version and
    updated_at) and the checkpoint moved; the versions appended."""
    now = datetime.now(UTC).replace(microsecond=0)
    state = tx.load_job(job_id)
    after = state.version if after is None else after
    stored = tx.append(job_id, after, [_progress(n) for n in range(versions)], now)
    changed = msgspec.structs.replace(state, version=after + versions, updated_at=now)
    tx.save_jobs([], [(changed, ("version", "updated_at"))])
    tx.advance_checkpoint("jobs", stored[-1].position)
    return [s.version for s in stored]


def _append_and_save(ledger: Ledger, job_id: str, after: int, versions: int) -> list[int]:
    """One write transaction of `_log_by_hand`."""
    return backend_of(ledger).write(  # type: ignore[no-any-return]
        "appending events", lambda tx: _log_by_hand(tx, job_id, after, versions)
    )


def test_several_events_of_one_job_keep_their_order_and_their_version_check(
    ledger: Ledger, postgres_schema: str
) -> None:
    job_id = ledger.create_job(1, CONFIG)
    assert _append_and_save(ledger, job_id, 1, 3) == [2, 3, 4]
    events = ledger.job_events(job_id)
    assert [e.version for e in events] == [1, 2, 3, 4]
    positions = [e.position for e in events]
    assert positions == sorted(positions) and positions[-1] - positions[1] == 2
    assert [e.payload for e in events[1:]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    job = ledger.get_job(job_id)
    assert job is not None and job.version == 4
    assert checkpoint_and_head(postgres_schema) == (positions[-1], positions[-1])
    assert ledger.verify().ok

    with pytest.raises(ConcurrencyError):  # version 2 is taken: nothing of the three is written
        _append_and_save(ledger, job_id, 1, 3)
    assert [e.version for e in ledger.job_events(job_id)] == [1, 2, 3, 4]
    with pytest.raises(LedgerError, match="gap"):  # version 6 after 4: the trigger refuses it
        _append_and_save(ledger, job_id, 5, 2)
    assert [e.version for e in ledger.job_events(job_id)] == [1, 2, 3, 4]
    assert ledger.get_job(job_id).version == 4  # type: ignore[union-attr]
    assert ledger.verify().ok


def test_a_taken_version_in_a_lone_log_event_is_a_concurrency_error_and_writes_nothing(
    ledger: Ledger, postgres_schema: str
) -> None:
    job_id = ledger.create_job(1, CONFIG)
    with Ledger(postgres_schema) as other:
        other.log_event(job_id, "progress", {"other": True})
    with pytest.raises(ConcurrencyError):
        ledger.log_event(job_id, "progress", {"late": True}, expected_version=1)
    assert [e.payload for e in ledger.job_events(job_id)[1:]] == [{"other": True}]
    assert ledger.verify().ok


def test_a_command_that_only_reads_ends_its_transaction(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = ledger.create_job(1, CONFIG)
    assert ledger.cancel(job_id, reason="no longer needed") is True
    sent = Sent(ledger, monkeypatch)
    assert ledger.cancel(job_id, reason="again") is False  # read the row, decided nothing to do
    statements = sent.take()
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT"
    backend = backend_of(ledger)
    assert backend._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert ledger.claim("w") is None  # and the writer goes on
    assert ledger.verify().ok


def test_a_transaction_that_sent_nothing_sends_no_statement(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = ledger.create_job(1, CONFIG)
    sent = Sent(ledger, monkeypatch)
    assert backend_of(ledger).write("doing nothing", lambda tx: 42) == 42
    assert sent.take() == []
    assert ledger.log_event(job_id, "progress", {"after": True}) == 2  # the writer goes on
    assert len(sent.take()) == 4
    assert ledger.verify().ok


def test_create_jobs_is_not_combined_and_each_row_names_its_own_created_event(
    ledger: Ledger, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.create_job(1, CONFIG)
    sent = Sent(ledger, monkeypatch)
    ids = ledger.create_jobs([{"chat_id": n, "config": {**CONFIG, "n": n}} for n in range(50)])
    statements = sent.take()
    assert not any(statement.startswith("WITH") for statement in statements)
    with psycopg.connect(postgres_schema, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT j.id, j.chat_id, j.created_position, e.position FROM jobs j "
            "JOIN events e ON e.job_id = j.id AND e.version = 1 WHERE j.id = ANY(%s)",
            (ids,),
        ).fetchall()
    assert len(rows) == 50 and all(created == position for _, _, created, position in rows)
    by_id = {job_id: (chat, created) for job_id, chat, created, _ in rows}
    assert [by_id[job_id][0] for job_id in ids] == list(range(50))  # each row its own values
    positions = [by_id[job_id][1] for job_id in ids]
    assert positions == list(range(positions[0], positions[0] + 50))  # in creation order
    assert ledger.get_job(ids[7]).config == {**CONFIG, "n": 7}  # type: ignore[union-attr]
    assert checkpoint_and_head(postgres_schema) == (positions[-1], positions[-1])
    assert ledger.verify().ok


def test_create_jobs_with_a_taken_idempotency_key_writes_the_others_and_answers_the_first(
    ledger: Ledger, postgres_schema: str
) -> None:
    first = ledger.create_job(1, CONFIG, idempotency_key="k-1")
    with Ledger(postgres_schema) as other:
        assert other.create_job(1, CONFIG, idempotency_key="k-1") == first
    before = ledger.head()
    again = ledger.create_jobs(
        [
            {"chat_id": 2, "config": CONFIG},
            {"chat_id": 3, "config": CONFIG, "idempotency_key": "k-1"},
        ]
    )
    assert again[1] == first and ledger.get_job(again[0]) is not None
    assert ledger.head()[0] == before[0] + 1  # one new job, its one event
    assert ledger.verify().ok


def _outer_log_then_nested_create(ledger: Ledger, job_id: str) -> Any:
    """A write whose command reads and appends to ``job_id``, then calls the ledger again (a
    write nested in it)."""
    nested: dict[str, Any] = {}

    def outer(tx: Any) -> Any:
        _log_by_hand(tx, job_id, None, 1)
        try:
            ledger.create_job(2, {"nested": True})
        except StorageError as e:
            nested["error"] = e
        return nested

    return backend_of(ledger).write("an outer write", outer)


def test_a_write_nested_in_a_command_is_refused_and_the_command_commits_alone(
    ledger: Ledger, postgres_schema: str
) -> None:
    """A ledger call from inside a write's command is refused in words, nothing of it is
    written, and the command that made it goes on and commits, with the writer left outside
    any transaction (reviewers' findings: run into the middle of the command's transaction, a
    nested write was lost, or left the transaction open, or committed half of it)."""
    job_id = ledger.create_job(1, CONFIG)
    before = ledger.count_jobs()
    nested = _outer_log_then_nested_create(ledger, job_id)
    assert "inside another write's command" in str(nested["error"])
    assert "nothing of it was written" in str(nested["error"])
    backend = backend_of(ledger)
    assert backend._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with Ledger(postgres_schema) as other:  # what another session sees: the outer's event only
        assert [e.version for e in other.job_events(job_id)] == [1, 2]
        assert other.count_jobs() == before
        assert other.verify().ok
    assert ledger.log_event(job_id, "progress", {"after": True}) == 3  # the writer goes on
    assert ledger.verify().ok


def test_a_claim_sends_its_three_looks_before_reading_any(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim's expired-lease look, its holder look and the claim query go out together and
    are then read (`before_claim`): one wait where there were three. Watched on the writer's
    cursors: every one of the three is sent before the first row of any is fetched."""
    job_id = ledger.create_job(7, CONFIG)
    sent = Sent(ledger, monkeypatch, reads=True)
    job = ledger.claim("w1")
    assert job is not None and job.id == job_id and job.worker_id == "w1"
    seen = sent.take()
    first_read = seen.index(READ)
    looks = [
        " ".join(s.split())
        for s in (
            jobs_table.expired_limit_statement,
            jobs_table.held_on_statement,
            jobs_table.claim_any_statement,
        )
    ]
    assert seen[:first_read] == ["BEGIN", *looks], seen
    assert seen[first_read : first_read + 3] == [READ] * 3, seen
    assert ledger.verify().ok


def test_a_claim_locks_no_budget_row_before_a_rescue(postgres_schema: str) -> None:
    """A budget row is locked by the first look only when nothing can be rescued: a rescue
    appends (taking the log's counter), and a claim holding a budget row before that deadlocked
    with a rescuing claimer that held the counter and checked the same budget. With an expired
    lease to rescue, the look is not settled and leaves the budget row free; with nothing to
    rescue it settles on the job (the budget row then locked, as a claim always locked it)."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    with Ledger(postgres_schema, clock=lambda: now[0]) as ledger:
        ledger.set_budget(5, 1000)
        running = ledger.create_job(5, CONFIG, priority=9, max_attempts=2)
        assert ledger.claim("w0", lease=10) is not None
        waiting = ledger.create_job(5, CONFIG, priority=1)
        now[0] = now[0].replace(minute=1)  # the lease is over
        backend = backend_of(ledger)

        def look(tx: Any) -> tuple[Any, bool]:
            looks = tx.before_claim(now[0], 100, None, None)
            with psycopg.connect(postgres_schema, autocommit=True) as other:
                other.execute("SET lock_timeout TO 100")
                other.execute("BEGIN")
                try:
                    other.execute("SELECT 1 FROM budgets WHERE chat_id = 5 FOR UPDATE").fetchall()
                except psycopg.errors.LockNotAvailable:
                    return looks, False
            return looks, True

        (expired, holders, job_id, settled), free = backend.write("looking", look)
        assert (expired, holders, job_id, settled, free) == ([running], [], None, False, True)
        job = ledger.claim("w1")  # the rescue, then the claim: the rescued job outranks
        assert job is not None and job.id == running and job.attempts == 2
        (expired, holders, job_id, settled), free = backend.write("looking", look)
        assert (expired, holders, job_id, settled, free) == ([], [], waiting, True, False)
        assert ledger.verify().ok
