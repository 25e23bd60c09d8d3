"""The tamper-evident log on SQLite files (issue 18, section 4): edits, deletions, truncations
and insertions made with another tool after dropping the triggers are found by `verify`, at the
first position where the chain breaks; the CLI's ``head`` and ``verify --expect-head``; export
and import with hashes; a release 0.1.0 file (no hashes) opens, verifies, and is chained from
its first append on."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import apsw
import pytest

from ledger import InvalidArgument, Ledger
from ledger.domain import chain
from tests.conftest import run_cli

DATA = Path(__file__).resolve().parent / "data"


def _filled(path: str, jobs: int = 3) -> tuple[int, str]:
    """A ledger with a few jobs through their lives; returns its head."""
    with Ledger(path) as ledger:
        for n in range(jobs):
            ledger.create_job(n, {"n": n})
        for _ in range(jobs - 1):
            job = ledger.claim("w", lease=60)
            assert job is not None
            ledger.log_event(job.id, "progress", {"job": job.id[:4]}, worker_id="w")
            ledger.complete(job.id, "ok", "success", 1.0, 1, worker_id="w")
        assert ledger.verify().ok
        return ledger.head()


def _raw(path: str) -> apsw.Connection:
    """Another tool on the file, with the append-only triggers dropped."""
    conn = apsw.Connection(path)
    conn.execute("DROP TRIGGER IF EXISTS events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
    return conn


def _chain_problems(path: str, **kwargs: Any) -> list[tuple[Any, str, str]]:
    with Ledger(path, readonly=True) as ledger:
        report = ledger.verify(**kwargs)
    problems = [
        (d.key, d.column, d.problem or "")
        for d in report.differences
        if d.table == "events" and d.column in ("hash", "head")
    ]
    assert report.ok is (not report.differences)
    return problems


def test_a_fresh_ledger_stores_a_hash_on_every_event(db_path: str) -> None:
    _filled(db_path)
    conn = apsw.Connection(db_path)
    rows: list[Any] = conn.execute(
        "SELECT position, job_id, version, type, CAST(data AS BLOB), recorded_at, hash "
        "FROM events ORDER BY position"
    ).fetchall()
    assert rows and all(row[6] is not None and len(row[6]) == 64 for row in rows)
    assert chain.hash_of(rows).hex() == rows[-1][6]
    assert conn.execute("PRAGMA user_version").get == 2


def test_an_edit_with_the_triggers_dropped_is_found_at_its_position(db_path: str) -> None:
    _filled(db_path)
    conn = _raw(db_path)
    conn.execute("UPDATE events SET data = replace(data, 'progress', 'progress') WHERE 0")
    conn.execute(
        "UPDATE events SET recorded_at = '2020-01-01T00:00:00.000000+00:00' WHERE position = 5"
    )
    conn.close()
    [(key, column, problem)] = _chain_problems(db_path)
    assert (key, column) == (5, "hash") and "position 5" in problem and "changed" in problem


def test_an_edit_that_the_fold_accepts_still_breaks_the_chain(db_path: str) -> None:
    """A changed payload of an activity event leaves the projection as it was: only the chain
    shows it."""
    _filled(db_path)
    conn = _raw(db_path)
    position = conn.execute("SELECT min(position) FROM events WHERE type = 'progress'").get
    conn.execute(
        "UPDATE events SET data = json_set(data, '$.payload.job', 'evil') WHERE position = ?",
        (position,),
    )
    conn.close()
    with Ledger(db_path, readonly=True) as ledger:
        report = ledger.verify()
    assert not report.ok
    assert [(d.table, d.key, d.column) for d in report.differences] == [
        ("events", position, "hash")
    ]


def test_a_rehashed_edit_breaks_at_the_next_event(db_path: str) -> None:
    """Whoever edits an event and recomputes its own hash still breaks its successor's."""
    _filled(db_path)
    conn = _raw(db_path)
    conn.execute("UPDATE events SET data = replace(data, '\"n\":1', '\"n\":7') WHERE position = 2")
    rows: list[Any] = conn.execute(
        "SELECT position, job_id, version, type, CAST(data AS BLOB), recorded_at, hash "
        "FROM events WHERE position <= 2 ORDER BY position"
    ).fetchall()
    conn.execute("UPDATE events SET hash = ? WHERE position = 2", (chain.hash_of(rows).hex(),))
    conn.close()
    problems = _chain_problems(db_path)
    assert [(key, column) for key, column, _ in problems] == [(3, "hash")]


