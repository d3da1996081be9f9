"""Account profiles for the API, against Redis and the Accounts simulator: cached briefly, and each
failure of the Accounts API answered as NotFound or Unavailable."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from dmd_tasks.api.accounts import AccountService
from dmd_tasks.api.errors import InvalidArgument, NotFound, Unavailable
from dmd_tasks.clients.accounts import TOKEN_KEY, AccountsClient
from simulators.faults import Faults


@pytest.fixture()
def cache(settings, stack) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture()
def service(settings, cache: redis.Redis) -> AccountService:
    return AccountService(settings, cache, AccountsClient.from_settings(settings, cache))


def account_calls(sim) -> int:
    return int(sim.stats()["accounts"].get("account_calls", 0))


def new_id() -> str:
    return f"acct{uuid.uuid4().hex[:10]}"


def test_a_profile_is_fetched_then_served_from_the_cache_for_a_minute(
    settings, service: AccountService, cache: redis.Redis, sim
) -> None:
    account_id = new_id()
    before = account_calls(sim)

    profile = service.get(account_id)
    assert profile == {
        "id": account_id,
        "firstName": "Sam",
        "lastName": f"Fan{account_id[-4:]}",
        "email": f"{account_id}@example.com",
        "countryCode": "US",
        "marketingOptIn": len(account_id) % 2 == 0,
    }
    assert service.get(account_id) == profile
    assert account_calls(sim) == before + 1
    key = f"dmd:account:{account_id}"
    assert json.loads(cache.get(key) or b"null") == profile
    assert 0 < cache.ttl(key) <= settings.account_cache_ttl_seconds


def test_an_unknown_account_is_not_found_and_not_cached(service: AccountService, cache: redis.Redis) -> None:
    account_id = f"missing{uuid.uuid4().hex[:6]}"
    with pytest.raises(NotFound, match=account_id):
        service.get(account_id)
    assert cache.get(f"dmd:account:{account_id}") is None


def test_a_failing_accounts_api_is_unavailable(service: AccountService, cache: redis.Redis, sim) -> None:
    account_id = new_id()
    sim.configure(accounts={"error_rate": 1.0})
    try:
        with pytest.raises(Unavailable, match="account service unavailable"):
            service.get(account_id)
    finally:
        sim.configure(accounts=Faults().public())
    assert cache.get(f"dmd:account:{account_id}") is None
    # once it is back, the same account is fetched
    assert service.get(account_id)["id"] == account_id


def test_refused_credentials_are_unavailable_and_the_secret_stays_out(settings, cache: redis.Redis) -> None:
    cache.delete(TOKEN_KEY)
    wrong = AccountsClient(settings.accounts_base_url, settings.accounts_client_id, "leaked-secret", cache)
    with pytest.raises(Unavailable) as raised:
        AccountService(settings, cache, wrong).get(new_id())
    assert "401" in str(raised.value)
    assert "leaked-secret" not in str(raised.value)


@pytest.mark.parametrize("bad_id", ["a b", "", "x" * 65, "acct1\n", "../admin"])
def test_a_malformed_id_is_refused_before_any_call(service: AccountService, sim, bad_id: str) -> None:
    before = account_calls(sim)
    with pytest.raises(InvalidArgument, match="accountId"):
        service.get(bad_id)
    assert account_calls(sim) == before
