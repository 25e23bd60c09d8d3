"""Import trusts nothing: a line replay could not have produced is refused with an error naming
the line, and a refused import writes nothing (and, from the CLI, leaves no new file behind)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger import InvalidArgument, Ledger, LedgerError
from ledger.transfer import MAX_POSITION
from tests.conftest import FakeClock, run_cli, table_dump


@pytest.fixture
def exported(db_path: str, clock: FakeClock) -> list[bytes]:
    """A small busy log as export lines: 3 jobs, claims, progress, a completion, a retry."""
    with Ledger(db_path, clock=clock) as ledger:
        a = ledger.create_job(1, {"role": "coder"}, max_attempts=2)
        ledger.create_job(2, {"role": "reviewer"})
        ledger.create_job(3, {"n": 1})
        clock.advance(1)
        assert ledger.claim("w1") is not None  # a
        ledger.log_event(a, "progress", {"step": 1})
        ledger.fail(a, "boom", worker_id="w1")
        clock.advance(100)
        job = ledger.claim("w2")
        assert job is not None
        ledger.complete(job.id, "done", "success", cost_cents=2.5, worker_id="w2")
        assert ledger.verify().ok
        return list(ledger.export_events())


def _edit(line: bytes, **changes: Any) -> bytes:
    item = json.loads(line)
    item.update(changes)
    return json.dumps(item, separators=(",", ":")).encode()


def _refused(tmp_path: Path, lines: list[Any], line: int, why: str) -> InvalidArgument:
    """Importing ``lines`` into a new ledger is refused naming ``line``; nothing is written."""
    with Ledger(str(tmp_path / "target.db")) as target:
        with pytest.raises(InvalidArgument) as raised:
            target.import_events(lines)
        assert f"line {line}" in str(raised.value)
        assert why in str(raised.value)
        assert target.last_position() == 0 and target.count_jobs() == 0
        assert target.verify().ok
    return raised.value


def _line_of(lines: list[bytes], match: Callable[[dict[str, Any]], bool]) -> int:
    """The 0-based index of the first line whose JSON matches."""
    return next(i for i, line in enumerate(lines) if match(json.loads(line)))


def test_a_good_export_imports_to_identical_tables(
    tmp_path: Path, db_path: str, exported: list[bytes]
) -> None:
    with_newlines = [line + b"\n" for line in exported] + [b"\n"]  # a blank line is no event
    target = str(tmp_path / "copy.db")
    with Ledger(target) as ledger:
        report = ledger.import_events(with_newlines)
        assert report.events == len(exported) and report.jobs == 3
        assert ledger.verify().ok
    assert table_dump(target) == table_dump(db_path)
    assert table_dump(target, "events") == table_dump(db_path, "events")
    text = str(tmp_path / "text.db")
    with Ledger(text) as ledger:
        ledger.import_events([line.decode() for line in exported])  # str lines work too
    assert table_dump(text, "events") == table_dump(db_path, "events")


def test_a_line_missing_from_the_middle_is_a_version_gap(
    tmp_path: Path, exported: list[bytes]
) -> None:
    gone = _line_of(exported, lambda e: e["type"] == "claimed")
    lines = exported[:gone] + exported[gone + 1 :]
    # the positions now skip one: refused at the line after the hole
    _refused(tmp_path, lines, gone + 1, "positions run without gaps")


def test_a_missing_created_line(tmp_path: Path, exported: list[bytes]) -> None:
    lines = exported[1:]
    first_of_job = _line_of(lines, lambda e: e["job_id"] == json.loads(exported[0])["job_id"])
    _refused(tmp_path, lines, first_of_job + 1, "has no created event before it")


def test_a_created_event_that_is_not_first(tmp_path: Path, exported: list[bytes]) -> None:
    job = json.loads(exported[0])["job_id"]
    extra = _edit(exported[0], position=2, version=json.loads(exported[-1])["version"] + 99)
    moved = _edit(extra, job_id=job, version=2)
    lines = [exported[0], moved]
    _refused(tmp_path, lines, 2, "already has a created event")


@pytest.mark.parametrize(
    "at",
    [
        "2026-01-01T12:00:00+00:00",  # no microseconds: not the stored width
        "2026-01-01T13:00:00.000000+01:00",  # the same instant, but not UTC: not rewritten
        "2026-01-01T12:00:00.000000",  # naive
        "2026-01-01T12:00:00.000000Z",
        "2026-02-30T12:00:00.000000+00:00",  # no such day
        "yesterday",
        "",
    ],
)
def test_an_unreadable_timestamp(tmp_path: Path, exported: list[bytes], at: str) -> None:
    lines = [*exported[:2], _edit(exported[2], recorded_at=at), *exported[3:]]
    _refused(tmp_path, lines, 3, "not a time in the ledger's format")


def test_a_partial_last_line(tmp_path: Path, exported: list[bytes]) -> None:
    text = b"".join(line + b"\n" for line in exported)
    cut = text[: len(text) - 20]  # the file was cut short in its last line
    lines = cut.splitlines(keepends=True)
    _refused(tmp_path, lines, len(exported), "cut short")


@pytest.mark.parametrize(
    ("position", "why"),
    [
        (0, "outside 1 to"),
        (-5, "outside 1 to"),
        (MAX_POSITION + 1, "outside 1 to"),
        (2**63, "outside 1 to"),  # past SQLite's INTEGER: refused, no OverflowError
        (2**64 + 1, "outside 1 to"),
    ],
)
def test_positions_out_of_range(
    tmp_path: Path, exported: list[bytes], position: int, why: str
) -> None:
    _refused(tmp_path, [_edit(exported[0], position=position)], 1, why)


def test_positions_that_do_not_grow(tmp_path: Path, exported: list[bytes]) -> None:
    swapped = [exported[1], exported[0], *exported[2:]]
    _refused(tmp_path, swapped, 2, "does not follow")
    repeated = [exported[0], exported[0]]
    _refused(tmp_path, repeated, 2, "does not follow")


def test_the_largest_position_imports_and_appends_go_on(tmp_path: Path) -> None:
    line = json.dumps(
        {
            "position": MAX_POSITION,
            "job_id": "j",
            "version": 1,
            "type": "created",
            "recorded_at": "2026-01-01T12:00:00.000000+00:00",
            "data": {"type": "created", "chat_id": 1, "config": {}},
        }
    )
    with Ledger(str(tmp_path / "far.db")) as ledger:
        ledger.import_events([line])
        ledger.create_job(1, {})
        assert ledger.last_position() == MAX_POSITION + 1
        assert ledger.verify().ok


def test_text_that_is_not_utf8(tmp_path: Path, exported: list[bytes]) -> None:
    bad = exported[0].replace(b'"role":"coder"', b'"role":"c\xffder"')
    _refused(tmp_path, [bad, *exported[1:]], 1, "not UTF-8")
    surrogate = exported[0].decode().replace("coder", "c\ud800der")
    _refused(tmp_path, [surrogate], 1, "not UTF-8")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"type": "progress"}, "data says 'created'"),
        ({"type": "no_such_type"}, "cannot be read back"),
        ({"data": {"type": "created"}}, "cannot be read back"),  # chat_id, config missing
        ({"data": "not an object"}, "cannot be read back"),
        ({"data": {"type": "created", "chat_id": 2**63, "config": {}}}, "64-bit"),
        ({"job_id": ""}, "not a non-empty text"),
        ({"job_id": 7}, "not an exported event"),
        ({"version": 0}, "not a whole number from 1 up"),
        ({"version": 2}, "no created event before it"),
        ({"extra": 1}, "not an exported event"),
    ],
)
def test_a_line_replay_could_not_have_produced(
    tmp_path: Path, exported: list[bytes], change: dict[str, Any], why: str
) -> None:
    _refused(tmp_path, [_edit(exported[0], **change), *exported[1:]], 1, why)


def test_a_missing_envelope_field_and_a_non_line(tmp_path: Path, exported: list[bytes]) -> None:
    item = json.loads(exported[0])
    del item["recorded_at"]
    _refused(tmp_path, [json.dumps(item)], 1, "not an exported event")
    _refused(tmp_path, [exported[0], 42], 2, "expected bytes or str")


def test_an_event_the_projection_cannot_apply_names_its_line(
    tmp_path: Path, exported: list[bytes]
) -> None:
    claimed = _line_of(exported, lambda e: e["type"] == "claimed")
    item = json.loads(exported[claimed])
    item["data"]["lease_expires_at"] = "9999-12-31T23:00:00-05:00"  # past year 9999 in UTC
    lines = [*exported[:claimed], json.dumps(item).encode(), *exported[claimed + 1 :]]
    error = _refused(tmp_path, lines, claimed + 1, "past the last time UTC can hold")
    assert f"line {claimed + 1}" in str(error)  # refused by the log rules, before any replay


# -- the command line: a refused import leaves no new file behind ----------------------------


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_cli_refused_import_leaves_no_new_file(tmp_path: Path, exported: list[bytes]) -> None:
    bad = _write(tmp_path / "bad.jsonl", [*exported[:3], _edit(exported[3], recorded_at="x")])
    target = tmp_path / "new.db"
    result = run_cli("import", str(bad), db=str(target))
    assert result.returncode == 1 and "line 4" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "ledger.db"]
    piped = run_cli("import", "-", db=str(target), input=bad.read_bytes())
    assert piped.returncode == 1 and "line 4" in piped.stderr and not target.exists()
    missing = run_cli("import", str(tmp_path / "nope.jsonl"), db=str(target))
    assert missing.returncode == 1 and "cannot read it" in missing.stderr
    assert not target.exists()


def test_cli_refused_import_keeps_a_file_that_was_there(
    tmp_path: Path, exported: list[bytes]
) -> None:
    bad = _write(tmp_path / "bad.jsonl", [_edit(exported[0], recorded_at="now"), *exported[1:]])
    target = str(tmp_path / "empty.db")
    Ledger(target).close()  # an empty ledger someone made on purpose
    result = run_cli("import", str(bad), db=target)
    assert result.returncode == 1 and "line 1" in result.stderr
    assert Path(target).exists()
    with Ledger(target) as ledger:
        assert ledger.last_position() == 0 and ledger.verify().ok
    good = _write(tmp_path / "good.jsonl", exported)
    assert run_cli("import", str(good), db=target, check=True).returncode == 0
    with Ledger(target) as ledger:
        assert ledger.count_jobs() == 3 and ledger.verify().ok


def test_import_into_a_ledger_with_events_is_a_ledger_error(
    tmp_path: Path, db_path: str, exported: list[bytes]
) -> None:
    with Ledger(db_path) as ledger:
        with pytest.raises(LedgerError, match="new or empty ledger"):
            ledger.import_events(exported)
        assert ledger.verify().ok
