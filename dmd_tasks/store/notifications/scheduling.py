"""pending → scheduled: the scheduler's queries and moves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dmd_tasks.store.codec import epoch_key, iso
from dmd_tasks.store.keys import (
    GSI1,
    pending_index,
    pending_sort,
    scheduled_index,
    sending_index,
    unconfirmed_index,
)
from dmd_tasks.store.notifications.base import (
    _NEXT_ROUND,
    _ROUND_NAMES,
    _ROUND_VALUES,
    PENDING,
    SCHEDULED,
    NotificationStore,
)


class Scheduling(NotificationStore):
    def due_pending(self, sale_id: str, shard: int, now: float, limit: int) -> list[dict[str, Any]]:
        """Pending notifications of one shard whose send-after time has come, oldest first: the
        attributes the scheduler decides on (fan, send time, expiry, time zone), not the whole item."""
        if limit <= 0:
            return []
        return self._table.query_items(
            what=f"pending of {sale_id}",
            IndexName=GSI1,
            KeyConditionExpression="gsi1pk = :pk AND gsi1sk < :upto",
            ExpressionAttributeValues={":pk": {"S": pending_index(sale_id, shard)}, ":upto": {"S": epoch_key(now + 1)}},
            ProjectionExpression="fanId, sendAfter, expiresAt, #tz",
            ExpressionAttributeNames={"#tz": "timezone"},
            Limit=limit,
        )

    def _any_in(self, index_pk: str) -> bool:
        response = self._table.query(
            what=f"any in {index_pk}",
            IndexName=GSI1,
            KeyConditionExpression="gsi1pk = :pk",
            ExpressionAttributeValues={":pk": {"S": index_pk}},
            Limit=1,
            Select="COUNT",
        )
        return bool(response.get("Count"))

    def any_in_flight(self, sale_id: str) -> bool:
        """Whether any notification of the sale is still pending, scheduled, being sent or
        unconfirmed (each of those states keeps the notification in one of the sale's index
        partitions)."""
        return any(
            self._any_in(index(sale_id, shard))
            for shard in self.shards()
            for index in (pending_index, scheduled_index, sending_index, unconfirmed_index)
        )

    def schedule(self, sale_id: str, fan_id: str, now: float) -> bool:
        """pending → scheduled (whoever moves it publishes its send task: ``schedule_many``)."""
        return bool(self.schedule_many(sale_id, [fan_id], now))

    def schedule_many(self, sale_id: str, fan_ids: Sequence[str], now: float) -> list[str]:
        """pending → scheduled for each of ``fan_ids`` still pending, up to 100 to a request;
        returns the fans moved. The caller publishes their send tasks (a notification moved but
        never published is the reconciler's: ``stale_scheduled``)."""
        writes = [
            (
                fan_id,
                self._update(
                    sale_id,
                    fan_id,
                    PENDING,
                    SCHEDULED,
                    f"SET #s = :to, scheduledAt = :now, {_NEXT_ROUND}, gsi1pk = :gpk, gsi1sk = :gsk",
                    {
                        ":now": iso(now),
                        ":gpk": scheduled_index(sale_id, self.shard_of(fan_id)),
                        ":gsk": epoch_key(now),
                        **_ROUND_VALUES,
                    },
                    names=_ROUND_NAMES,
                ),
            )
            for fan_id in fan_ids
        ]
        return self._move_many(writes, PENDING, SCHEDULED, f"schedule {len(writes)} of {sale_id}")

    def defer(self, sale_id: str, fan_id: str, send_after: float) -> bool:
        """Keep pending but wait for the fan's send window to open."""
        return self._move(
            sale_id,
            fan_id,
            PENDING,
            PENDING,
            "SET sendAfter = :after, gsi1sk = :sk",
            {":after": int(send_after), ":sk": pending_sort(send_after, fan_id)},
        )
