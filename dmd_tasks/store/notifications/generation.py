"""A sale's notifications written, and one SMS per phone per sale (the phone claims)."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from dmd_tasks.domain.entities import Entity
from dmd_tasks.domain.ids import notification_id
from dmd_tasks.store.codec import iso
from dmd_tasks.store.keys import (
    fan_of,
    notification_key,
    pending_index,
    pending_sort,
    phone_claim_key,
)
from dmd_tasks.store.notifications.base import (
    FAILED,
    PENDING,
    NotificationStore,
)


class Generation(NotificationStore):
    def new_item(
        self,
        *,
        sale_id: str,
        event_id: str,
        fan_id: str,
        phone: str,
        tz: str,
        send_after: float,
        now: float,
        expires_at: float | None = None,
    ) -> dict[str, Any]:
        """A ``pending`` notification, in the pending index under its send-after time; not sent
        after ``expires_at`` (its campaign's validity), if given."""
        item = {
            **notification_key(sale_id, fan_id),
            "entity": Entity.NOTIFICATION.value,
            "id": notification_id(sale_id, fan_id),
            "saleId": sale_id,
            "eventId": event_id,
            "fanId": fan_id,
            "phone": phone,
            "timezone": tz,
            "status": PENDING,
            "attempts": 0,
            "createdAt": iso(now),
            "sendAfter": int(send_after),
            "gsi1pk": pending_index(sale_id, self.shard_of(fan_id)),
            "gsi1sk": pending_sort(send_after, fan_id),
        }
        if expires_at is not None:
            item["expiresAt"] = int(expires_at)
        return item

    @staticmethod
    def failed_at_birth(item: dict[str, Any], reason: str) -> dict[str, Any]:
        """``item`` created ``failed`` with ``reason`` instead of ``pending`` (out of every index)."""
        return Generation.final_at_birth(item, FAILED, reason)

    @staticmethod
    def final_at_birth(item: dict[str, Any], status: str, reason: str, **extra: Any) -> dict[str, Any]:
        """``item`` created in the final ``status`` with ``reason`` instead of ``pending`` (out of every index)."""
        final = {k: v for k, v in item.items() if k not in ("gsi1pk", "gsi1sk")}
        final.update(status=status, reason=reason, **extra)
        return final

    # --- one SMS per phone per sale -------------------------------------------------------------

    @staticmethod
    def phone_claim_item(sale_id: str, phone: str, fan_id: str) -> dict[str, Any]:
        """The record that ``phone`` (normalized) is messaged, in this sale, for ``fan_id`` only."""
        return {
            **phone_claim_key(sale_id, phone),
            "entity": Entity.PHONE_CLAIM.value,
            "saleId": sale_id,
            "fanId": fan_id,
        }

    def phone_owners(self, sale_id: str, phones: list[str], pool: Executor | None = None) -> dict[str, str]:
        """The fan each of these numbers was already given to in this sale (BatchGetItem)."""
        keys = {phone_claim_key(sale_id, p)["pk"]: p for p in set(phones)}
        found = self._table.get_items([phone_claim_key(sale_id, p) for p in keys.values()], ("pk", "fanId"), pool)
        return {keys[i["pk"]]: str(i["fanId"]) for i in found if i.get("pk") in keys}

    def existing_fans(self, sale_id: str, fan_ids: list[str], pool: Executor | None = None) -> set[str]:
        """Which of these fans already have a notification (BatchGetItem, 100 keys a call)."""
        keys = [notification_key(sale_id, f) for f in fan_ids]
        return {fan_of(k["sk"]) for k in self._table.existing_keys(keys, pool)}
