"""A sale's demand rows as the generator reads them (each field checked on its own), and the
notification items and phone claims one chunk of them becomes (stage 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dmd_tasks.domain.campaigns import Campaign, known_zone
from dmd_tasks.domain.entities import NotificationStatus
from dmd_tasks.domain.ids import ID_RULE, is_valid_id
from dmd_tasks.domain.outcomes import GenerateOutcome
from dmd_tasks.domain.phones import InvalidPhone, normalize_phone
from dmd_tasks.store.notifications import NotificationRecords

#: A fan id longer than this cannot even be kept on a failed notification (it is part of the key).
MAX_KEPT_FAN_ID = 256


@dataclass
class GenerateResult:
    sale_id: str
    outcome: GenerateOutcome
    written: int = 0
    opted_out: int = 0
    invalid_rows: int = 0  # notifications failed at birth: invalid phone, time zone or fan id
    duplicates: int = 0  # notifications ``duplicate``: another fan of the sale has the number
    unusable_rows: int = 0  # rows without a usable fan id: dead letters
    already_present: int = 0
    chunks: int = 0


@dataclass(frozen=True)
class DemandRow:
    """One demand row as the generator reads it: every field checked on its own."""

    key: dict[str, Any]
    fan_id: str | None  # None: no usable fan id (the row becomes a dead letter, not a notification)
    phone: str | None  # E.164, or None with ``problem`` saying why
    timezone: str
    problem: str | None = None  # why this fan cannot be messaged (the notification ends failed with it)


def read_row(row: dict[str, Any], region: str | None) -> DemandRow:
    """Validate one demand row field by field; a bad field is this fan's problem, never the sale's."""
    key = {"pk": row.get("pk"), "sk": row.get("sk")}
    fan_id = row.get("fanId")
    if not isinstance(fan_id, str) or not 0 < len(fan_id) <= MAX_KEPT_FAN_ID:
        return DemandRow(key, None, None, "UTC", f"no usable fanId ({_describe(fan_id)})")
    tz = row.get("timezone")
    tz = "UTC" if tz is None or tz == "" else tz
    problem = None
    if not is_valid_id(fan_id):
        problem = f"invalid fan id (ids are {ID_RULE})"
    try:
        phone: str | None = normalize_phone(row.get("phone"), region)
    except InvalidPhone as exc:
        phone, problem = None, problem or str(exc)
    if not known_zone(tz):
        problem = problem or f"invalid time zone ({_describe(tz)}; an IANA name such as Europe/Paris)"
        tz = tz if isinstance(tz, str) and len(tz) <= 64 else ""
    return DemandRow(key, fan_id, phone, tz, problem)


def _describe(value: object) -> str:
    """What a bad field held, without its value (it may be personal data)."""
    if value is None:
        return "missing"
    if isinstance(value, str):
        return f"a string of {len(value)} characters" if value else "empty"
    return f"a {type(value).__name__}"


def build_notifications(
    rows: list[DemandRow],
    *,
    sale_id: str,
    event_id: str,
    campaign: Campaign,
    notifications: NotificationRecords,
    opted_out: set[str],
    owners: dict[str, str],
    skip: set[str],
    now: float,
    result: GenerateResult,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Notification items for one chunk of demand rows, and the phone claims to write before them.

    ``owners`` (normalized phone → the fan it was given to in this sale) is updated with this
    chunk's claims: a later fan with the same number gets a ``duplicate`` notification naming
    the fan that was messaged. Pure apart from the given sets.
    """
    items: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []
    for row in rows:
        fan_id = row.fan_id
        if fan_id is None:
            continue  # dead-lettered by the caller
        if fan_id in skip:
            result.already_present += 1
            if row.phone is not None and row.phone not in owners:
                # written by an earlier run (or an earlier version): its number stays this fan's
                owners[row.phone] = fan_id
                claims.append(notifications.phone_claim_item(sale_id, row.phone, fan_id))
            continue
        if row.phone is not None and row.phone in opted_out:
            result.opted_out += 1
            continue
        item, claim = _notification(
            row, fan_id, sale_id, event_id, campaign, notifications, owners=owners, now=now, result=result
        )
        items.append(item)
        if claim is not None:
            claims.append(claim)
    return items, claims


def _notification(
    row: DemandRow,
    fan_id: str,
    sale_id: str,
    event_id: str,
    campaign: Campaign,
    notifications: NotificationRecords,
    *,
    owners: dict[str, str],
    now: float,
    result: GenerateResult,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A new fan's notification item (pending, or final at once: an invalid row, a number another
    fan of the sale has), and the phone claim to write before it, if it takes the number."""
    send_after = now if row.problem else campaign.window.next_open_ts(now, row.timezone)
    item = notifications.new_item(
        sale_id=sale_id,
        event_id=event_id,
        fan_id=fan_id,
        phone=row.phone or "",
        tz=row.timezone,
        send_after=send_after,
        now=now,
        expires_at=send_after + campaign.validity_seconds,
    )
    if row.problem:
        # final at once, with the reason: the other fans of the sale go on
        result.invalid_rows += 1
        return notifications.failed_at_birth(item, row.problem), None
    assert row.phone is not None
    owner = owners.get(row.phone)
    if owner is not None and owner != fan_id:
        result.duplicates += 1
        reason = f"fan {owner} of this sale has the same phone number and is messaged instead"
        return notifications.final_at_birth(item, NotificationStatus.DUPLICATE.value, reason, duplicateOf=owner), None
    if owner is not None:
        return item, None
    owners[row.phone] = fan_id
    return item, notifications.phone_claim_item(sale_id, row.phone, fan_id)
