"""Events read back are not tracked by the garbage collector (`JobEvent` is ``gc=False``): a
read of the whole log builds one per event, and collections walking them cost a quarter of a
100,000-event read. What is read back still equals what was written."""

from __future__ import annotations

import gc
from pathlib import Path

from ledger import Ledger


def test_events_read_back_are_untracked_and_equal_what_was_written(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        job_id = ledger.create_job(7, {"task": "read me back", "nested": {"list": [1, 2.5]}})
        ledger.log_event(job_id, "progress", {"step": 1, "note": "half way"})
        events = ledger.read_all()
    assert [e.type.value for e in events] == ["created", "progress"]
    assert events[1].payload == {"step": 1, "note": "half way"}
    assert events[0].payload["config"] == {"task": "read me back", "nested": {"list": [1, 2.5]}}
    assert not any(gc.is_tracked(e) for e in events)
