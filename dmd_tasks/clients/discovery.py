"""TM Discovery v2: ``GET /discovery/v2/events/{id}.json?apikey=…``, normalized to EventDetails."""

from __future__ import annotations

from typing import Any

import requests
from pydantic import BaseModel

from dmd_tasks.clients.http import UpstreamRefused, pooled_session, request
from dmd_tasks.domain.errors import PermanentError
from dmd_tasks.infra.settings import Settings


class EventNotFound(PermanentError):
    """Discovery has no such event (404)."""


class Presale(BaseModel):
    name: str | None = None
    startDateTime: str | None = None
    endDateTime: str | None = None


class EventSales(BaseModel):
    publicStartDateTime: str | None = None
    publicEndDateTime: str | None = None
    presales: list[Presale] = []


class Venue(BaseModel):
    id: str | None = None
    name: str | None = None
    city: str | None = None
    stateCode: str | None = None
    countryCode: str | None = None
    address: str | None = None
    timezone: str | None = None


class EventDetails(BaseModel):
    """What dmd keeps of a Discovery event (field names as in the GraphQL schema)."""

    id: str
    name: str
    url: str | None = None
    startDateTime: str | None = None
    startLocalDate: str | None = None
    startLocalTime: str | None = None
    timezone: str | None = None
    sales: EventSales | None = None
    venue: Venue | None = None

    @classmethod
    def from_discovery(cls, body: dict[str, Any]) -> EventDetails:
        dates = body.get("dates") or {}
        start = dates.get("start") or {}
        sales = body.get("sales") or {}
        public = sales.get("public") or {}
        venues = (body.get("_embedded") or {}).get("venues") or [{}]
        v = venues[0] if isinstance(venues, list) and venues else {}
        return cls(
            id=str(body["id"]),
            name=str(body.get("name") or ""),
            url=body.get("url"),
            startDateTime=start.get("dateTime"),
            startLocalDate=start.get("localDate"),
            startLocalTime=start.get("localTime"),
            timezone=dates.get("timezone"),
            sales=EventSales(
                publicStartDateTime=public.get("startDateTime"),
                publicEndDateTime=public.get("endDateTime"),
                presales=[
                    Presale(name=p.get("name"), startDateTime=p.get("startDateTime"), endDateTime=p.get("endDateTime"))
                    for p in sales.get("presales") or []
                ],
            ),
            venue=Venue(
                id=v.get("id"),
                name=v.get("name"),
                city=(v.get("city") or {}).get("name"),
                stateCode=(v.get("state") or {}).get("stateCode"),
                countryCode=(v.get("country") or {}).get("countryCode"),
                address=(v.get("address") or {}).get("line1"),
                timezone=v.get("timezone"),
            )
            if v
            else None,
        )


class DiscoveryClient:
    def __init__(
        self, base_url: str, api_key: str, *, timeout_seconds: float = 3.0, session: requests.Session | None = None
    ) -> None:
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._timeout = timeout_seconds
        self._session = session or pooled_session()

    @classmethod
    def from_settings(cls, settings: Settings) -> DiscoveryClient:
        return cls(
            settings.discovery_base_url,
            settings.discovery_api_key.get_secret_value(),
            timeout_seconds=settings.discovery_timeout_seconds,
        )

    def event(self, event_id: str) -> EventDetails:
        url = f"{self._base}/discovery/v2/events/{event_id}.json"
        try:
            response = request(
                self._session, "GET", url, what="discovery event", timeout=self._timeout, params={"apikey": self._key}
            )
        except UpstreamRefused as exc:
            if exc.status_code == 404:
                raise EventNotFound(f"event {event_id} not found") from exc
            raise
        try:
            return EventDetails.from_discovery(response.json())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # any other shape than documented
            raise PermanentError("discovery event: unexpected response") from exc
