"""``dmd report``'s figures from built notification rows: counts by status and reason, SMS per second,
the time from notifyAt to the last SMS, the cap; the terminal view and the picture (no network)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dmd_tasks.domain.entities import parse_instant
from dmd_tasks.ops.report import (
    FAILED_AT_THE_PROVIDER,
    MAX_REASONS,
    NO_REASON,
    OTHER_REASONS,
    Tally,
    report_of,
)
from dmd_tasks.ops.report_plot import SIZE, PlotsMissing, write_png
from dmd_tasks.ops.report_view import facts_table, outcome_table, sparkline

NOTIFY_AT = "2026-12-24T15:00:00Z"


def sent(at: str, status: str = "delivered", parts: int = 1, **extra: Any) -> dict[str, Any]:
    return {"status": status, "sentAt": at, "parts": parts, **extra}


def rows() -> list[dict[str, Any]]:
    """A small sale: SMS in seconds 3, 4 (none), 5 and 7 after notifyAt, and the other outcomes."""
    return [
        sent("2026-12-24T15:00:03Z", deliveredAt="2026-12-24T15:00:04.250Z"),
        sent("2026-12-24T15:00:03Z", parts=2, deliveredAt="2026-12-24T15:00:09.900+00:00"),
        sent("2026-12-24T15:00:05Z", status="undelivered", deliveredAt="2026-12-24T15:00:06Z"),
        sent("2026-12-24T15:00:05Z", status="failed", deliveredAt="2026-12-24T15:00:06Z"),  # failed at the provider
        sent("2026-12-24T15:00:07Z", status="sent"),  # no receipt yet
        {"status": "failed", "reason": "invalid phone number: too short"},
        {"status": "failed", "reason": "invalid phone number: too short"},
        {"status": "failed", "reason": "fan opted out (STOP) after the notification was generated"},
        {"status": "failed"},
        {"status": "duplicate", "reason": "fan f1 of this sale has the same phone number and is messaged instead"},
        {"status": "duplicate", "reason": "fan f7 of this sale has the same phone number and is messaged instead"},
        {"status": "pending"},
    ]


def report(rows_: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "sale_id": "s1",
        "sale_status": "generated",
        "notify_at": parse_instant(NOTIFY_AT),
        "campaign_rate": 2.0,
        "account_parts": 20.0,
        "headroom": 0.04,
        **kwargs,
    }
    return report_of(Tally().add_all(rows_), **options)


def test_every_notification_is_counted_by_its_status_and_the_final_ones_by_reason() -> None:
    got = report(rows())

    assert got["notifications"] == 12
    assert got["status"] == {
        "pending": 1,
        "scheduled": 0,
        "sending": 0,
        "unconfirmed": 0,
        "sent": 1,
        "delivered": 2,
        "undelivered": 1,
        "failed": 5,
        "duplicate": 2,
        "unknown": 0,
    }
    # the reasons, most frequent first; one a provider's receipt failed is said so; duplicates are
    # one line whichever fan each names
    assert list(got["reasons"]["failed"].items()) == [
        ("invalid phone number: too short", 2),
        (NO_REASON, 1),
        ("fan opted out (STOP) after the notification was generated", 1),
        (FAILED_AT_THE_PROVIDER, 1),
    ]
    assert got["reasons"]["duplicate"] == {"fan … of this sale has the same phone number and is messaged instead": 2}
    assert got["reasons"]["unknown"] == {}


def test_sms_per_second_run_from_the_first_to_the_last_with_the_quiet_seconds_as_zeros() -> None:
    got = report(rows())

    series = got["per_second"]
    assert series["start"] == "2026-12-24T15:00:03Z" and series["seconds_after_notify_at"] == 3
    assert series["sent"] == [2, 0, 2, 0, 1]
    assert series["parts"] == [3, 0, 2, 0, 1]
    sent_ = got["sent"]
    assert (sent_["accepted"], sent_["parts"], sent_["peak_per_second"]) == (5, 6, 2)
    assert sent_["mean_per_second"] == 1.0  # five SMS over five seconds


def test_the_time_from_notify_at_to_the_first_and_last_sms_and_the_last_receipt() -> None:
    got = report(rows())["sent"]

    assert (got["first_at"], got["last_at"]) == ("2026-12-24T15:00:03Z", "2026-12-24T15:00:07Z")
    assert (got["seconds_to_first"], got["seconds_to_last"]) == (3, 7)
    # receipts are the provider's times, any ISO form, counted to the second as sentAt is
    assert (got["last_receipt_at"], got["seconds_to_last_receipt"]) == ("2026-12-24T15:00:09Z", 9)


def test_a_sale_without_a_notify_at_or_without_any_sms() -> None:
    no_sale = report(rows(), notify_at=None, sale_status="missing")
    assert no_sale["notify_at"] is None and no_sale["sent"]["seconds_to_last"] is None
    assert no_sale["per_second"]["sent"] == [2, 0, 2, 0, 1]

    nothing = report([{"status": "failed", "reason": "expired"}])
    assert nothing["sent"]["accepted"] == 0 and nothing["per_second"]["sent"] == []
    assert nothing["sent"]["first_at"] is None and nothing["sent"]["mean_per_second"] is None


def test_the_cap_is_the_campaign_rate_or_the_account_cap_over_the_parts_a_message_took() -> None:
    # a campaign at 2/s under an account of 20 parts/s: the campaign's rate binds
    assert report(rows())["cap"] == {
        "campaign_rate_per_second": 2.0,
        "account_parts_per_second": 20.0,
        "account_headroom": 0.04,
        "parts_per_message": 1.2,
        "messages_per_second": 2.0,
        "set_by": "campaign",
    }
    # a campaign faster than the account: 6 parts for 5 SMS, 20 parts/s is 16.67 SMS/s
    fast = report(rows(), campaign_rate=50.0)["cap"]
    assert (fast["messages_per_second"], fast["set_by"]) == (16.667, "account")
    # no campaign any more: the account's
    assert report(rows(), campaign_rate=None)["cap"]["set_by"] == "account"


def test_past_so_many_distinct_reasons_the_rest_are_counted_together() -> None:
    many = [{"status": "failed", "reason": f"reason {n:02d}"} for n in range(MAX_REASONS + 5)]

    reasons = report(many)["reasons"]["failed"]

    assert len(reasons) == MAX_REASONS + 1 and reasons[OTHER_REASONS] == 5
    assert sum(reasons.values()) == MAX_REASONS + 5


def test_the_terminal_view_shows_the_reasons_under_their_status_and_the_timing() -> None:
    got = report(rows())
    console = Console(width=160, record=True)

    console.print(outcome_table(got), facts_table(got))
    text = console.export_text()

    assert "sale s1 (generated): 12 notifications" in text
    failed_at = text.index("failed")
    assert text.index("invalid phone number: too short", failed_at) > failed_at
    assert "scheduled" not in text  # statuses without notifications are left out
    assert "7 s after notifyAt" in text and "peak 2, mean 1.0" in text
    assert "2/s (campaign ratePerSecond" in text


def test_a_sparkline_keeps_the_busiest_second_of_each_stretch() -> None:
    assert sparkline([0, 4, 8], top=8) == " ▅█"
    assert len(sparkline(list(range(600)), top=10, width=60)) == 60
    assert sparkline([], top=1) == ""


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("notify_at", [parse_instant(NOTIFY_AT), None])
def test_the_picture_is_a_png_of_the_stated_size_with_the_cap_drawn(tmp_path: Path, notify_at: float | None) -> None:
    from matplotlib.image import imread

    out = tmp_path / "sale.png"

    assert write_png(report(rows(), notify_at=notify_at), str(out)) == SIZE
    assert png_size(out) == SIZE == (1000, 450)
    pixels = imread(out)
    red = (abs(pixels[..., 0] - 0.84) < 0.05) & (pixels[..., 1] < 0.25) & (pixels[..., 2] < 0.25)  # tab:red
    assert red.sum() > 300  # the cap's dashed line across the plot


def test_without_matplotlib_the_picture_names_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError

    with pytest.raises(PlotsMissing, match=r"pip install 'dmd\[plots\]'"):
        write_png(report(rows()), str(tmp_path / "sale.png"))
    assert not (tmp_path / "sale.png").exists()
