"""The entities of the single ``demand`` table, their keys, and the messages between stages.

See docs/data-model.md for the table layout, the GSIs and the notification status machine.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Ids travel in keys and URLs: letters, digits, ``_`` and ``-`` only, bounded length.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Entity(StrEnum):
    EVENT = "EVENT"
    DEMAND = "DEMAND"
    SALE = "SALE"
    NOTIFICATION = "NOTIFICATION"
    OPTOUT = "OPTOUT"


class NotificationStatus(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"


def _check_id(value: str) -> str:
    if not ID_PATTERN.match(value):
        raise ValueError("ids are 1-64 characters of letters, digits, '_' or '-'")
    return value


#: E.164: "+", country code, subscriber number; 8 to 15 digits in all.
PHONE_PATTERN = re.compile(r"^\+[1-9]\d{7,14}$")

TERMINAL_STATUSES = frozenset({NotificationStatus.DELIVERED, NotificationStatus.UNDELIVERED, NotificationStatus.FAILED})


def event_key(event_id: str) -> dict[str, str]:
    return {"pk": f"EVENT#{event_id}", "sk": "EVENT"}


def demand_key(event_id: str, fan_id: str) -> dict[str, str]:
    return {"pk": f"EVENT#{event_id}", "sk": f"DEMAND#{fan_id}"}


def sale_key(sale_id: str) -> dict[str, str]:
    return {"pk": f"SALE#{sale_id}", "sk": "SALE"}


def notification_key(sale_id: str, fan_id: str) -> dict[str, str]:
    return {"pk": f"SALE#{sale_id}", "sk": f"NOTIFICATION#{fan_id}"}


def optout_key(phone: str) -> dict[str, str]:
    return {"pk": f"OPTOUT#{phone}", "sk": "OPTOUT"}


def notification_id(sale_id: str, fan_id: str) -> str:
    """The notification's id, also the SMS provider's idempotency key."""
    return f"{sale_id}:{fan_id}"


def split_notification_id(value: str) -> tuple[str, str]:
    sale_id, sep, fan_id = value.partition(":")
    if not sep or not ID_PATTERN.match(sale_id) or not ID_PATTERN.match(fan_id):
        raise ValueError(f"not a notification id: {value[:80]!r}")
    return sale_id, fan_id


class Event(BaseModel):
    """An event fans can register demand for; ``short_url`` is set once by ``shorten_event_url``."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    name: str = ""
    url: str
    short_url: str | None = Field(default=None, alias="shortUrl")

    _id = field_validator("id")(_check_id)

    def to_item(self) -> dict[str, object]:
        item: dict[str, object] = {**event_key(self.id), "entity": Entity.EVENT.value, "id": self.id,
                                   "name": self.name, "url": self.url}
        if self.short_url:
            item["shortUrl"] = self.short_url
        return item


class Demand(BaseModel):
    """One fan's registration for one event (written by the product; read by the pipeline)."""

    model_config = ConfigDict(populate_by_name=True)

    event_id: str = Field(alias="eventId")
    fan_id: str = Field(alias="fanId")
    phone: str
    timezone: str = "UTC"

    _ids = field_validator("event_id", "fan_id")(_check_id)

    @property
    def id(self) -> str:
        return f"{self.event_id}:{self.fan_id}"

    def to_item(self) -> dict[str, object]:
        return {**demand_key(self.event_id, self.fan_id), "entity": Entity.DEMAND.value, "id": self.id,
                "eventId": self.event_id, "fanId": self.fan_id, "phone": self.phone, "timezone": self.timezone}


class ShortenRequest(BaseModel):
    """The message of ``shorten_event_url``: which event needs a short URL."""

    event_id: str

    _id = field_validator("event_id")(_check_id)


class SaleStatus(StrEnum):
    WAITING = "waiting"
    GENERATING = "generating"
    GENERATED = "generated"
    FAILED = "failed"


class Sale(BaseModel):
    """A sale of an event: at ``notify_at`` its fans are notified."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    event_id: str = Field(alias="eventId")
    notify_at: str = Field(alias="notifyAt")  # ISO-8601 UTC, e.g. 2026-11-25T10:00:00Z
    status: SaleStatus = SaleStatus.WAITING
    cursor: str | None = None  # last fan id written by the generator
    generated: int = 0

    _id = field_validator("id", "event_id")(_check_id)

    def to_item(self) -> dict[str, object]:
        item: dict[str, object] = {**sale_key(self.id), "entity": Entity.SALE.value, "id": self.id,
                                   "eventId": self.event_id, "notifyAt": self.notify_at, "status": self.status.value,
                                   "generated": self.generated}
        if self.status is SaleStatus.WAITING:
            item.update(gsi1pk="SALES#waiting", gsi1sk=self.notify_at)
        return item
