"""What every part of ``NotificationRecords`` shares: the item's statuses, the lease sentinel, and
the conditional moves (``_update``, ``_move``, ``_move_many``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from dmd_tasks.domain.entities import NotificationStatus
from dmd_tasks.infra.metrics import NOTIFICATION_TRANSITIONS
from dmd_tasks.store.codec import epoch_key, iso
from dmd_tasks.store.keys import (
    notification_key,
    pending_shard,
    scheduled_index,
)
from dmd_tasks.store.table import DemandTable, Update

_STATUS = {"#s": "status"}
#: Every move into ``scheduled`` starts a new round: the bridge's dedupe key, so a replayed record
#: is dropped while a real re-schedule (same attempt count, e.g. a rate-limit wait) is routed.
_NEXT_ROUND = "#rd = if_not_exists(#rd, :zero) + :one"
_ROUND_NAMES = {"#rd": "round"}
_ROUND_VALUES = {":zero": 0, ":one": 1}


class LeaseCheck(Enum):
    """What a move asks of the send lease when it is not given the holder's token (a token: only
    that lease's holder moves it; None: a notification claimed before leases had tokens, moved
    only while it has none)."""

    #: a move outside ``sending``: the lease is not checked
    ANY = "any"


ANY_LEASE = LeaseCheck.ANY
PENDING = NotificationStatus.PENDING.value
SCHEDULED = NotificationStatus.SCHEDULED.value
SENDING = NotificationStatus.SENDING.value
SENT = NotificationStatus.SENT.value
FAILED = NotificationStatus.FAILED.value
UNCONFIRMED = NotificationStatus.UNCONFIRMED.value
UNKNOWN = NotificationStatus.UNKNOWN.value


@dataclass(frozen=True)
class Sent:
    """A send the provider accepted, to be recorded (``mark_sent_many``)."""

    sale_id: str
    fan_id: str
    message_id: str
    at: float
    lease_token: str | None
    traceparent: str | None = None
    parts: int = 1
    encoding: str = "GSM-7"
    #: the provider account that took it (as its cap and circuit name it)
    account: str | None = None
    #: when it was due (its ``sendAfter``), for ``dmd_send_delay_seconds``
    due: float | None = None


@dataclass(frozen=True)
class Back:
    """A send that goes back to ``scheduled``, due at ``not_before`` (``mark_retry_many``)."""

    sale_id: str
    fan_id: str
    attempts: int
    not_before: float
    reason: str
    lease_token: str | None


class NotificationStore:
    """The notifications' table and its pending shards; the moves every part makes."""

    def __init__(self, table: DemandTable, pending_shards: int) -> None:
        self._table = table.for_notifications()
        self._shards = pending_shards

    def shard_of(self, fan_id: str) -> int:
        return pending_shard(fan_id, self._shards)

    def shards(self) -> range:
        return range(self._shards)

    def _reschedule(
        self,
        sale_id: str,
        fan_id: str,
        attempts: int,
        not_before: float,
        reason: str,
        now: float,
        lease_token: str | LeaseCheck | None,
        *,
        pin: str | None = None,
    ) -> bool:
        """sending → scheduled, due at ``not_before``, with a new round, in a request of its own;
        ``pin``: see ``mark_retry``."""
        write = self._reschedule_write(sale_id, fan_id, attempts, not_before, reason, now, lease_token, pin=pin)
        return self._apply(write, f"{sale_id}:{fan_id} {SENDING}->{SCHEDULED}", SENDING, SCHEDULED)

    def _reschedule_write(
        self,
        sale_id: str,
        fan_id: str,
        attempts: int,
        not_before: float,
        reason: str,
        now: float,
        lease_token: str | LeaseCheck | None,
        *,
        expired_by: float | None = None,
        pin: str | None = None,
    ) -> Update:
        """The conditional write of ``_reschedule`` (one request's worth, or one of a batch's);
        ``expired_by``: only if the lease had expired by then (the reconciler's take-back)."""
        values: dict[str, Any] = {
            ":a": attempts,
            ":nb": math.ceil(not_before),
            ":r": reason[:500],
            ":now": iso(now),
            ":gpk": scheduled_index(sale_id, self.shard_of(fan_id)),
            ":gsk": epoch_key(max(now, not_before)),
            **_ROUND_VALUES,
        }
        extra = None
        if expired_by is not None:
            values[":expired"] = int(expired_by)
            extra = "leaseUntil <= :expired"
        pinned = ""
        if pin is not None:
            values[":pin"] = pin
            pinned = ", pinnedProvider = :pin"
        return self._update(
            sale_id,
            fan_id,
            SENDING,
            SCHEDULED,
            f"SET #s = :to, attempts = :a, notBefore = :nb, lastError = :r, scheduledAt = :now, {_NEXT_ROUND}, "
            f"gsi1pk = :gpk, gsi1sk = :gsk{pinned} REMOVE leaseUntil, leaseToken",
            values,
            names=_ROUND_NAMES,
            lease_token=lease_token,
            extra_condition=extra,
        )

    def _update(
        self,
        sale_id: str,
        fan_id: str,
        source: str,
        target: str,
        update: str,
        values: dict[str, Any],
        *,
        names: dict[str, str] | None = None,
        lease_token: str | LeaseCheck | None = ANY_LEASE,
        extra_condition: str | None = None,
    ) -> Update:
        """The conditional write of one move: from ``source`` only, and (``lease_token``) only by
        the holder of that lease."""
        values = {**values, ":from": source}
        if ":to" in update:  # DynamoDB refuses unused expression values
            values[":to"] = target
        condition = "#s = :from"
        if lease_token is None:  # claimed before leases had tokens
            condition += " AND attribute_not_exists(leaseToken)"
        elif isinstance(lease_token, str):
            condition += " AND leaseToken = :tok"
            values[":tok"] = lease_token
        if extra_condition:
            condition += f" AND {extra_condition}"
        return Update(notification_key(sale_id, fan_id), update, condition, values, {**_STATUS, **(names or {})})

    def _move(
        self,
        sale_id: str,
        fan_id: str,
        source: str,
        target: str,
        update: str,
        values: dict[str, Any],
        *,
        names: dict[str, str] | None = None,
        lease_token: str | LeaseCheck | None = ANY_LEASE,
        extra_condition: str | None = None,
    ) -> bool:
        write = self._update(
            sale_id,
            fan_id,
            source,
            target,
            update,
            values,
            names=names,
            lease_token=lease_token,
            extra_condition=extra_condition,
        )
        return self._apply(write, f"{sale_id}:{fan_id} {source}->{target}", source, target)

    def _apply(self, write: Update, what: str, source: str, target: str) -> bool:
        """One conditional move in a request of its own; True if it was applied (and counted)."""
        moved = (
            self._table.update(
                write.key,
                what=what,
                update=write.update,
                condition=write.condition,
                names=write.names,
                values=write.values,
            )
            is not None
        )
        if moved and source != target:
            NOTIFICATION_TRANSITIONS.labels(source, target).inc()
        return moved

    def _move_many(self, writes: list[tuple[str, Update]], source: str, target: str, what: str) -> list[str]:
        """Several moves (fan id, its write), up to 100 to a request: each applied only if its own
        condition holds (``DemandTable.update_many``). Returns the fans moved."""
        applied = self._table.update_many([w for _, w in writes], what=what)
        moved = [fan_id for (fan_id, _), ok in zip(writes, applied, strict=True) if ok]
        if moved and source != target:
            NOTIFICATION_TRANSITIONS.labels(source, target).inc(len(moved))
        return moved
