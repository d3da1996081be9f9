"""``dmd reconcile --repair`` against moto: data an older version left behind (a sale retired while a
notification was still in flight, a ``scheduled`` notification in no index) is given back to the
reconciler, once."""

from __future__ import annotations

import time
import uuid

from dmd_tasks.domain.entities import Sale
from dmd_tasks.ops.repair import repair
from dmd_tasks.services import Services
from dmd_tasks.store.keys import notification_key


def test_repair_reactivates_sales_and_indexes_scheduled_notifications_once(settings, stack) -> None:
    services = Services(settings)
    sale_id = f"rep{uuid.uuid4().hex[:8]}"
    services.sales.put(Sale(id=sale_id, eventId="e1", notifyAt="1972-01-01T00:00:00Z"))  # never active
    old = services.notifications.new_item(
        sale_id=sale_id, event_id="e1", fan_id="f1", phone="+12125550100", tz="UTC", send_after=0, now=0
    )
    legacy = {k: v for k, v in old.items() if k not in ("gsi1pk", "gsi1sk")}
    legacy["status"] = "scheduled"  # as an older version wrote it: in no index
    services.notifications_table.put_items([legacy])

    first = repair(services)

    assert first["sales_reactivated"] >= 1 and first["scheduled_indexed"] >= 1
    assert sale_id in services.sales.active()
    stored = services.notifications_table.get(notification_key(sale_id, "f1"), what="test")
    assert stored is not None and stored["gsi1pk"].startswith(f"SCHEDULED#{sale_id}#")
    # the reconciler now finds it as long overdue
    shard = services.notifications.shard_of("f1")
    assert [i["fanId"] for i in services.notifications.stale_scheduled(sale_id, shard, time.time())] == ["f1"]

    # A second repair changes nothing of it (other tests' data may still be repaired)
    repair(services)
    assert sale_id in services.sales.active()
    assert services.notifications_table.get(notification_key(sale_id, "f1"), what="test") == stored
