"""Quiet hours in each fan's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, time

from dmd_tasks.domain.campaigns import SendWindow

WINDOW = SendWindow(start=time(9), end=time(21))


def utc(h: int, m: int = 0) -> datetime:
    return datetime(2026, 11, 25, h, m, tzinfo=UTC)


def test_open_inside_local_hours_closed_outside() -> None:
    assert WINDOW.next_open(utc(15), "UTC") == utc(15)
    # 15:00 UTC is 10:00 in New York (open) and 00:00 in Tokyo (closed until 09:00 local = 00:00 UTC next day)
    assert WINDOW.next_open(utc(15), "America/New_York") == utc(15)
    assert WINDOW.next_open(utc(15), "Asia/Tokyo") == datetime(2026, 11, 26, 0, 0, tzinfo=UTC)


def test_before_opening_waits_for_today_after_closing_waits_for_tomorrow() -> None:
    assert WINDOW.next_open(utc(7), "UTC") == utc(9)
    assert WINDOW.next_open(utc(22), "UTC") == datetime(2026, 11, 26, 9, tzinfo=UTC)


def test_window_crossing_midnight() -> None:
    night = SendWindow(start=time(22), end=time(2))
    assert night.is_open(utc(23)) and night.is_open(utc(1))
    assert not night.is_open(utc(12))
    assert night.next_open(utc(12), "UTC") == utc(22)


def test_equal_start_and_end_is_always_open_and_unknown_zone_is_utc() -> None:
    always = SendWindow(start=time(0), end=time(0))
    assert always.is_open_at(utc(3).timestamp(), "Asia/Tokyo")
    assert WINDOW.next_open(utc(7), "Not/AZone") == utc(9)
    ts = utc(15).timestamp()
    assert WINDOW.next_open_ts(ts, "UTC") == ts