def test_a_deleted_event_is_found_where_the_gap_is(db_path: str) -> None:
    _filled(db_path)
    conn = _raw(db_path)
    conn.execute("DELETE FROM events WHERE position = 4")
    conn.close()
    problems = _chain_problems(db_path)
    assert problems[0][:2] == (5, "hash") and "missing" in problems[0][2]


def test_a_truncated_log_fails_only_against_a_recorded_head(db_path: str) -> None:
    """Deleting the newest events leaves a chain that holds; the head recorded before says
    it was truncated."""
    head = _filled(db_path)
    conn = _raw(db_path)
    conn.execute("DELETE FROM events WHERE position > ?", (head[0] - 2,))
    conn.close()
    assert _chain_problems(db_path) == []  # the chain itself holds (the checkpoint does not)
    [(key, column, problem)] = _chain_problems(db_path, expect_head=head)
    assert (key, column) == (head[0], "head") and "truncated" in problem


def test_a_rewritten_tail_fails_against_a_recorded_head(db_path: str) -> None:
    """Events deleted and others appended in their place: the chain holds, positions continue,
    but the recorded head's position now hashes differently."""
    head = _filled(db_path)
    conn = _raw(db_path)
    conn.execute("DELETE FROM events WHERE position = ?", (head[0],))
    conn.close()
    with Ledger(db_path) as ledger:
        ledger.replay()  # the projection follows the shortened log
        ledger.create_job(9, {"replaces": "the last event"})
        assert ledger.head()[0] == head[0]
        report = ledger.verify(expect_head=head)
    assert not report.ok
    [difference] = report.differences
    assert difference.column == "head" and "rewritten" in (difference.problem or "")


def test_an_unhashed_event_after_hashed_ones_is_found(db_path: str) -> None:
    _filled(db_path)
    conn = _raw(db_path)
    last = conn.execute("SELECT max(position) FROM events").get
    conn.execute("UPDATE events SET hash = NULL WHERE position = ?", (last,))
    conn.close()
    [(key, column, problem)] = _chain_problems(db_path)
    assert (key, column) == (last, "hash") and "no hash" in problem


