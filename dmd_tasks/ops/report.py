"""``dmd report SALE_ID``: one sale after the fact, from its notifications.

One Query over the sale's partition of the notifications table (the key every notification of
the sale has: never a scan) gives every notification's status, reason, ``sentAt`` (when the
provider accepted it, to the second), ``deliveredAt`` (the provider's time on the final receipt)
and ``parts``. They are tallied in one pass (``Tally``, memory bounded by the sale's length in
seconds, not by its fans) into the report's JSON shape (``report_of``), which docs/operations.md
documents ("One sale after the fact") and which ``--json`` prints as it is. The terminal view is
``report_view``, the picture ``report_plot``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dmd_tasks.domain.entities import NotificationStatus, parse_instant
from dmd_tasks.infra.settings import Settings
from dmd_tasks.store.codec import deserialize, iso
from dmd_tasks.store.keys import NOTIFICATION_PREFIX, sale_partition
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable

STATUSES = [s.value for s in NotificationStatus]
#: the final statuses whose notifications say why in ``reason``
REASONED = ("failed", "duplicate", "unknown")
#: the most distinct reasons listed per status; the rest are counted together
MAX_REASONS = 20
OTHER_REASONS = "(other reasons)"
#: a failed notification the provider had accepted: its final receipt said so, with no reason of ours
FAILED_AT_THE_PROVIDER = "reported failed by the provider (delivery receipt)"
NO_REASON = "(no reason recorded)"
#: the attributes the report reads (aliased: DynamoDB reserves some plain words)
_READ = {"#s": "status", "#r": "reason", "#sa": "sentAt", "#da": "deliveredAt", "#p": "parts"}


def reason_kind(status: str, reason: str | None, sent: bool) -> str:
    """A notification's reason as the report counts it: the fan a duplicate names left out (each
    names the fan who was messaged instead), so that one kind of reason is one line."""
    if not reason:
        return FAILED_AT_THE_PROVIDER if status == "failed" and sent else NO_REASON
    text = " ".join(reason.split())
    if status == "duplicate":
        text = re.sub(r"^fan \S+ of this sale", "fan … of this sale", text)
    return text[:200]


@dataclass
class Tally:
    """What a sale's notifications add up to, one row at a time (``add``)."""

    status: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=lambda: {s: Counter() for s in REASONED})
    #: SMS (and their parts) the provider accepted, by the epoch second of their ``sentAt``
    sent: Counter[int] = field(default_factory=Counter)
    parts: Counter[int] = field(default_factory=Counter)
    last_receipt: float | None = None
    _seconds: dict[str, int] = field(default_factory=dict)  # sentAt strings parsed once each

    def add(self, row: dict[str, Any]) -> None:
        """One notification: ``status``, and ``reason``, ``sentAt``, ``deliveredAt``, ``parts`` when it has them."""
        status = str(row["status"])
        self.status[status] += 1
        sent_at = row.get("sentAt")
        if status in self.reasons:
            self.reasons[status][reason_kind(status, row.get("reason"), sent_at is not None)] += 1
        if sent_at is not None:
            second = self._seconds.get(sent_at)
            if second is None:
                second = self._seconds[sent_at] = int(parse_instant(str(sent_at)))
            self.sent[second] += 1
            self.parts[second] += int(row.get("parts") or 1)
        if row.get("deliveredAt"):
            try:
                at = float(int(parse_instant(str(row["deliveredAt"]))))  # to the second, as sentAt
            except ValueError:  # the provider's own timestamp; a bad one is not this report's to fix
                return
            self.last_receipt = at if self.last_receipt is None else max(self.last_receipt, at)

    def add_all(self, rows: Iterable[dict[str, Any]]) -> Tally:
        for row in rows:
            self.add(row)
        return self


def per_second(counts: Counter[int]) -> tuple[int | None, list[int]]:
    """(first second, a count for every second from it to the last one, zeros included)."""
    if not counts:
        return None, []
    first, last = min(counts), max(counts)
    return first, [counts.get(second, 0) for second in range(first, last + 1)]


