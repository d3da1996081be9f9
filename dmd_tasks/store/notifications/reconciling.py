"""What the reconciler looks for and the moves it makes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dmd_tasks.store.codec import epoch_key
from dmd_tasks.store.keys import (
    GSI1,
    pending_index,
    scheduled_index,
    sending_index,
    unconfirmed_index,
)
from dmd_tasks.store.notifications.base import (
    SCHEDULED,
    SENDING,
    NotificationStore,
)


@dataclass(frozen=True)
class TakeBack:
    """One expired ``sending`` lease the reconciler takes back (``Reconciling.take_back_many``)."""

    fan_id: str
    lease_token: str | None
    attempts: int
    #: the provider its call had started at: sent again there only
    pin: str | None = None


class Reconciling(NotificationStore):
    def _due_in(self, index_pk: str, before: float, limit: int) -> list[dict[str, Any]]:
        return self._table.query_items(
            what=f"due in {index_pk}",
            IndexName=GSI1,
            KeyConditionExpression="gsi1pk = :pk AND gsi1sk < :before",
            ExpressionAttributeValues={":pk": {"S": index_pk}, ":before": {"S": epoch_key(before)}},
            Limit=limit,
        )

    def expired_leases(self, sale_id: str, shard: int, now: float, limit: int = 100) -> list[dict[str, Any]]:
        """Notifications of one shard still ``sending`` after their lease expired."""
        return self._due_in(sending_index(sale_id, shard), now, limit)

    def stale_scheduled(self, sale_id: str, shard: int, before: float, limit: int = 100) -> list[dict[str, Any]]:
        """Notifications of one shard ``scheduled`` and due before ``before`` but never claimed."""
        return self._due_in(scheduled_index(sale_id, shard), before, limit)

    def unconfirmed_due(self, sale_id: str, shard: int, now: float, limit: int = 100) -> list[dict[str, Any]]:
        """Notifications of one shard ``unconfirmed`` whose wait for the provider's event is over."""
        return self._due_in(unconfirmed_index(sale_id, shard), now, limit)

    def stale_pending(self, sale_id: str, shard: int, before: float, limit: int = 100) -> list[dict[str, Any]]:
        """Notifications of one shard still ``pending`` although due before ``before``."""
        return self._due_in(pending_index(sale_id, shard), before, limit)

    def republish_mark(self, sale_id: str, fan_id: str, seen_sort: str, next_check: float, times: int) -> bool:
        """Record that a stale ``scheduled`` notification is being published again, and when to look
        next; conditional on the index entry the caller saw, so two reconcilers publish it once."""
        return self._move(
            sale_id,
            fan_id,
            SCHEDULED,
            SCHEDULED,
            "SET republished = :n, gsi1sk = :next",
            {":n": times, ":next": epoch_key(next_check), ":seen": seen_sort},
            extra_condition="gsi1sk = :seen",
        )

    def index_scheduled(self, sale_id: str, fan_id: str) -> bool:
        """Give a ``scheduled`` notification written before ``scheduled`` was indexed its index entry,
        due long ago, so the reconciler's next pass looks at it (an operator's repair)."""
        return self._move(
            sale_id,
            fan_id,
            SCHEDULED,
            SCHEDULED,
            "SET gsi1pk = :gpk, gsi1sk = :gsk",
            {":gpk": scheduled_index(sale_id, self.shard_of(fan_id)), ":gsk": epoch_key(0)},
            extra_condition="attribute_not_exists(gsi1pk)",
        )

    def take_back(
        self,
        sale_id: str,
        fan_id: str,
        lease_token: str | None,
        attempts: int,
        now: float,
        reason: str,
        pin: str | None = None,
    ) -> bool:
        """An expired ``sending`` lease back to ``scheduled`` (due now), if nobody renewed or used it;
        ``pin``: sent again through that provider only (its call had started there)."""
        return bool(self.take_back_many(sale_id, [TakeBack(fan_id, lease_token, attempts, pin)], now, reason))

    def take_back_many(self, sale_id: str, backs: Sequence[TakeBack], now: float, reason: str) -> list[str]:
        """``take_back`` for many, up to 100 to a request, each on its own condition (its lease
        token, expired by ``now``). Returns the fans taken back."""
        writes = [
            (
                b.fan_id,
                self._reschedule_write(
                    sale_id, b.fan_id, b.attempts, now, reason, now, b.lease_token, expired_by=now, pin=b.pin
                ),
            )
            for b in backs
        ]
        return self._move_many(writes, SENDING, SCHEDULED, f"{len(writes)} of {sale_id} taken back")
