"""The reconciler's side: the active list, and a sale retired from it once nothing is in flight."""

from __future__ import annotations

import time

from dmd_tasks.domain.entities import SaleStatus
from dmd_tasks.store.codec import iso
from dmd_tasks.store.keys import (
    ACTIVE_SALES,
    GSI2,
)
from dmd_tasks.store.sales.base import _STATUS, SaleStore


class Retiring(SaleStore):
    def active(self) -> list[str]:
        """Sales being generated or with notifications still waiting to be scheduled or sent."""
        out: list[str] = []
        for page in self._table.query_pages(
            what="active sales",
            IndexName=GSI2,
            KeyConditionExpression="gsi2pk = :a",
            ExpressionAttributeValues={":a": {"S": ACTIVE_SALES}},
        ):
            out.extend(i["gsi2sk"]["S"] for i in page.get("Items", []))
        return out

    def note_quiet(self, sale_id: str, now: float) -> bool:
        """The reconciler found nothing of an ended sale in flight: remember when (first look)."""
        return self._move(
            sale_id,
            what=f"sale {sale_id} quiet",
            update="SET quietSince = :now",
            condition="#s IN (:done, :failed) AND attribute_exists(gsi2pk)",
            names=_STATUS,
            values={
                ":now": int(now),
                ":done": SaleStatus.GENERATED.value,
                ":failed": SaleStatus.FAILED.value,
            },
        )

    def clear_quiet(self, sale_id: str) -> None:
        """Something of the sale is in flight again: the next quiet look starts over."""
        self._move(
            sale_id,
            what=f"sale {sale_id} busy",
            update="REMOVE quietSince",
            condition="attribute_exists(quietSince)",
            values={},
        )

    def retire(self, sale_id: str, quiet_since: int) -> bool:
        """Drop an ended sale from the active list: the reconciler found nothing of it in flight at
        two looks (``quiet_since`` and now), so no index lag or move between indexes hid one."""
        return self._move(
            sale_id,
            what=f"retire sale {sale_id}",
            update="SET retiredAt = :now REMOVE gsi2pk, gsi2sk, quietSince",
            condition="#s IN (:done, :failed) AND quietSince = :q",
            names=_STATUS,
            values={
                ":done": SaleStatus.GENERATED.value,
                ":failed": SaleStatus.FAILED.value,
                ":q": quiet_since,
                ":now": iso(time.time()),
            },
        )

    def reactivate(self, sale_id: str) -> bool:
        """Put a sale back on the active list (an operator's repair: it was retired while some of
        its notifications were still in flight)."""
        return self._move(
            sale_id,
            what=f"reactivate sale {sale_id}",
            update="SET gsi2pk = :active, gsi2sk = :id REMOVE quietSince",
            condition="attribute_exists(pk) AND attribute_not_exists(gsi2pk)",
            values={":active": ACTIVE_SALES, ":id": sale_id},
        )
