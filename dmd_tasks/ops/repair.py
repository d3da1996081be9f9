"""``dmd reconcile --repair``: a one-off pass for data written before the reconciler existed.

Earlier versions retired a sale while some of its notifications were still in flight, and
kept ``scheduled`` notifications in no index: the reconciler (which only follows the
active list and the indexes) cannot see those. This scans the table once, gives every
in-flight notification it finds what the reconciler needs (its sale back on the active
list, a ``scheduled`` index entry), and leaves the moving to the reconciler. It is safe to
run again; it reads the whole table, so it is an operator's command, never a beat task.
"""

from __future__ import annotations

from collections import Counter

from dmd_tasks.domain.entities import IN_FLIGHT_STATUSES, Entity, NotificationStatus
from dmd_tasks.services import Services


def repair(services: Services) -> dict[str, int]:
    """Scan once; returns how many notifications and sales it looked at and fixed."""
    found: Counter[str] = Counter()
    active = set(services.sales.active())
    reactivated: set[str] = set()
    statuses = sorted(s.value for s in IN_FLIGHT_STATUSES)
    items = services.notifications_table.scan_items(
        what="repair scan",
        FilterExpression="entity = :n AND #s IN (" + ", ".join(f":s{i}" for i in range(len(statuses))) + ")",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={
            ":n": {"S": Entity.NOTIFICATION.value},
            **{f":s{i}": {"S": s} for i, s in enumerate(statuses)},
        },
    )
    for item in items:
        sale_id, fan_id = str(item.get("saleId", "")), str(item.get("fanId", ""))
        if not sale_id or not fan_id:
            continue
        found["in_flight"] += 1
        if item.get("status") == NotificationStatus.SCHEDULED and "gsi1pk" not in item:
            found["scheduled_indexed"] += services.notifications.index_scheduled(sale_id, fan_id)
        if sale_id not in active and sale_id not in reactivated and services.sales.reactivate(sale_id):
            reactivated.add(sale_id)
    found["sales_reactivated"] = len(reactivated)
    return dict(found)
