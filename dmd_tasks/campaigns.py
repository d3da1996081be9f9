"""Campaigns: what to send for a sale, when (the send window), and how fast (the provider rate).

The store is a MongoDB collection through pymongo when ``DMD_MONGO_URL`` is set;
otherwise an embedded pymongo-compatible store on disk (montydb, SQLite engine, in the
run directory), so the local stack needs no MongoDB server. Both sit behind
``CampaignStore``, which uses only the API the two share.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dmd_tasks.errors import PermanentError
from dmd_tasks.models import ID_PATTERN
from dmd_tasks.settings import Settings
from dmd_tasks.templates import check_template


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
        return candidate.astimezone(timezone.utc)


    def is_open_at(self, now_ts: float, tz_name: str | None) -> bool:
        return self.is_open(datetime.fromtimestamp(now_ts, tz=timezone.utc).astimezone(zone(tz_name)))

    def next_open_ts(self, now_ts: float, tz_name: str | None) -> float:
        """``next_open`` in epoch seconds (``now_ts`` itself when open)."""
        if self.is_open_at(now_ts, tz_name):
            return now_ts
        return self.next_open(datetime.fromtimestamp(now_ts, tz=timezone.utc), tz_name).timestamp()


class Campaign(BaseModel):
    """The message campaign of one sale."""

    model_config = ConfigDict(populate_by_name=True)

    sale_id: str = Field(alias="saleId")
    event_id: str = Field(alias="eventId")
    template: str
    window: SendWindow = Field(default_factory=SendWindow)
    rate_per_second: float = Field(default=20.0, gt=0, le=10_000, alias="ratePerSecond")

    @field_validator("sale_id", "event_id")
    @classmethod
    def _ids(cls, value: str) -> str:
        if not ID_PATTERN.match(value):
            raise ValueError("ids are 1-64 characters of letters, digits, '_' or '-'")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)


class InvalidCampaign(PermanentError):
    """A stored campaign that no longer validates (written around the API, or by an older version)."""


class CampaignStore:
    """Campaigns by sale id in a pymongo(-compatible) collection."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def put(self, campaign: Campaign) -> None:
        document = {"_id": campaign.sale_id, **campaign.model_dump(mode="json", by_alias=True)}
        self._collection.replace_one({"_id": campaign.sale_id}, document, upsert=True)

    def get(self, sale_id: str) -> Campaign | None:
        document = self._collection.find_one({"_id": sale_id})
        if document is None:
            return None
        document.pop("_id", None)
        try:
            return Campaign.model_validate(document)
        except ValidationError as exc:
            raise InvalidCampaign(f"campaign of sale {sale_id} is invalid: {exc.errors()[0]['msg']}") from exc


def open_campaign_store(settings: Settings) -> CampaignStore:
    if settings.mongo_url is not None:
        import pymongo

        client: Any = pymongo.MongoClient(settings.mongo_url.get_secret_value(), serverSelectionTimeoutMS=5000)
    else:
        from montydb import MontyClient, set_storage

        path = settings.run_dir.resolve() / "campaigns"
        path.mkdir(parents=True, exist_ok=True)
        if not (path / "monty.storage.cfg").exists():
            set_storage(str(path), storage="sqlite")
        client = MontyClient(str(path))
    return CampaignStore(client[settings.mongo_database]["campaigns"])
