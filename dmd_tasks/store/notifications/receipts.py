"""Delivery receipts applied: sent → delivered or undelivered, and the message-id index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dmd_tasks.infra.metrics import NOTIFICATION_TRANSITIONS
from dmd_tasks.store.keys import (
    GSI2,
    fan_of,
    message_index,
    notification_key,
    sale_of,
)
from dmd_tasks.store.notifications.base import (
    _STATUS,
    SENDING,
    SENT,
    UNCONFIRMED,
    UNKNOWN,
    NotificationStore,
)
from dmd_tasks.store.table import Update


class Receipts(NotificationStore):
    def find_by_message_id(self, message_id: str) -> tuple[str, str] | None:
        """(sale id, fan id) of the notification the provider gave ``message_id``, if any."""
        response = self._table.query(
            what="find by message id",
            IndexName=GSI2,
            KeyConditionExpression="gsi2pk = :m",
            ExpressionAttributeValues={":m": {"S": message_index(message_id)}},
            Limit=1,
        )
        items = response.get("Items", [])
        if not items:
            return None
        return sale_of(items[0]["pk"]["S"]), fan_of(items[0]["sk"]["S"])

    def record_delivery(
        self, sale_id: str, fan_id: str, message_id: str, status: str, at: str
    ) -> dict[str, Any] | None:
        """sent → delivered | undelivered | failed, for this provider message only; a repeated or late
        receipt changes nothing. Returns the updated item, or None when nothing changed."""
        item = self._table.update(
            notification_key(sale_id, fan_id),
            what=f"{sale_id}:{fan_id} sent->{status}",
            update="SET #s = :to, deliveredAt = :at REMOVE gsi2pk, gsi2sk",
            condition="#s = :from AND providerMessageId = :mid",
            names=_STATUS,
            values={":to": status, ":from": SENT, ":at": at, ":mid": message_id},
            return_new=True,
        )
        if item is None:
            return None
        NOTIFICATION_TRANSITIONS.labels(SENT, status).inc()
        return item

    def record_deliveries(self, receipts: Sequence[tuple[str, str, str, str, str]]) -> list[bool]:
        """``record_delivery`` for many receipts ((sale id, fan id, message id, status, at) each), up
        to 100 to a request, each applied only if its own condition holds. Returns, per receipt,
        whether it moved its notification."""
        writes = [
            Update(
                notification_key(sale_id, fan_id),
                "SET #s = :to, deliveredAt = :at REMOVE gsi2pk, gsi2sk",
                "#s = :from AND providerMessageId = :mid",
                {":to": status, ":from": SENT, ":at": at, ":mid": message_id},
                _STATUS,
            )
            for sale_id, fan_id, message_id, status, at in receipts
        ]
        applied = self._table.update_many(writes, what=f"{len(writes)} receipts")
        for (*_, status, _at), ok in zip(receipts, applied, strict=True):
            if ok:
                NOTIFICATION_TRANSITIONS.labels(SENT, status).inc()
        return applied

    def traceparents(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The sender's trace context stored on each of these notifications (sale id, fan id)."""
        found = self._table.get_items(
            [notification_key(sale_id, fan_id) for sale_id, fan_id in keys], ("pk", "sk", "traceparent")
        )
        return {(sale_of(i["pk"]), fan_of(i["sk"])): str(i["traceparent"]) for i in found if "traceparent" in i}

    def record_unconfirmed_delivery(
        self, sale_id: str, fan_id: str, message_id: str, status: str, at: str
    ) -> dict[str, Any] | None:
        """unconfirmed | unknown | sending → delivered | undelivered | failed: the provider's final
        event for a send whose answer never came (matched by the notification id it carried).
        ``unknown`` is final, but the provider's word, however late, says what happened; from
        ``sending`` only once its call was recorded (a worker killed after the call: its event
        settles it before the lease expires)."""
        for source, extra in ((UNCONFIRMED, ""), (UNKNOWN, ""), (SENDING, " AND attribute_exists(callStartedAt)")):
            item = self._table.update(
                notification_key(sale_id, fan_id),
                what=f"{sale_id}:{fan_id} {source}->{status}",
                update="SET #s = :to, deliveredAt = :at, providerMessageId = :mid "
                "REMOVE gsi1pk, gsi1sk, leaseUntil, leaseToken",
                condition="#s = :from" + extra,
                names=_STATUS,
                values={":to": status, ":from": source, ":at": at, ":mid": message_id},
                return_new=True,
            )
            if item is not None:
                NOTIFICATION_TRANSITIONS.labels(source, status).inc()
                return item
        return None

    def status_of(self, sale_id: str, fan_id: str) -> str | None:
        item = self._table.get(
            notification_key(sale_id, fan_id), what=f"status of {sale_id}:{fan_id}", attributes=["status"]
        )
        return str(item["status"]) if item else None
