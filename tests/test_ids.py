"""Job ids: random version-4 UUIDs in their usual text form (made without a UUID object)."""

from __future__ import annotations

import uuid

from ledger import Ledger
from ledger.service import new_job_id


def test_a_new_job_id_is_a_version_4_uuid_in_canonical_text() -> None:
    ids = [new_job_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower-case hex, dashes where str(uuid) puts them


def test_created_jobs_get_such_ids(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Ledger(tmp_path / "ledger.db") as ledger:
        job_id = ledger.create_job(1, {"a": 1})
        assert uuid.UUID(job_id).version == 4
        assert ledger.get_job(job_id) is not None


def test_ids_drawn_together_are_distinct_version_4_uuids() -> None:
    """`new_job_ids` reads the random bytes of a whole batch at once: every id still gets its
    own 16 bytes, with the version and variant bits set."""
    from ledger.service import new_job_ids

    ids = new_job_ids(500)
    assert len(ids) == len(set(ids)) == 500
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
    assert new_job_ids(0) == []


def test_a_batch_of_creates_gets_distinct_ids(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Ledger(tmp_path / "ledger.db") as ledger:
        ids = ledger.create_jobs([{"chat_id": 1, "config": {"n": n}} for n in range(50)])
        assert len(set(ids)) == 50
        assert [ledger.get_job(i).config for i in ids] == [{"n": n} for n in range(50)]  # type: ignore[union-attr]
        assert ledger.verify().ok
