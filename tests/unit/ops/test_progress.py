"""One sale's progress (``dmd status``, the demo): notifications counted by status, on moto.

The tests write to a demand table of their own: notifications written to the session's table
would reach its stream, and a bridge running later in the session would act on them.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator

import pytest
from rich.console import Console

from dmd_tasks.domain.entities import Sale
from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import Settings
from dmd_tasks.ops.progress import STATUSES, count_by_status, sale_progress, status_table
from dmd_tasks.ops.provision import ensure_demand_table
from dmd_tasks.store.keys import NOTIFICATION_PREFIX, sale_partition
from dmd_tasks.store.notifications import NotificationRecords
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable


@pytest.fixture(scope="module")
def own(settings, stack) -> Iterator[Settings]:
    mine = settings.model_copy(update={"table_name": f"test-progress-{uuid.uuid4().hex[:8]}"})
    ensure_demand_table(mine)
    yield mine
    aws.client("dynamodb", mine).delete_table(TableName=mine.table_name)


def new_sale_id() -> str:
    return f"sale{uuid.uuid4().hex[:10]}"


def seed(settings: Settings, sale_id: str, statuses: dict[str, int], padding: int = 0) -> None:
    """``statuses[s]`` notifications of the sale in status ``s`` (each ``padding`` bytes larger)."""
    table = DemandTable(settings).for_notifications()
    records = NotificationRecords(table, settings.pending_shards)
    now = time.time()
    items = []
    for status, count in statuses.items():
        for n in range(count):
            new = records.new_item(
                sale_id=sale_id,
                event_id="ev1",
                fan_id=f"{status}{n}",
                phone="+15550001111",
                tz="UTC",
                send_after=now,
                now=now,
            )
            items.append({**new, "status": status, **({"padding": "x" * padding} if padding else {})})
    table.put_items(items)


def test_notifications_are_counted_by_status_and_only_the_sales_own(own: Settings) -> None:
    # Given a sale with notifications in four statuses, its sale item, and another sale's notifications
    sale_id, other = new_sale_id(), new_sale_id()
    seed(own, sale_id, {"pending": 3, "sent": 2, "delivered": 4, "failed": 1})
    SaleRecords(DemandTable(own)).put(Sale(id=sale_id, eventId="ev1", notifyAt="2026-11-25T10:00:00Z"))
    seed(own, other, {"pending": 5})

    counts = count_by_status(DemandTable(own), sale_id)

    assert counts == {"pending": 3, "sent": 2, "delivered": 4, "failed": 1}


def test_a_sale_whose_notifications_take_several_query_pages_is_counted_in_full(own: Settings) -> None:
    # Given notifications large enough that a Query returns them in more than one page (1 MB each)
    sale_id = new_sale_id()
    seed(own, sale_id, {"sent": 8, "delivered": 7}, padding=150_000)
    first_page = (
        DemandTable(own)
        .for_notifications()
        .query(
            what="first page",
            KeyConditionExpression="pk = :pk AND begins_with(sk, :n)",
            ExpressionAttributeValues={":pk": {"S": sale_partition(sale_id)}, ":n": {"S": NOTIFICATION_PREFIX}},
        )
    )
    assert "LastEvaluatedKey" in first_page

    assert count_by_status(DemandTable(own), sale_id) == {"sent": 8, "delivered": 7}


def test_sale_progress_reports_every_status_with_zeros_and_the_sales_status(own: Settings) -> None:
    sale_id = new_sale_id()
    SaleRecords(DemandTable(own)).put(Sale(id=sale_id, eventId="ev1", notifyAt="2026-11-25T10:00:00Z"))
    seed(own, sale_id, {"scheduled": 2, "undelivered": 1})

    progress = sale_progress(own, sale_id)

    assert progress == {
        "sale_status": "waiting",
        "status": {s: {"scheduled": 2, "undelivered": 1}.get(s, 0) for s in STATUSES},
        "notifications": 3,
    }
    assert list(progress["status"]) == [
        "pending",
        "scheduled",
        "sending",
        "unconfirmed",
        "sent",
        "delivered",
        "undelivered",
        "failed",
        "duplicate",
        "unknown",
    ]


def test_a_sale_that_does_not_exist_is_missing_with_nothing_counted(own: Settings) -> None:
    progress = sale_progress(own, new_sale_id())

    assert progress == {"sale_status": "missing", "status": dict.fromkeys(STATUSES, 0), "notifications": 0}


def rendered_rows(progress: dict, title: str) -> tuple[str, dict[str, str]]:
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(status_table(progress, title))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return text, rows


def test_the_status_table_has_a_row_per_status_and_the_total(own: Settings) -> None:
    sale_id = new_sale_id()
    seed(own, sale_id, {"pending": 1, "sent": 3, "delivered": 2})
    progress = sale_progress(own, sale_id)

    text, rows = rendered_rows(progress, f"sale {sale_id} (missing)")

    assert f"sale {sale_id} (missing)" in text
    assert any("status" in line and "notifications" in line for line in text.splitlines())
    assert rows == {
        "pending": "1",
        "scheduled": "0",
        "sending": "0",
        "unconfirmed": "0",
        "sent": "3",
        "delivered": "2",
        "undelivered": "0",
        "failed": "0",
        "duplicate": "0",
        "unknown": "0",
        "total": "6",
    }
