"""TM Accounts: an OAuth2 client-credentials token, then ``GET /accounts/v1/accounts/{id}``.

The token is cached (in Redis, shared by every process) until shortly before it expires.
Neither the client secret nor the token ever appears in a log line or an error message.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis
import requests
from pydantic import BaseModel

from dmd_tasks.clients.http import UpstreamRefused, pooled_session, request
from dmd_tasks.domain.errors import PermanentError, TransientError
from dmd_tasks.infra.settings import Settings

TOKEN_KEY = "dmd:accounts:token"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class AccountNotFound(PermanentError):
    """The Accounts API has no such account (404)."""


class AccountProfile(BaseModel):
    """The normalized account (field names as in the GraphQL schema)."""

    id: str
    firstName: str | None = None
    lastName: str | None = None
    email: str | None = None
    countryCode: str | None = None
    marketingOptIn: bool | None = None

    @classmethod
    def from_upstream(cls, body: dict[str, Any]) -> AccountProfile:
        name = body.get("name") or {}
        prefs = body.get("preferences") or {}
        return cls(
            id=str(body.get("accountId") or body["id"]),
            firstName=name.get("first"),
            lastName=name.get("last"),
            email=body.get("email"),
            countryCode=(body.get("address") or {}).get("countryCode"),
            marketingOptIn=prefs.get("marketingOptIn"),
        )


class AccountsClient:
    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        redis_client: redis.Redis,
        *,
        timeout_seconds: float = 3.0,
        token_margin_seconds: int = 60,
        session: requests.Session | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._client_id = client_id
        self._secret = client_secret
        self._redis = redis_client
        self._timeout = timeout_seconds
        self._margin = token_margin_seconds
        self._session = session or pooled_session()
        self.tokens_fetched = 0

    @classmethod
    def from_settings(cls, settings: Settings, redis_client: redis.Redis) -> AccountsClient:
        return cls(
            settings.accounts_base_url,
            settings.accounts_client_id,
            settings.accounts_client_secret.get_secret_value(),
            redis_client,
            timeout_seconds=settings.accounts_timeout_seconds,
            token_margin_seconds=settings.accounts_token_margin_seconds,
        )

    def _token(self) -> str:
        cached = self._redis.get(TOKEN_KEY)
        if cached:
            return _text(cached)
        lock = self._redis.lock(f"{TOKEN_KEY}:lock", timeout=self._timeout * 3, blocking_timeout=self._timeout * 3)
        if not lock.acquire():
            raise TransientError("accounts token: another process is fetching it and did not finish in time")
        try:
            cached = self._redis.get(TOKEN_KEY)  # another process may have fetched it meanwhile
            if cached:
                return _text(cached)
            response = request(
                self._session,
                "POST",
                f"{self._base}/oauth/token",
                what="accounts token",
                timeout=self._timeout,
                data={"grant_type": "client_credentials"},
                auth=(self._client_id, self._secret),
            )
            try:
                body = response.json()
                token, expires_in = str(body["access_token"]), int(body.get("expires_in", 3600))
            except (ValueError, KeyError, TypeError) as exc:
                raise TransientError("accounts token: unexpected response") from exc
            self.tokens_fetched += 1
            ttl = max(1, expires_in - self._margin)
            self._redis.set(TOKEN_KEY, token, ex=ttl)
            return token
        finally:
            with contextlib.suppress(redis.exceptions.LockError):  # expired meanwhile: nothing to release
                lock.release()

    def account(self, account_id: str) -> AccountProfile:
        for attempt in (1, 2):
            token = self._token()
            try:
                response = request(
                    self._session,
                    "GET",
                    f"{self._base}/accounts/v1/accounts/{account_id}",
                    what="accounts profile",
                    timeout=self._timeout,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except UpstreamRefused as exc:
                if exc.status_code == 401 and attempt == 1:
                    self._redis.delete(TOKEN_KEY)  # revoked or expired early: one fresh token, one retry
                    continue
                if exc.status_code == 404:
                    raise AccountNotFound(f"account {account_id} not found") from exc
                raise
            try:
                return AccountProfile.from_upstream(response.json())
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # any other shape than documented
                raise PermanentError("accounts profile: unexpected response") from exc
        raise PermanentError("accounts profile: token refused twice")