def cap_of(
    campaign_rate: float | None, account_parts: float, headroom: float, parts_per_message: float
) -> dict[str, Any]:
    """The sale's cap in SMS per second: its campaign's ``ratePerSecond``, or the account's cap in
    parts over the parts a message took, whichever is lower (the account's is shared by every sale)."""
    account = account_parts / max(parts_per_message, 1.0)
    campaign = campaign_rate if campaign_rate is not None and campaign_rate <= account else None
    return {
        "campaign_rate_per_second": campaign_rate,
        "account_parts_per_second": account_parts,
        "account_headroom": headroom,
        "parts_per_message": round(parts_per_message, 3),
        "messages_per_second": round(account if campaign is None else campaign, 3),
        "set_by": "account" if campaign is None else "campaign",
    }


def report_of(
    tally: Tally,
    *,
    sale_id: str,
    sale_status: str,
    notify_at: float | None,
    campaign_rate: float | None,
    account_parts: float,
    headroom: float,
) -> dict[str, Any]:
    """The report (``dmd report --json``; its shape is documented in docs/operations.md)."""
    start, sent = per_second(tally.sent)
    _, parts = per_second(tally.parts)
    accepted, total_parts = sum(sent), sum(parts)

    def after(at: float | None) -> float | None:
        return None if at is None or notify_at is None else round(at - notify_at, 3)

    last = None if start is None else start + len(sent) - 1
    return {
        "sale": sale_id,
        "sale_status": sale_status,
        "notify_at": None if notify_at is None else iso(notify_at),
        "notifications": sum(tally.status.values()),
        "status": {s: tally.status.get(s, 0) for s in STATUSES},
        "reasons": {s: _top(tally.reasons[s]) for s in REASONED},
        "sent": {
            "accepted": accepted,
            "parts": total_parts,
            "first_at": None if start is None else iso(start),
            "last_at": None if last is None else iso(last),
            "seconds_to_first": after(start),
            "seconds_to_last": after(last),
            "last_receipt_at": None if tally.last_receipt is None else iso(tally.last_receipt),
            "seconds_to_last_receipt": after(tally.last_receipt),
            "peak_per_second": max(sent, default=0),
            "mean_per_second": round(accepted / len(sent), 3) if sent else None,
        },
        "cap": cap_of(campaign_rate, account_parts, headroom, total_parts / accepted if accepted else 1.0),
        "per_second": {
            "start": None if start is None else iso(start),
            "seconds_after_notify_at": after(start),
            "sent": sent,
            "parts": parts,
        },
    }


def _top(reasons: Counter[str]) -> dict[str, int]:
    """The reasons, most frequent first; past ``MAX_REASONS`` of them, the rest in one line."""
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = dict(ranked[:MAX_REASONS])
    rest = sum(n for _, n in ranked[MAX_REASONS:])
    if rest:
        shown[OTHER_REASONS] = shown.get(OTHER_REASONS, 0) + rest
    return shown


def notification_rows(table: DemandTable, sale_id: str) -> Iterator[dict[str, Any]]:
    """Every notification of the sale, the attributes the report reads (a Query over its partition)."""
    for page in table.for_notifications().query_pages(
        what=f"report on the notifications of {sale_id}",
        KeyConditionExpression="pk = :pk AND begins_with(sk, :n)",
        ProjectionExpression=", ".join(_READ),
        ExpressionAttributeNames=_READ,
        ExpressionAttributeValues={":pk": {"S": sale_partition(sale_id)}, ":n": {"S": NOTIFICATION_PREFIX}},
    ):
        yield from (deserialize(item) for item in page.get("Items", []))


def sale_report(settings: Settings, sale_id: str) -> dict[str, Any] | None:
    """The report of one sale; None when there is no such sale (no SALE item and no notification)."""
    from dmd_tasks.store.campaigns import open_campaign_store

    table = DemandTable(settings)
    tally = Tally().add_all(notification_rows(table, sale_id))
    sale = SaleRecords(table).get(sale_id)
    if sale is None and not tally.status:
        return None
    campaign = open_campaign_store(settings).get(sale_id)
    return report_of(
        tally,
        sale_id=sale_id,
        sale_status=str(sale["status"]) if sale else "missing",
        notify_at=parse_instant(str(sale["notifyAt"])) if sale and sale.get("notifyAt") else None,
        campaign_rate=campaign.rate_per_second if campaign else None,
        account_parts=settings.sms_account_parts_per_second,
        headroom=settings.sms_account_headroom,
    )
