"""Contract: the tamper-evident log (issue 18, section 4) through the public API, on every
backend: every event is chained, `Ledger.head` names the last position and its hash, `verify`
recomputes the chain and checks a recorded head, and export carries the hashes."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from ledger import InvalidArgument, Ledger
from tests.contract.conftest import LedgerFactory

GENESIS = hashlib.sha256(b"jobledger event chain v1").digest()


def _link(previous: bytes, line: dict) -> bytes:
    """The documented encoding (ledger/domain/chain.py), written out again independently."""
    data = json.dumps(line["data"], separators=(",", ":")).encode()
    job, tag, at = line["job_id"].encode(), line["type"].encode(), line["recorded_at"].encode()
    header = struct.pack(
        ">qqIIIQ", line["position"], line["version"], len(job), len(tag), len(at), len(data)
    )
    return hashlib.sha256(previous + header + job + tag + at + data).digest()


def _work(ledger: Ledger) -> None:
    ledger.create_job(1, {"task": "a"})
    ledger.create_job(2, {"task": "b", "nested": [1, 2.5, None]})
    job = ledger.claim("w1", lease=60)
    assert job is not None
    ledger.log_event(job.id, "progress", {"step": 1}, worker_id="w1")
    ledger.complete(job.id, "done", "success", 1.0, 2, worker_id="w1")


def test_empty_ledger_head_is_position_zero_and_the_genesis_hash(ledger: Ledger) -> None:
    """Promise: `head()` of an empty ledger is (0, the documented genesis hash)."""
    assert ledger.head() == (0, GENESIS.hex())
    assert ledger.verify().ok


def test_every_event_is_chained_with_the_documented_encoding(ledger: Ledger) -> None:
    """Promise: each exported line carries its hash, which is SHA-256 over the previous hash and
    the event's position, version, job, type, time and data in the documented encoding; the head
    is the last line's position and hash."""
    _work(ledger)
    lines = [json.loads(line) for line in ledger.export_events()]
    previous = GENESIS
    for line in lines:
        previous = _link(previous, line)
        assert line["hash"] == previous.hex(), line["position"]
    assert ledger.head() == (lines[-1]["position"], lines[-1]["hash"])
    assert ledger.head()[0] == ledger.last_position()
    assert ledger.verify().ok


def test_verify_accepts_a_head_the_log_still_extends(ledger: Ledger) -> None:
    """Promise: `verify(expect_head=...)` is ok for a head recorded earlier, as a tuple or as
    the ``POS:HASH`` text, after more events were appended."""
    ledger.create_job(1, {"n": 1})
    recorded = ledger.head()
    _work(ledger)
    assert ledger.head() != recorded
    assert ledger.verify(expect_head=recorded).ok
    assert ledger.verify(expect_head=f"{recorded[0]}:{recorded[1]}").ok
    assert ledger.verify(expect_head=ledger.head()).ok


def test_verify_fails_for_a_head_the_log_does_not_extend(ledger: Ledger) -> None:
    """Promise: a recorded head that is not in the log (another hash at that position, or a
    position past the end: the log was rewritten or truncated) makes the report not ok, naming
    the head."""
    _work(ledger)
    position, digest = ledger.head()
    other = ("0" if digest[0] != "0" else "1") + digest[1:]
    for head, word in (((position, other), "rewritten"), ((position + 5, digest), "truncated")):
        report = ledger.verify(expect_head=head)
        assert not report.ok
        [difference] = report.differences
        assert difference.table == "events" and difference.column == "head"
        assert difference.key == head[0]
        assert word in (difference.problem or "") and str(head[0]) in (difference.problem or "")


@pytest.mark.parametrize(
    "bad", ["", "12", "x:y", "-1:" + "a" * 64, "3:" + "g" * 64, "3:abc", (1,), (True, "a" * 64)]
)
def test_a_malformed_expected_head_is_refused(ledger: Ledger, bad: object) -> None:
    """Promise: an expected head that is not POS:HASH is an `InvalidArgument` naming it."""
    with pytest.raises(InvalidArgument, match="expect_head"):
        ledger.verify(expect_head=bad)  # type: ignore[arg-type]


def test_import_keeps_the_hashes_and_the_head(open_ledger: LedgerFactory) -> None:
    """Promise: an export imported into an empty ledger has the same hashes, so the same head,
    and verifies against the source's head."""
    source = open_ledger()
    _work(source)
    lines = list(source.export_events())
    target = open_ledger()
    target.import_events(lines)
    assert list(target.export_events()) == lines
    assert target.head() == source.head()
    assert target.verify(expect_head=source.head()).ok
    target.create_job(3, {"after": "import"})
    assert target.verify(expect_head=source.head()).ok


def test_import_refuses_a_line_whose_hash_does_not_fit(open_ledger: LedgerFactory) -> None:
    """Promise: a line whose data was changed (its hash kept), or whose hash was changed, is
    refused with an `InvalidArgument` naming the line, and nothing is imported."""
    source = open_ledger()
    _work(source)
    lines = [json.loads(line) for line in source.export_events()]
    edited = [dict(line) for line in lines]
    edited[2]["data"] = {**edited[2]["data"], "worker_id": "mallory"}
    rehashed = [dict(line) for line in lines]
    rehashed[3]["hash"] = "0" * 64
    for damaged, number in ((edited, 3), (rehashed, 4)):
        target = open_ledger()
        text = [json.dumps(line, separators=(",", ":")) for line in damaged]
        with pytest.raises(InvalidArgument, match=f"line {number}") as caught:
            target.import_events(text)
        assert "hash" in str(caught.value)
        assert target.last_position() == 0


def test_import_of_lines_without_hashes_chains_them(open_ledger: LedgerFactory) -> None:
    """Promise: an export from before the chain (no ``hash`` field) still imports; the chain
    covers its events, so the head is the one the source has."""
    source = open_ledger()
    _work(source)
    lines = [json.loads(line) for line in source.export_events()]
    for line in lines:
        del line["hash"]
    target = open_ledger()
    target.import_events([json.dumps(line, separators=(",", ":")) for line in lines])
    assert target.head() == source.head()
    assert target.verify(expect_head=source.head()).ok
