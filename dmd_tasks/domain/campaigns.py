"""Campaigns: what to send for a sale, when (the send window), and how fast (the provider rate).

Where campaigns are kept: ``dmd_tasks.store.campaigns``.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmd_tasks.domain.ids import check_id
from dmd_tasks.domain.phones import is_region
from dmd_tasks.domain.segments import Segments, measure
from dmd_tasks.domain.templates import check_template, render

#: Length of the event name a campaign's message is estimated with when it is stored.
SAMPLE_EVENT_NAME_CHARS = 40


def known_zone(name: object) -> bool:
    """Whether ``name`` is an IANA time zone name."""
    return isinstance(name, str) and 0 < len(name) <= 64 and _known_zone(name)


@lru_cache(maxsize=512)
def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@lru_cache(maxsize=512)
def zone(name: str | None) -> ZoneInfo:
    """The fan's time zone; an unknown or missing name counts as UTC."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


class SendWindow(BaseModel):
    """Local hours in which a fan may be messaged; outside them are quiet hours.

    ``start`` > ``end`` means the window crosses midnight (e.g. 22:00–02:00).
    ``start`` == ``end`` means always open.
    """

    start: time = time(9, 0)
    end: time = time(21, 0)

    def is_open(self, local: datetime) -> bool:
        t = local.time().replace(tzinfo=None)
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def next_open(self, now: datetime, tz_name: str | None) -> datetime:
        """``now`` if the window is open in the fan's zone, else the next time it opens (UTC)."""
        tz = zone(tz_name)
        local = now.astimezone(tz)
        if self.is_open(local):
            return now
        candidate = datetime.combine(local.date(), self.start, tzinfo=tz)
        if candidate <= local:
            candidate += timedelta(days=1)
        return candidate.astimezone(UTC)

    def is_open_at(self, now_ts: float, tz_name: str | None) -> bool:
        return self.is_open(datetime.fromtimestamp(now_ts, tz=UTC).astimezone(zone(tz_name)))

    def next_open_ts(self, now_ts: float, tz_name: str | None) -> float:
        """``next_open`` in epoch seconds (``now_ts`` itself when open)."""
        if self.is_open_at(now_ts, tz_name):
            return now_ts
        return self.next_open(datetime.fromtimestamp(now_ts, tz=UTC), tz_name).timestamp()


class Campaign(BaseModel):
    """The message campaign of one sale."""

    model_config = ConfigDict(populate_by_name=True)

    sale_id: str = Field(alias="saleId")
    event_id: str = Field(alias="eventId")
    template: str
    window: SendWindow = Field(default_factory=SendWindow)
    rate_per_second: float = Field(default=20.0, gt=0, le=10_000, alias="ratePerSecond")
    #: Region that reads the fans' numbers written without a country code (else the setting's).
    phone_region: str | None = Field(default=None, alias="phoneRegion")
    #: How long after its first chance to go a notification may still be sent (like a provider's
    #: TTL): past it, it ends ``failed`` ("expired") rather than arriving after the sale is over.
    validity_seconds: int = Field(default=4 * 3600, ge=60, le=72 * 3600, alias="validitySeconds")

    _ids = field_validator("sale_id", "event_id")(check_id)

    @field_validator("phone_region")
    @classmethod
    def _phone_region(cls, value: str | None) -> str | None:
        if value is not None and not is_region(value):
            raise ValueError(f"phoneRegion {value!r} is not a region code (ISO 3166 alpha-2, e.g. US)")
        return value.upper() if value else None

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)

    def estimated_segments(self) -> Segments:
        """The parts the message will take, estimated before any fan's is rendered: an event name of
        ``SAMPLE_EVENT_NAME_CHARS`` characters, a short URL, ids of typical length."""
        return measure(
            render(
                self.template,
                {
                    "event_name": "E" * SAMPLE_EVENT_NAME_CHARS,
                    "short_url": "https://bit.ly/" + "x" * 7,
                    "sale_id": self.sale_id,
                    "fan_id": "f" * 16,
                },
            )
        )