def test_cli_head_and_verify_expect_head(db_path: str) -> None:
    head = _filled(db_path)
    printed = run_cli("head", db=db_path, check=True).stdout.strip()
    assert printed == f"{head[0]}:{head[1]}"
    as_json = json.loads(run_cli("head", "--json", db=db_path, check=True).stdout)
    assert as_json == {"position": head[0], "hash": head[1]}
    assert run_cli("verify", "--expect-head", printed, db=db_path).returncode == 0
    conn = _raw(db_path)
    conn.execute("DELETE FROM events WHERE position = ?", (head[0],))
    conn.close()
    refused = run_cli("verify", "--expect-head", printed, db=db_path)
    assert refused.returncode == 1
    assert "truncated" in refused.stdout and "hash chain" in refused.stdout
    bad = run_cli("verify", "--expect-head", "nonsense", db=db_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "POSITION:HASH" in bad.stderr


def test_cli_verify_names_the_position_of_an_edit(db_path: str) -> None:
    _filled(db_path)
    conn = _raw(db_path)
    conn.execute("UPDATE events SET job_id = job_id || 'x' WHERE position = 3")
    conn.close()
    result = run_cli("verify", db=db_path)
    assert result.returncode == 1
    assert "events 3: the stored hash of position 3" in result.stdout


def test_cli_import_refuses_a_tampered_export_naming_the_line(tmp_path: Path) -> None:
    source = str(tmp_path / "source.db")
    _filled(source)
    lines = run_cli("export", db=source, check=True).stdout.splitlines()
    lines[2] = lines[2].replace('"n":2', '"n":5')
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("\n".join(lines) + "\n")
    target = str(tmp_path / "target.db")
    result = run_cli("import", str(damaged), db=target)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "line 3" in result.stderr and "hash" in result.stderr
    assert not Path(target).exists()  # the refused import removed the file it created


def test_a_release_0_1_0_file_is_chained_from_its_first_append(tmp_path: Path) -> None:
    """Old events (no stored hash) are covered from the upgrade on: the first append's hash
    chains over all of them, so an old event changed afterwards breaks the chain there."""
    path = str(tmp_path / "old.db")
    shutil.copy(DATA / "ledger-0.1.0.db", path)
    with Ledger(path) as ledger:
        assert ledger.verify().ok
        old_head = ledger.head()  # computed over the unhashed events
        job_id = ledger.create_job(1, {"after": "upgrade"})
        assert ledger.verify(expect_head=old_head).ok
        assert ledger.head()[0] == old_head[0] + 1
    conn = apsw.Connection(path)
    assert conn.execute("PRAGMA user_version").get == 2
    hashes = conn.execute("SELECT hash FROM events ORDER BY position").fetchall()
    assert all(h is None for (h,) in hashes[:-1]) and hashes[-1][0] is not None
    conn.close()
    conn = _raw(path)
    conn.execute("UPDATE events SET recorded_at = recorded_at WHERE 0")
    conn.execute(
        "UPDATE events SET data = replace(data, 'a', 'b') WHERE position = "
        "(SELECT min(position) FROM events WHERE type = 'progress')"
    )
    conn.close()
    problems = _chain_problems(path)
    assert problems and problems[0][:2] == (old_head[0] + 1, "hash")
    with Ledger(path, readonly=True) as ledger:
        assert ledger.get_job(job_id) is not None


def test_expect_head_refuses_what_is_not_a_head(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgument, match="POSITION:HASH"):
        ledger.verify(expect_head="3")
    assert ledger.verify().ok


def test_the_encoding_is_stable() -> None:
    """A fixed event hashes to a fixed value: the encoding is part of the file format (a change
    here would break every ledger's chain)."""
    digest = chain.link(chain.GENESIS, 1, "job", 1, "created", b'{"type":"created"}', "t")
    assert digest.hex() == "f7d9e100bb83648fe76a12a11f495449795caaa2ff4f39522ba9918112cfa9e8"
    assert chain.GENESIS.hex() == hashlib.sha256(b"jobledger event chain v1").hexdigest()


def test_two_handles_appending_in_turn_keep_one_chain(db_path: str) -> None:
    """Each backend keeps the head its last commit left; the other handle's appends since
    then are noticed at the first insert, so the chain stays one chain."""
    with Ledger(db_path) as first, Ledger(db_path) as second:
        for n in range(4):
            first.create_job(n, {"by": "first"})
            second.create_job(n, {"by": "second"})
            second.create_job(n, {"by": "second again"})
        assert first.head() == second.head()
        assert first.verify().ok and second.verify().ok
        assert first.last_position() == 12


def test_a_release_0_1_0_file_opened_read_only_has_a_head_and_exports(tmp_path: Path) -> None:
    """Read-only, the file is not upgraded (no hash column yet): the chain is computed over
    its events, export writes null hashes, and a later read-write open agrees on the head."""
    path = str(tmp_path / "old.db")
    shutil.copy(DATA / "ledger-0.1.0.db", path)
    with Ledger(path, readonly=True) as ledger:
        head = ledger.head()
        lines = [json.loads(line) for line in ledger.export_events()]
    assert head[0] == len(lines) and all(line["hash"] is None for line in lines)
    with Ledger(path) as ledger:
        assert ledger.head() == head
        assert ledger.verify(expect_head=head).ok


def test_a_deleted_front_is_found(tmp_path: Path) -> None:
    """Events deleted from the front of a log break the chain at the new first event (a log
    imported from an export that began later starts its chain where the import did: the
    contract suite's test_an_export_that_starts_later_imports_at_its_own_positions)."""
    source = str(tmp_path / "source.db")
    with Ledger(source) as ledger:
        ledger.create_job(1, {"first": True})
        second = ledger.create_job(2, {"second": True})
        ledger.log_event(second, "progress", {"n": 1})
    conn = _raw(source)
    conn.execute("DELETE FROM events WHERE position = 1")
    conn.close()
    problems = _chain_problems(source)
    assert problems and problems[0][:2] == (2, "hash") and "missing" in problems[0][2]
