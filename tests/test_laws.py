"""Each law of DESIGN.md that the core touches, proved on a real file."""

from __future__ import annotations

import apsw
import pytest

import projections.jobs
from ledger import EventType, Ledger, LedgerError
from ledger.domain import events as ev
from tests.conftest import FakeClock, event_count, snapshot, table_dump

CONFIG = {"role": "coder", "task": "laws"}


def _busy_ledger(ledger: Ledger, clock: FakeClock) -> list[str]:
    """A log with every kind of event in it."""
    ids = [ledger.create_job(n % 3, {**CONFIG, "n": n}, max_attempts=2) for n in range(6)]
    for n, job_id in enumerate(ids):
        ledger.claim(f"w{n}", lease=30)
        ledger.log_event(job_id, "progress", {"step": n})
        clock.advance(1)
    ledger.heartbeat(ids[0])
    ledger.complete(ids[0], "done", "success", 1.5, 3)
    ledger.fail(ids[1], "retry me")  # attempts left: back to pending
    ledger.fail(ids[2], "give up", retry=False)
    ledger.cancel(ids[3])
    clock.advance(3600)
    ledger.rescue_expired()  # ids[4], ids[5] leases expired
    return ids


def test_events_table_refuses_update_and_delete(ledger: Ledger, clock: FakeClock) -> None:
    _busy_ledger(ledger, clock)
    before = table_dump(ledger.path, "events")
    raw = apsw.Connection(ledger.path)
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        raw.execute("UPDATE events SET data = '{}' WHERE position = 1")
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        raw.execute("DELETE FROM events")
    raw.close()
    assert table_dump(ledger.path, "events") == before


