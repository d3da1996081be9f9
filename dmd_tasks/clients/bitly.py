"""Bitly v4: ``POST /v4/shorten`` with a Bearer token."""

from __future__ import annotations

from typing import Protocol

import requests

from dmd_tasks.clients.http import pooled_session, request
from dmd_tasks.domain.errors import PermanentError
from dmd_tasks.infra.settings import Settings


class Shortener(Protocol):
    def shorten(self, long_url: str) -> str:
        """Return a short link for ``long_url``."""


class BitlyClient:
    """Bitly v4 client. Bitly returns the same link for the same long URL, so a repeat is harmless."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        domain: str = "bit.ly",
        timeout_seconds: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/v4/shorten"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._domain = domain
        self._timeout = timeout_seconds
        self._session = session or pooled_session()

    @classmethod
    def from_settings(cls, settings: Settings) -> BitlyClient:
        return cls(
            settings.bitly_base_url,
            settings.bitly_token.get_secret_value(),
            domain=settings.bitly_domain,
            timeout_seconds=settings.bitly_timeout_seconds,
        )

    def shorten(self, long_url: str) -> str:
        response = request(
            self._session,
            "POST",
            self._url,
            what="bitly shorten",
            timeout=self._timeout,
            json={"long_url": long_url, "domain": self._domain},
            headers=self._headers,
        )
        try:
            link = response.json()["link"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError("bitly shorten: response has no link") from exc
        if not isinstance(link, str) or not link.startswith(("http://", "https://")):
            raise PermanentError("bitly shorten: response link is not an http(s) URL")
        return link
