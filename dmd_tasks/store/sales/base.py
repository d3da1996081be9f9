"""What every part of ``SaleRecords`` shares: the sale's item, its key, the conditional move."""

from __future__ import annotations

from typing import Any

from dmd_tasks.domain.entities import Entity, Sale, SaleStatus
from dmd_tasks.store.codec import iso
from dmd_tasks.store.keys import (
    GSI1,
    SALES_WAITING,
    sale_key,
)
from dmd_tasks.store.table import DemandTable

_STATUS = {"#s": "status"}
#: A run started this recently, not yet marked claimed, whose sale is still ``waiting`` is a claim
#: in progress (another beat between its writes), not a re-save; after it, a claimer that died.
CLAIM_GRACE_SECONDS = 30


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


class SaleStore:
    def __init__(self, table: DemandTable) -> None:
        self._table = table

    def _move(
        self,
        sale_id: str,
        *,
        what: str,
        update: str,
        condition: str | None,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> bool:
        """One conditional write of the sale's item; False when its condition did not hold (someone
        else moved first, or the sale is not in the state the move is from)."""
        done = self._table.update(
            sale_key(sale_id), what=what, update=update, condition=condition, values=values, names=names
        )
        return done is not None

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

    def _to_failed(self, sale_id: str, source: SaleStatus, reason: str, now: float) -> bool:
        """``source`` → failed with ``reason``, out of the sale indexes."""
        return self._move(
            sale_id,
            what=f"fail sale {sale_id}",
            update="SET #s = :failed, reason = :r, failedAt = :now REMOVE gsi1pk, gsi1sk, leaseUntil",
            condition="#s = :from",
            names=_STATUS,
            values={
                ":failed": SaleStatus.FAILED.value,
                ":from": source.value,
                ":r": reason[:500],
                ":now": iso(now),
            },
        )
