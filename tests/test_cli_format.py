"""The CLI's text helpers: display width for wide text, durations, times with their zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from ledger.cli import format as fmt


def test_width_counts_terminal_columns() -> None:
    assert fmt.width("abc") == 3
    assert fmt.width("漢字") == 4 and fmt.width("\uff21\uff22") == 4  # wide and fullwidth
    assert fmt.width("e\u0301") == 1  # a combining accent takes no column


def test_table_aligns_wide_text() -> None:
    lines = fmt.table(("ROLE", "N"), [("研究者", "1"), ("coder", "2")]).splitlines()
    assert [fmt.width(line[: line.rindex(" ") + 1]) for line in lines] == [8, 8, 8]


def test_clip_cuts_by_columns() -> None:
    assert fmt.clip("漢字漢字漢字", 7) == "漢字漢…"
    assert fmt.width(fmt.clip("漢字漢字漢字", 7)) == 7
    assert fmt.clip("short", 7) == "short" and fmt.clip("a\nb", 7) == "a b"


def test_durations_show_tenths_under_a_minute() -> None:
    assert fmt.duration(4.26) == "4.2s"
    assert fmt.duration(0) == "0.0s" and fmt.duration(-3) == "0.0s"
    assert fmt.duration(59.96) == "59.9s"  # rounded down: not yet a minute
    assert (fmt.duration(60), fmt.duration(7200), fmt.duration(3 * 86400)) == ("1m", "2h", "3d")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert fmt.age(now, now - timedelta(seconds=1.5)) == "1.5s" and fmt.age(now, None) == "-"


def test_times_show_their_zone() -> None:
    assert fmt.timestamp(datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)) == "2026-01-01 12:00:00Z"
    plus_two = datetime(2026, 1, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert fmt.timestamp(plus_two) == "2026-01-01 12:00:00Z"
    assert fmt.timestamp(datetime(2026, 1, 1)).endswith("(no zone)")
