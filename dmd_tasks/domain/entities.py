"""The entities of the pipeline and their statuses (how they are stored: ``dmd_tasks.store``).

See docs/data-model.md for the table layout, the indexes and the notification status machine.
"""

from __future__ import annotations

from datetime import UTC, datetime
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
    #: Which fan of a sale a phone number was given to (the pipeline's; one SMS per phone per sale).
    PHONE_CLAIM = "PHONE_CLAIM"


class NotificationStatus(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    #: The call to a provider without idempotency left and no answer came (a timeout, a worker
    #: killed during the call): the SMS may or may not be on its way. It is never sent again; it
    #: waits for the provider's event (matched by ``Context``) until ``unconfirmed_window_seconds``.
    UNCONFIRMED = "unconfirmed"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    #: Another fan of the same sale has the same (normalized) phone number and was messaged
    #: instead (``duplicateOf``): one SMS per phone per sale.
    DUPLICATE = "duplicate"
    #: ``unconfirmed`` and no event came within the window: whether the fan got the SMS is not
    #: known (at most once: it was not sent again). A late event still records what happened.
    UNKNOWN = "unknown"


#: A notification in one of these statuses waits on dmd itself; the reconciler owns each of them.
IN_FLIGHT_STATUSES = frozenset(
    {
        NotificationStatus.PENDING,
        NotificationStatus.SCHEDULED,
        NotificationStatus.SENDING,
        NotificationStatus.UNCONFIRMED,
    }
)

#: A notification in one of these statuses is done: nothing moves it any more.
TERMINAL_STATUSES = frozenset(
    {
        NotificationStatus.DELIVERED,
        NotificationStatus.UNDELIVERED,
        NotificationStatus.FAILED,
        NotificationStatus.DUPLICATE,
        NotificationStatus.UNKNOWN,
    }
)


class SaleStatus(StrEnum):
    WAITING = "waiting"
    GENERATING = "generating"
    GENERATED = "generated"
    FAILED = "failed"


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
    #: ISO-8601 with any offset (``2026-11-25T10:00:00-05:00``); stored normalized to UTC
    #: (``2026-11-25T15:00:00Z``). Without an offset it is read as UTC.
    notify_at: str = Field(alias="notifyAt")
    status: SaleStatus = SaleStatus.WAITING
    cursor: str | None = None  # last fan id written by the generator
    generated: int = 0

    _id = field_validator("id", "event_id")(check_id)

    @field_validator("notify_at", mode="before")
    @classmethod
    def _notify_at(cls, value: object) -> str:
        return utc_iso(parse_instant(value))


#: The widest UTC offsets in use (+14:00, -12:00): a notify time written with an offset sorts, as
#: a string, at most this far from where its instant sorts in UTC.
MAX_OFFSET_SECONDS = 14 * 3600


def parse_instant(value: object) -> float:
    """An ISO-8601 date-time with any offset (``Z``, ``+05:30``, ``-05:00``; none means UTC) in
    epoch seconds; ValueError with the reason otherwise."""
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise ValueError("notifyAt must be an ISO-8601 date-time string, e.g. 2026-11-25T10:00:00Z")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"notifyAt {value!r} is not an ISO-8601 date-time (e.g. 2026-11-25T10:00:00-05:00)") from None
    if "T" not in value.upper() and " " not in value.strip():
        raise ValueError(f"notifyAt {value!r} has no time of day")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def utc_iso(ts: float) -> str:
    """Epoch seconds as ISO-8601 UTC, second precision (the form of every stored time)."""
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
