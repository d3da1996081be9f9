"""scheduled → sending → sent (or back, or failed): the send path's moves, fenced by the send lease."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from dmd_tasks.infra.metrics import NOTIFICATION_TRANSITIONS, SEND_DELAY, SMS_PARTS_SENT
from dmd_tasks.store.codec import epoch_key, iso
from dmd_tasks.store.keys import (
    MESSAGE_INDEX_SK,
    fan_of,
    message_index,
    notification_key,
    pending_index,
    pending_sort,
    sale_of,
    sending_index,
    unconfirmed_index,
)
from dmd_tasks.store.notifications.base import (
    _STATUS,
    ANY_LEASE,
    FAILED,
    PENDING,
    SCHEDULED,
    SENDING,
    SENT,
    UNCONFIRMED,
    UNKNOWN,
    Back,
    LeaseCheck,
    NotificationStore,
    Sent,
)
from dmd_tasks.store.table import Update

#: What a send reads of the notification it claimed (``send_step``, ``send_check``,
#: ``send_outcomes``): the claim reads back these only, not the whole item (its indexes, history,
#: times), which halves what botocore parses per claim.
CLAIMED_FIELDS = (
    "pk",
    "sk",
    "status",
    "phone",
    "eventId",
    "timezone",
    "expiresAt",
    "sendAfter",
    "attempts",
    "pinnedProvider",
    "leaseToken",
    "leaseUntil",
)


class Sending(NotificationStore):
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
        claims to a request, then the claimed items read back (BatchGetItem, 100 to a request,
        ``CLAIMED_FIELDS`` only). Returns the items this worker now holds, each with its own
        ``leaseToken``."""
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
        items = self._table.get_items([notification_key(*k) for k in mine], CLAIMED_FIELDS)
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
        Returns the ones written (the others lost their lease, or were settled, meanwhile); their
        parts and how late after being due they went are counted (``dmd_sms_parts_sent_total``,
        ``dmd_send_delay_seconds``)."""
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
        written = [sends[int(n)] for n in self._move_many(writes, SENDING, SENT, f"{len(writes)} sent")]
        for sent in written:
            account = sent.account or "unknown"
            SMS_PARTS_SENT.labels(account).inc(sent.parts)
            if sent.due is not None:
                SEND_DELAY.labels(account).observe(max(0.0, sent.at - sent.due))
        return written

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
        lease_token: str | LeaseCheck | None,
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
        self, sale_id: str, fan_id: str, send_after: float, reason: str, *, lease_token: str | LeaseCheck | None
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
        lease_token: str | LeaseCheck | None = ANY_LEASE,
        now: float | None = None,
        pin: str | None = None,
    ) -> bool:
        """sending → scheduled after ``not_before`` (the bridge re-sends it then), by the lease
        holder (``lease_token``); ``attempts`` is the count of provider attempts so far. ``pin``:
        from now on it is sent through this provider only (its last call's outcome is unknown)."""
        now = time.time() if now is None else now
        return self._reschedule(sale_id, fan_id, attempts, not_before, reason, now, lease_token, pin=pin)

    def mark_retry_many(self, backs: Sequence[Back], now: float | None = None) -> list[Back]:
        """``mark_retry`` for many, up to 100 to a request, each fenced by its own lease token (a
        batch out of time gives back what it had not sent in one request, not one each). Returns
        the ones written."""
        now = time.time() if now is None else now
        writes = [
            (
                f"{n}",
                self._reschedule_write(
                    back.sale_id, back.fan_id, back.attempts, back.not_before, back.reason, now, back.lease_token
                ),
            )
            for n, back in enumerate(backs)
        ]
        return [backs[int(n)] for n in self._move_many(writes, SENDING, SCHEDULED, f"{len(writes)} back to scheduled")]

    def mark_failed(
        self,
        sale_id: str,
        fan_id: str,
        reason: str,
        source: str,
        attempts: int | None = None,
        *,
        lease_token: str | LeaseCheck | None = ANY_LEASE,
    ) -> bool:
        """``source`` → failed with ``reason`` (from ``sending``: by the lease holder)."""
        update = "SET #s = :to, reason = :r REMOVE gsi1pk, gsi1sk, leaseUntil, leaseToken"
        values: dict[str, Any] = {":r": reason[:500]}
        if attempts is not None:
            update = "SET #s = :to, reason = :r, attempts = :a REMOVE gsi1pk, gsi1sk, leaseUntil, leaseToken"
            values[":a"] = attempts
        return self._move(sale_id, fan_id, source, FAILED, update, values, lease_token=lease_token)
