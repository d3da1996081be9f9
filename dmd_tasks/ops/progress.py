"""One sale's progress: its notifications counted by status (``dmd status``, the demo)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from dmd_tasks.domain.entities import TERMINAL_STATUSES, NotificationStatus
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.keys import NOTIFICATION_PREFIX, sale_partition
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable

STATUSES = [s.value for s in NotificationStatus]
TERMINAL = {s.value for s in TERMINAL_STATUSES}


def count_by_status(table: DemandTable, sale_id: str) -> dict[str, int]:
    """Every notification of the sale, counted by status (a Query over the sale's partition)."""
    counts: dict[str, int] = {}
    for page in table.for_notifications().query_pages(
        what=f"count notifications of {sale_id}",
        KeyConditionExpression="pk = :pk AND begins_with(sk, :n)",
        ProjectionExpression="#s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":pk": {"S": sale_partition(sale_id)}, ":n": {"S": NOTIFICATION_PREFIX}},
    ):
        for item in page.get("Items", []):
            status = item["status"]["S"]
            counts[status] = counts.get(status, 0) + 1
    return counts


def sale_progress(settings: Settings, sale_id: str) -> dict[str, Any]:
    """The sale's status and its notifications by status; ``sale_status`` is "missing" for no sale."""
    table = DemandTable(settings)
    counts = count_by_status(table, sale_id)
    sale = SaleRecords(table).get(sale_id) or {}
    return {
        "sale_status": sale.get("status", "missing"),
        "status": {s: counts.get(s, 0) for s in STATUSES},
        "notifications": sum(counts.values()),
    }


def status_table(progress: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("status")
    table.add_column("notifications", justify="right")
    for status in STATUSES:
        table.add_row(status, str(progress["status"][status]))
    table.add_row("[bold]total", f"[bold]{progress['notifications']}")
    return table