def test_failed_apply_in_a_multi_event_command_writes_nothing(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.create_job(1, CONFIG)
    before = snapshot(ledger.path)
    real = projections.jobs.advance
    calls = {"n": 0}

    def failing_on_third(row, stored):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("apply broke")
        return real(row, stored)

    monkeypatch.setattr(projections.jobs, "advance", failing_on_third)
    with pytest.raises(RuntimeError, match="apply broke"):
        ledger.create_jobs([{"chat_id": 1, "config": CONFIG} for _ in range(5)])
    assert snapshot(ledger.path) == before
    monkeypatch.setattr(projections.jobs, "advance", real)
    assert len(ledger.create_jobs([{"chat_id": 1, "config": CONFIG}] * 2)) == 2  # still usable
    assert ledger.verify().ok


def test_bad_spec_in_a_batch_writes_nothing(ledger: Ledger) -> None:
    before = snapshot(ledger.path)
    with pytest.raises(LedgerError, match=r"specs\[2\]"):
        ledger.create_jobs(
            [
                {"chat_id": 1, "config": {}},
                {"chat_id": 2, "config": {}},
                {"chat_id": 3, "config": {}, "colour": "red"},
            ]
        )
    assert snapshot(ledger.path) == before


def test_verify_passes_on_a_busy_ledger_and_catches_a_hand_edited_row(
    ledger: Ledger, clock: FakeClock
) -> None:
    ids = _busy_ledger(ledger, clock)
    report = ledger.verify()
    assert report.ok and report.differences == [] and report.events == event_count(ledger.path)
    raw = apsw.Connection(ledger.path)
    raw.execute("UPDATE jobs SET result_summary = 'forged' WHERE id = ?", (ids[0],))
    raw.execute("DELETE FROM jobs WHERE id = ?", (ids[1],))
    raw.close()
    report = ledger.verify()
    assert not report.ok
    found = {(d.key, d.column) for d in report.differences}
    assert (ids[0], "result_summary") in found
    assert (ids[1], None) in found
    forged = next(d for d in report.differences if d.column == "result_summary")
    assert (forged.live, forged.rebuilt) == ("forged", "done")
    ledger.replay()
    assert ledger.verify().ok


def test_replay_twice_gives_byte_identical_tables(ledger: Ledger, clock: FakeClock) -> None:
    _busy_ledger(ledger, clock)
    live = table_dump(ledger.path)
    first = ledger.replay()
    after_first = table_dump(ledger.path)
    ledger.replay()
    assert after_first == table_dump(ledger.path) == live
    assert first.events == event_count(ledger.path) and first.jobs == 6 and first.seconds >= 0


def test_replay_uses_only_the_log_not_the_clock(ledger: Ledger, clock: FakeClock) -> None:
    _busy_ledger(ledger, clock)
    live = table_dump(ledger.path)
    clock.advance(10**6)
    ledger.replay()
    assert table_dump(ledger.path) == live


def test_lost_projection_is_rebuilt_on_open(db_path: str, clock: FakeClock) -> None:
    with Ledger(db_path, clock=clock) as ledger:
        _busy_ledger(ledger, clock)
    live = table_dump(db_path)
    raw = apsw.Connection(db_path)
    raw.execute("DROP TABLE jobs")
    raw.close()
    with Ledger(db_path, clock=clock) as reopened:
        assert reopened.verify().ok
    assert table_dump(db_path) == live


def test_versions_are_gapless_and_positions_grow(ledger: Ledger, clock: FakeClock) -> None:
    ids = _busy_ledger(ledger, clock)
    everything = ledger.read_all()
    positions = [e.position for e in everything]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    for job_id in ids:
        versions = [e.version for e in ledger.job_events(job_id)]
        assert versions == list(range(1, len(versions) + 1))
        assert ledger.get_job(job_id).version == versions[-1]  # type: ignore[union-attr]


def test_database_refuses_a_duplicate_job_version(ledger: Ledger) -> None:
    job_id = ledger.create_job(1, CONFIG)
    raw = apsw.Connection(ledger.path)
    with pytest.raises(apsw.ConstraintError):
        raw.execute(
            "INSERT INTO events (job_id, version, type, data, recorded_at) "
            "VALUES (?, 1, 'progress', '{}', 'x')",
            (job_id,),
        )
    raw.close()


def test_every_event_type_has_exactly_one_struct() -> None:
    tags = {cls.__struct_config__.tag for cls in ev.AnyEvent.__args__}  # type: ignore[attr-defined]
    assert tags == {t.value for t in EventType}


def test_default_durability_is_wal_and_synchronous_full(db_path: str) -> None:
    with Ledger(db_path) as ledger:
        assert ledger._backend._conn.execute("PRAGMA journal_mode").get == "wal"
        assert ledger._backend._conn.execute("PRAGMA synchronous").get == 2  # FULL
    with Ledger(db_path, durability="normal") as fast:
        assert fast._backend._conn.execute("PRAGMA synchronous").get == 1  # NORMAL


def test_the_log_is_readable_with_plain_sql(ledger: Ledger) -> None:
    job_id = ledger.create_job(9, {"role": "coder"})
    ledger.log_event(job_id, "tool_call", {"tool": "grep"})
    conn = apsw.Connection(ledger.path, flags=apsw.SQLITE_OPEN_READONLY)
    rows = conn.execute(
        "SELECT type, json_extract(data, '$.chat_id'), json_extract(data, '$.payload.tool') "
        "FROM events ORDER BY position"
    ).fetchall()
    conn.close()
    assert rows == [("created", 9, None), ("tool_call", None, "grep")]


def _insert_chained(
    conn: apsw.Connection, job_id: str, version: int, event_type: str, data: str, at: str
) -> None:
    """An event as an older release would have written it, chained like the ledger's own (so
    only its shape is old, and verify's chain check passes)."""
    from ledger.domain import chain

    rows = conn.execute(
        "SELECT position, job_id, version, type, CAST(data AS BLOB), recorded_at, hash "
        "FROM events ORDER BY position"
    ).fetchall()
    position = len(rows) + 1
    digest = chain.link(
        chain.hash_of(rows),  # type: ignore[arg-type]
        position, job_id, version, event_type, data.encode(), at,
    )  # fmt: skip
    conn.execute(
        "INSERT INTO events (position, job_id, version, type, data, recorded_at, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (position, job_id, version, event_type, data, at, digest.hex()),
    )


def test_old_event_shapes_still_decode(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readable forever: a field added later decodes from old data with its default, and an
    upcaster turns a shape that changed into the current one before decoding."""
    job_id = ledger.create_job(1, {"a": 1})
    conn = apsw.Connection(ledger.path)
    # written before `queue`, `priority`, ... existed: every later field takes its default
    _insert_chained(
        conn, "old-job", 1, "created", '{"type":"created","chat_id":3,"config":{}}',
        "2026-01-01T00:00:00.000000+00:00",
    )  # fmt: skip
    # a legacy flat progress event: {"message": ...} instead of {"payload": {...}}
    _insert_chained(
        conn, job_id, 2, "progress", '{"type":"progress","message":"old"}',
        "2026-01-01T00:00:01.000000+00:00",
    )  # fmt: skip
    conn.close()

    def upcast_progress(raw: dict) -> dict:  # type: ignore[type-arg]
        if "message" in raw:
            return {"type": "progress", "payload": {"message": raw["message"]}}
        return raw

    monkeypatch.setitem(ev._UPCASTERS, "progress", upcast_progress)
    ledger.replay()
    old = ledger.get_job("old-job")
    assert old is not None and (old.queue, old.priority, old.max_attempts) == ("default", 0, 1)
    assert ledger.job_events(job_id)[-1].payload == {"message": "old"}
    assert ledger.verify().ok


def test_threads_sharing_one_ledger_never_share_a_job(ledger: Ledger) -> None:
    import threading

    ledger.create_jobs([{"chat_id": 1, "config": {"n": n}} for n in range(200)])
    claimed: list[str] = []

    def drain(name: str) -> None:
        while (job := ledger.claim(name)) is not None:
            claimed.append(job.id)
            ledger.complete(job.id, "ok", worker_id=name)

    threads = [threading.Thread(target=drain, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == len(set(claimed)) == 200
    assert ledger.verify().ok
