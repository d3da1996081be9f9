"""The entities of the pipeline and their statuses (how they are stored: ``dmd_tasks.store``).

See docs/data-model.md for the table layout, the indexes and the notification status machine.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmd_tasks.domain.ids import check_id


class Entity(StrEnum):
    """The ``entity`` attribute of every item, which the demand-stream bridge routes on."""

    EVENT = "EVENT"
    DEMAND = "DEMAND"
    SALE = "SALE"
    #: The pipeline's own record of a sale's generation runs (the product never writes it).
    SALE_RUN = "SALE_RUN"
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


#: A notification in one of these statuses waits on dmd itself; the reconciler owns each of them.
IN_FLIGHT_STATUSES = frozenset({NotificationStatus.PENDING, NotificationStatus.SCHEDULED, NotificationStatus.SENDING})

#: A notification in one of these statuses is done: nothing moves it any more.
TERMINAL_STATUSES = frozenset({NotificationStatus.DELIVERED, NotificationStatus.UNDELIVERED, NotificationStatus.FAILED})


class SaleStatus(StrEnum):
    WAITING = "waiting"
    GENERATING = "generating"
    GENERATED = "generated"
    FAILED = "failed"


#: E.164: "+", country code, subscriber number; 8 to 15 digits in all.
PHONE_PATTERN = re.compile(r"^\+[1-9][0-9]{7,14}$")  # ASCII digits: \d would admit any script's digits


def is_e164(phone: object) -> bool:
    """True for a string in E.164 form (nothing before or after it, not even a newline)."""
    return isinstance(phone, str) and PHONE_PATTERN.fullmatch(phone) is not None


class Event(BaseModel):
    """An event fans can register demand for; ``short_url`` is set once by ``shorten_event_url``."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    name: str = ""
    url: str
    short_url: str | None = Field(default=None, alias="shortUrl")

    _id = field_validator("id")(check_id)


class Demand(BaseModel):
    """One fan's registration for one event (written by the product; read by the pipeline)."""

    model_config = ConfigDict(populate_by_name=True)

    event_id: str = Field(alias="eventId")
    fan_id: str = Field(alias="fanId")
    phone: str
    timezone: str = "UTC"

    _ids = field_validator("event_id", "fan_id")(check_id)

    @property
    def id(self) -> str:
        return f"{self.event_id}:{self.fan_id}"


class ShortenRequest(BaseModel):
    """The message of ``shorten_event_url``: which event needs a short URL."""

    event_id: str

    _id = field_validator("event_id")(check_id)


class Sale(BaseModel):
    """A sale of an event: at ``notify_at`` its fans are notified."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    event_id: str = Field(alias="eventId")
    notify_at: str = Field(alias="notifyAt")  # ISO-8601 UTC, e.g. 2026-11-25T10:00:00Z
    status: SaleStatus = SaleStatus.WAITING
    cursor: str | None = None  # last fan id written by the generator
    generated: int = 0

    _id = field_validator("id", "event_id")(check_id)
