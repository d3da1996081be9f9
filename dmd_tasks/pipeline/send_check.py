"""A send's check (stage 4, before its call): the campaign, the fan's opt-out, the validity, the
send window, the rendered message and its SMS parts. No write, no call: what it finds is raised
(PermanentError, Expired, QuietHours) and recorded by the send."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dmd_tasks.domain.campaigns import Campaign
from dmd_tasks.domain.errors import PermanentError
from dmd_tasks.domain.segments import measure
from dmd_tasks.domain.templates import render
from dmd_tasks.pipeline.send_outcomes import Expired, Owned
from dmd_tasks.services import Services


class QuietHours(Exception):
    """The fan's send window is closed now: the notification waits for it to open (``opens``)."""

    def __init__(self, opens: float) -> None:
        super().__init__(f"send window opens at {opens:.0f}")
        self.opens = opens


@dataclass(frozen=True)
class Message:
    """A notification's SMS as checked: its body and parts, under its sale's campaign."""

    campaign: Campaign
    body: str
    parts: int
    encoding: str


def check_message(services: Services, owned: Owned, opted_out: set[str]) -> Message:
    """The SMS to send, checked; PermanentError (or Expired) when it must not go, QuietHours
    (with when the window opens) when it must wait."""
    settings, item = services.settings, owned.item
    campaign = services.send_lookups.campaign(owned.sale_id)
    if campaign is None:
        raise PermanentError(f"sale {owned.sale_id} has no campaign")
    if item["phone"] in opted_out:
        raise PermanentError("fan opted out (STOP) after the notification was generated")
    now = time.time()
    expires = item.get("expiresAt")
    if expires is not None and now >= float(expires):
        raise Expired(f"expired: not sent within its validity ({campaign.validity_seconds}s from its first chance)")
    opens = campaign.window.next_open_ts(now, item.get("timezone"))
    if opens > now:
        # Quiet hours came first (a retry, a backlog, a pause that ran late): wait for the next opening.
        raise QuietHours(opens)
    event_name, short_url = services.send_lookups.event_values(item["eventId"])
    body = render(
        campaign.template,
        {"event_name": event_name, "short_url": short_url, "sale_id": owned.sale_id, "fan_id": owned.fan_id},
    )
    segments = measure(body)
    if segments.parts > settings.max_message_parts:
        raise PermanentError(
            f"message takes {segments.parts} SMS parts ({segments.encoding}), more than the "
            f"{settings.max_message_parts} allowed"
        )
    return Message(campaign, body, segments.parts, segments.encoding)
