"""Account look-ups (the account-service proxy), for the GraphQL API.

Profiles come through the Accounts client (OAuth2 client-credentials token cached until
shortly before expiry) and are cached in Redis for ``account_cache_ttl_seconds``.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from dmd_tasks.api.errors import NotFound, Unavailable, check_argument_id
from dmd_tasks.clients.accounts import AccountNotFound, AccountProfile, AccountsClient
from dmd_tasks.domain.errors import DmdError
from dmd_tasks.infra.settings import Settings


class AccountService:
    """Account profiles through the Accounts client, cached briefly."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, accounts: AccountsClient) -> None:
        self._s = settings
        self._redis = redis_client
        self.client = accounts

    def get(self, account_id: str) -> dict[str, Any]:
        check_argument_id(account_id, "accountId")
        key = f"dmd:account:{account_id}"
        raw = self._redis.get(key)
        if raw:
            return json.loads(raw)
        try:
            profile: AccountProfile = self.client.account(account_id)
        except AccountNotFound:
            raise NotFound(f"account {account_id} not found") from None
        except DmdError as exc:
            raise Unavailable(f"account service unavailable: {exc}") from exc
        document = profile.model_dump()
        self._redis.set(key, json.dumps(document), ex=self._s.account_cache_ttl_seconds)
        return document
