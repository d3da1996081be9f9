"""NOTIFICATION items and their status machine (docs/data-model.md).

Every move is an UpdateItem conditional on the current status, so a repeated message
changes nothing the second time; each move that wins is counted
(``dmd_notification_transitions_total``).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from dmd_tasks.domain.entities import Entity, NotificationStatus
from dmd_tasks.domain.ids import notification_id
from dmd_tasks.infra.metrics import NOTIFICATION_TRANSITIONS
from dmd_tasks.store.codec import epoch_key, iso
from dmd_tasks.store.keys import (
    GSI1,
    GSI2,
    MESSAGE_INDEX_SK,
    fan_of,
    message_index,
    notification_key,
    pending_index,
    pending_shard,
    pending_sort,
    phone_claim_key,
    sale_of,
    scheduled_index,
    sending_index,
    unconfirmed_index,
)
from dmd_tasks.store.table import DemandTable, Update

_STATUS = {"#s": "status"}
#: Every move into ``scheduled`` starts a new round: the bridge's dedupe key, so a replayed record
#: is dropped while a real re-schedule (same attempt count, e.g. a rate-limit wait) is routed.
_NEXT_ROUND = "#rd = if_not_exists(#rd, :zero) + :one"
_ROUND_NAMES = {"#rd": "round"}
_ROUND_VALUES = {":zero": 0, ":one": 1}


class _Any:
    """Type of ANY_LEASE."""


#: A move that does not check the send lease (a transition outside ``sending``).
ANY_LEASE = _Any()
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


class NotificationRecords:
    def __init__(self, table: DemandTable, pending_shards: int) -> None:
        self._table = table.for_notifications()
        self._shards = pending_shards

    def shard_of(self, fan_id: str) -> int:
        return pending_shard(fan_id, self._shards)

    def shards(self) -> range:
        return range(self._shards)

    # --- generation ---------------------------------------------------------------------------

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
        return NotificationRecords.final_at_birth(item, FAILED, reason)

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

    # --- scheduling ---------------------------------------------------------------------------

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

    # --- sending ------------------------------------------------------------------------------

    def claim_for_send(self, sale_id: str, fan_id: str, now: float, lease_seconds: int) -> dict[str, Any] | None:
        """scheduled → sending under a lease with a token of its own; only one worker wins. Every
        later write of this send is conditional on the token (a stale worker's write is a no-op).
        Returns the item (with ``leaseToken``), or None."""
        lease = now + lease_seconds
        item = self._table.update(
            notification_key(sale_id, fan_id),
            what=f"claim {sale_id}:{fan_id}",
            # a call recorded by an earlier round (that round's outcome is settled) says nothing of this one
            update="SET #s = :to, leaseUntil = :lease, leaseToken = :tok, sendingAt = :now, "
            "gsi1pk = :gpk, gsi1sk = :gsk REMOVE callStartedAt",
            condition="#s = :from",
            names=_STATUS,
            values={
                ":from": SCHEDULED,
                ":to": SENDING,
                ":lease": int(lease),
                ":tok": uuid.uuid4().hex,
                ":now": iso(now),
                ":gpk": sending_index(sale_id, self.shard_of(fan_id)),
                ":gsk": epoch_key(lease),
            },
            return_new=True,
        )
        if item is None:
            return None
        NOTIFICATION_TRANSITIONS.labels(SCHEDULED, SENDING).inc()
        return item

    def claim_many(self, ids: Sequence[tuple[str, str]], now: float, lease_seconds: int) -> list[dict[str, Any]]:
        """``claim_for_send`` for many notifications ((sale id, fan id) each): up to 100 conditional
        claims to a request, then the claimed items read back (BatchGetItem, 100 to a request).
        Returns the items this worker now holds, each with its own ``leaseToken``."""
        lease = int(now + lease_seconds)
        tokens = [uuid.uuid4().hex for _ in ids]
        writes = [
            Update(
                notification_key(sale_id, fan_id),
                "SET #s = :to, leaseUntil = :lease, leaseToken = :tok, sendingAt = :now, "
                "gsi1pk = :gpk, gsi1sk = :gsk REMOVE callStartedAt",
                "#s = :from",
                {
                    ":from": SCHEDULED,
                    ":to": SENDING,
                    ":lease": lease,
                    ":tok": token,
                    ":now": iso(now),
                    ":gpk": sending_index(sale_id, self.shard_of(fan_id)),
                    ":gsk": epoch_key(lease),
                },
                _STATUS,
            )
            for (sale_id, fan_id), token in zip(ids, tokens, strict=True)
        ]
        applied = self._table.update_many(writes, what=f"claim {len(writes)}")
        mine = {ids[n]: tokens[n] for n, ok in enumerate(applied) if ok}
        if not mine:
            return []
        NOTIFICATION_TRANSITIONS.labels(SCHEDULED, SENDING).inc(len(mine))
        items = self._table.get_items([notification_key(*k) for k in mine], None)
        held = {(sale_of(i["pk"]), fan_of(i["sk"])): i for i in items}
        # read back strongly consistent: the token is ours unless a reconciler took it since
        return [held[k] for k in mine if k in held and held[k].get("leaseToken") == mine[k]]

    def mark_sent(
        self,
        sale_id: str,
        fan_id: str,
        message_id: str,
        now: float,
        lease_token: str | None,
        traceparent: str | None = None,
        parts: int = 1,
        encoding: str = "GSM-7",
    ) -> bool:
        """sending → sent, by the lease holder; keeps the sender's trace context for the receipt and
        the SMS parts and encoding the message took."""
        sent = Sent(sale_id, fan_id, message_id, now, lease_token, traceparent, parts, encoding)
        return bool(self.mark_sent_many([sent]))

    def mark_sent_many(self, sends: Sequence[Sent]) -> list[Sent]:
        """``mark_sent`` for many sends, up to 100 to a request, each fenced by its own lease token.
        Returns the ones written (the others lost their lease, or were settled, meanwhile)."""
        writes = [
            (
                f"{n}",
                self._update(
                    sent.sale_id,
                    sent.fan_id,
                    SENDING,
                    SENT,
                    "SET #s = :to, providerMessageId = :mid, sentAt = :now, gsi2pk = :msg, gsi2sk = :n, "
                    "traceparent = :tp, #parts = :parts, #enc = :enc REMOVE gsi1pk, gsi1sk, leaseUntil, leaseToken",
                    {
                        ":mid": sent.message_id,
                        ":now": iso(sent.at),
                        ":msg": message_index(sent.message_id),
                        ":n": MESSAGE_INDEX_SK,
                        ":tp": sent.traceparent or "-",
                        ":parts": sent.parts,
                        ":enc": sent.encoding,
                    },
                    names={"#parts": "parts", "#enc": "encoding"},  # DynamoDB reserves some plain words
                    lease_token=sent.lease_token,
                ),
            )
            for n, sent in enumerate(sends)
        ]
        written = self._move_many(writes, SENDING, SENT, f"{len(writes)} sent")
        return [sends[int(n)] for n in written]

    def mark_calling(self, sale_id: str, fan_id: str, provider: str, now: float, lease_token: str | None) -> bool:
        """Record, by the lease holder, that the call to ``provider`` (one without idempotency) is
        about to start: from here on the send is never repeated blindly. False: the lease is lost
        (make no call)."""
        return self._move(
            sale_id,
            fan_id,
            SENDING,
            SENDING,
            "SET callStartedAt = :now, #pv = :p",
            {":now": int(now), ":p": provider},
            names={"#pv": "provider"},  # not reserved today; the names keep it safe if it becomes so
            lease_token=lease_token,
        )

    def mark_unconfirmed(
        self,
        sale_id: str,
        fan_id: str,
        until: float,
        reason: str,
        *,
        lease_token: str | _Any | None,
        expired_by: float | None = None,
    ) -> bool:
        """sending → unconfirmed: the call may have sent the SMS and no answer says so. It waits in
        the unconfirmed index until ``until`` for the provider's event; ``expired_by``: only if the
        lease had expired by then (the reconciler's move)."""
        values: dict[str, Any] = {
            ":r": reason[:500],
            ":gpk": unconfirmed_index(sale_id, self.shard_of(fan_id)),
            ":gsk": epoch_key(until),
        }
        extra = None
        if expired_by is not None:
            values[":expired"] = int(expired_by)
            extra = "leaseUntil <= :expired"
        return self._move(
            sale_id,
            fan_id,
            SENDING,
            UNCONFIRMED,
            "SET #s = :to, lastError = :r, gsi1pk = :gpk, gsi1sk = :gsk REMOVE leaseUntil, leaseToken",
            values,
            lease_token=lease_token,
            extra_condition=extra,
        )

    def confirm_sent(self, sale_id: str, fan_id: str, message_id: str, now: float) -> bool:
        """unconfirmed → sent: the provider's answer or an event of its own says the SMS went (its
        final event then moves it on as any sent notification's)."""
        return self._move(
            sale_id,
            fan_id,
            UNCONFIRMED,
            SENT,
            "SET #s = :to, providerMessageId = :mid, sentAt = :now, gsi2pk = :msg, gsi2sk = :n REMOVE gsi1pk, gsi1sk",
            {":mid": message_id, ":now": iso(now), ":msg": message_index(message_id), ":n": MESSAGE_INDEX_SK},
        )

    def mark_unknown(self, sale_id: str, fan_id: str, reason: str, seen_sort: str) -> bool:
        """unconfirmed → unknown (final), if still as the caller saw it in the index."""
        return self._move(
            sale_id,
            fan_id,
            UNCONFIRMED,
            UNKNOWN,
            "SET #s = :to, reason = :r REMOVE gsi1pk, gsi1sk",
            {":r": reason[:500], ":seen": seen_sort},
            extra_condition="gsi1sk = :seen",
        )

    def mark_waiting(
        self, sale_id: str, fan_id: str, send_after: float, reason: str, *, lease_token: str | _Any | None
    ) -> bool:
        """sending → pending until ``send_after`` (the fan's quiet hours came first): the scheduler
        takes it again when that time comes, and checks the window again. No attempt is spent."""
        return self._move(
            sale_id,
            fan_id,
            SENDING,
            PENDING,
            "SET #s = :to, sendAfter = :after, lastError = :r, gsi1pk = :gpk, gsi1sk = :gsk "
            "REMOVE leaseUntil, leaseToken, notBefore",
            {
                ":after": int(send_after),
                ":r": reason[:500],
                ":gpk": pending_index(sale_id, self.shard_of(fan_id)),
                ":gsk": pending_sort(send_after, fan_id),
            },
            lease_token=lease_token,
        )

    def mark_retry(
        self,
        sale_id: str,
        fan_id: str,
        attempts: int,
        not_before: float,
        reason: str,
        *,
        lease_token: str | _Any | None = ANY_LEASE,
        now: float | None = None,
        pin: str | None = None,
    ) -> bool:
        """sending → scheduled after ``not_before`` (the bridge re-sends it then), by the lease
        holder (``lease_token``); ``attempts`` is the count of provider attempts so far. ``pin``:
        from now on it is sent through this provider only (its last call's outcome is unknown)."""
        now = time.time() if now is None else now
        return self._reschedule(sale_id, fan_id, attempts, not_before, reason, now, lease_token, pin=pin)

    def _reschedule(
        self,
        sale_id: str,
        fan_id: str,
        attempts: int,
        not_before: float,
        reason: str,
        now: float,
        lease_token: str | _Any | None,
        *,
        expired_by: float | None = None,
        pin: str | None = None,
    ) -> bool:
        """sending → scheduled, due at ``not_before``, with a new round; ``expired_by``: only if the
        lease had expired by then (the reconciler's take-back); ``pin``: see ``mark_retry``."""
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
        return self._move(
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

    def mark_failed(
        self,
        sale_id: str,
        fan_id: str,
        reason: str,
        source: str,
        attempts: int | None = None,
        *,
        lease_token: str | _Any | None = ANY_LEASE,
    ) -> bool:
        """``source`` → failed with ``reason`` (from ``sending``: by the lease holder)."""
        update = "SET #s = :to, reason = :r REMOVE gsi1pk, gsi1sk, leaseUntil, leaseToken"
        values: dict[str, Any] = {":r": reason[:500]}
        if attempts is not None:
            update = "SET #s = :to, reason = :r, attempts = :a REMOVE gsi1pk, gsi1sk, leaseUntil, leaseToken"
            values[":a"] = attempts
        return self._move(sale_id, fan_id, source, FAILED, update, values, lease_token=lease_token)

    # --- the reconciler's queries -----------------------------------------------------------------

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
        return self._reschedule(sale_id, fan_id, attempts, now, reason, now, lease_token, expired_by=now, pin=pin)

    # --- delivery receipts --------------------------------------------------------------------

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
        lease_token: str | _Any | None = ANY_LEASE,
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
        lease_token: str | _Any | None = ANY_LEASE,
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
        moved = (
            self._table.update(
                write.key,
                what=f"{sale_id}:{fan_id} {source}->{target}",
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
