"""SALE items: claiming due sales, the generator's lease and checkpoint, the active list.

A sale is ``waiting`` (in gsi1 under ``SALES#waiting`` by notify time), then
``generating`` under a lease (gsi1 ``SALES#generating`` by lease expiry, gsi2
``ACTIVE_SALES``), then ``generated`` (or ``failed`` with a reason), and leaves the active
list once nothing of it is left to schedule or sweep.
"""

from __future__ import annotations

from typing import Any

from dmd_tasks.domain.entities import Entity, Sale, SaleStatus
from dmd_tasks.store.codec import iso, new_lease
from dmd_tasks.store.keys import ACTIVE_SALES, GSI1, GSI2, SALES_GENERATING, SALES_WAITING, sale_key
from dmd_tasks.store.table import DemandTable

_STATUS = {"#s": "status"}


def sale_item(sale: Sale) -> dict[str, Any]:
    item: dict[str, Any] = {
        **sale_key(sale.id),
        "entity": Entity.SALE.value,
        "id": sale.id,
        "eventId": sale.event_id,
        "notifyAt": sale.notify_at,
        "status": sale.status.value,
        "generated": sale.generated,
    }
    if sale.status is SaleStatus.WAITING:
        item.update(gsi1pk=SALES_WAITING, gsi1sk=sale.notify_at)
    return item


class SaleRecords:
    def __init__(self, table: DemandTable) -> None:
        self._table = table

    def put(self, sale: Sale) -> None:
        """Write a sale (the product's side; the demo and the tests use it)."""
        self._table.put(sale_item(sale), what=f"put sale {sale.id}")

    def get(self, sale_id: str) -> dict[str, Any] | None:
        return self._table.get(sale_key(sale_id), what=f"get sale {sale_id}")

    def _index_upto(self, pk: str, upto: str, limit: int = 100) -> list[dict[str, Any]]:
        return self._table.query_items(
            what=f"query {pk}",
            IndexName=GSI1,
            KeyConditionExpression="gsi1pk = :pk AND gsi1sk <= :upto",
            ExpressionAttributeValues={":pk": {"S": pk}, ":upto": {"S": upto}},
            Limit=limit,
        )

    def due(self, now: float) -> list[dict[str, Any]]:
        """Sales whose notify time has come (sparse index: only waiting sales are in it)."""
        return self._index_upto(SALES_WAITING, iso(now))

    def stalled(self, now: float) -> list[dict[str, Any]]:
        """Sales being generated whose generator lease expired (its worker died)."""
        return self._index_upto(SALES_GENERATING, iso(now))

    def claim(self, sale_id: str, now: float, lease_seconds: int) -> bool:
        """waiting → generating, once: the first claimer wins, a repeated tick changes nothing."""
        lease = new_lease(now, lease_seconds)
        return (
            self._table.update(
                sale_key(sale_id),
                what=f"claim sale {sale_id}",
                update="SET #s = :gen, leaseUntil = :lease, gsi1pk = :gpk, gsi1sk = :lease, "
                "gsi2pk = :active, gsi2sk = :id, claimedAt = :now, cleanLease = :lease",
                condition="#s = :waiting",
                names=_STATUS,
                values={
                    ":gen": SaleStatus.GENERATING.value,
                    ":waiting": SaleStatus.WAITING.value,
                    ":lease": lease,
                    ":gpk": SALES_GENERATING,
                    ":active": ACTIVE_SALES,
                    ":id": sale_id,
                    ":now": iso(now),
                },
            )
            is not None
        )

    def take_lease(self, sale_id: str, expected_lease: str | None, now: float, lease_seconds: int) -> str | None:
        """Renew the generator lease if it is still ``expected_lease`` (or expired); returns the new lease."""
        lease = new_lease(now, lease_seconds)
        done = self._table.update(
            sale_key(sale_id),
            what=f"lease sale {sale_id}",
            update="SET leaseUntil = :lease, gsi1sk = :lease",
            condition="#s = :gen AND (leaseUntil = :expected OR leaseUntil <= :now)",
            names=_STATUS,
            values={
                ":gen": SaleStatus.GENERATING.value,
                ":expected": expected_lease or "-",
                ":now": iso(now),
                ":lease": lease,
            },
        )
        return lease if done is not None else None

    def checkpoint(
        self,
        sale_id: str,
        lease: str,
        cursor: str | None,
        written: int,
        now: float,
        lease_seconds: int,
        last: bool = False,
    ) -> str | None:
        """Record the generator's progress under its lease; returns the renewed lease, None if lost.

        ``last``: the run stops here and hands over cleanly. The renewed lease is then recorded
        as ``cleanLease``: while the sale still holds that lease, nobody has written past the
        cursor, and the next run need not look for notifications that already exist.
        """
        renewed = new_lease(now, lease_seconds)
        values: dict[str, Any] = {":gen": SaleStatus.GENERATING.value, ":lease": lease, ":new": renewed, ":n": written}
        names = dict(_STATUS)
        sets = "leaseUntil = :new, gsi1sk = :new" + (", cleanLease = :new" if last else "")
        if cursor is not None:
            sets += ", #c = :cursor"
            values[":cursor"] = cursor
            names["#c"] = "cursor"
        done = self._table.update(
            sale_key(sale_id),
            what=f"checkpoint sale {sale_id}",
            update=f"SET {sets} ADD generated :n",
            condition="#s = :gen AND leaseUntil = :lease",
            names=names,
            values=values,
        )
        return renewed if done is not None else None

    def finish(self, sale_id: str, lease: str, now: float) -> bool:
        """generating → generated, by the lease holder."""
        return (
            self._table.update(
                sale_key(sale_id),
                what=f"finish sale {sale_id}",
                update="SET #s = :done, generatedAt = :now REMOVE gsi1pk, gsi1sk, leaseUntil",
                condition="#s = :gen AND leaseUntil = :lease",
                names=_STATUS,
                values={
                    ":done": SaleStatus.GENERATED.value,
                    ":gen": SaleStatus.GENERATING.value,
                    ":lease": lease,
                    ":now": iso(now),
                },
            )
            is not None
        )

    def fail(self, sale_id: str, reason: str, now: float) -> bool:
        """generating → failed (e.g. its campaign is missing or invalid); leaves the active list."""
        return (
            self._table.update(
                sale_key(sale_id),
                what=f"fail sale {sale_id}",
                update="SET #s = :failed, reason = :r, failedAt = :now "
                "REMOVE gsi1pk, gsi1sk, gsi2pk, gsi2sk, leaseUntil",
                condition="#s = :gen",
                names=_STATUS,
                values={
                    ":failed": SaleStatus.FAILED.value,
                    ":gen": SaleStatus.GENERATING.value,
                    ":r": reason[:500],
                    ":now": iso(now),
                },
            )
            is not None
        )

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

    def retire(self, sale_id: str) -> bool:
        """Drop a generated sale from the active list (nothing left to schedule or sweep)."""
        return (
            self._table.update(
                sale_key(sale_id),
                what=f"retire sale {sale_id}",
                update="REMOVE gsi2pk, gsi2sk",
                condition="#s = :done",
                names=_STATUS,
                values={":done": SaleStatus.GENERATED.value},
            )
            is not None
        )
