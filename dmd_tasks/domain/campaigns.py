"""Campaigns: what to send for a sale, when (the send window), and how fast (the provider rate).

Where campaigns are kept: ``dmd_tasks.store.campaigns``.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmd_tasks.domain.ids import check_id
from dmd_tasks.domain.templates import check_template


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

    _ids = field_validator("sale_id", "event_id")(check_id)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)
