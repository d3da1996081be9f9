"""The Accounts client against the Accounts simulator: the OAuth token cached in Redis for every
process, renewed after a 401; and a canned upstream for answers the simulator never gives."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dmd_tasks.clients.accounts import TOKEN_KEY, AccountNotFound, AccountsClient
from dmd_tasks.clients.http import UpstreamRefused
from dmd_tasks.domain.errors import PermanentError, RateLimited, TransientError


@pytest.fixture()
def client_redis(settings, stack) -> Iterator[redis.Redis]:
    """The session's Redis, with no cached token before or after the test."""
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(TOKEN_KEY)
    try:
        yield client
    finally:
        client.delete(TOKEN_KEY)


@pytest.fixture()
def accounts(settings, client_redis: redis.Redis) -> AccountsClient:
    return AccountsClient.from_settings(settings, client_redis)


def new_id() -> str:
    return f"acct{uuid.uuid4().hex[:10]}"


def tokens_issued(sim) -> int:
    return int(sim.stats()["accounts"].get("tokens_issued", 0))


def test_a_profile_is_normalized_from_the_accounts_document(accounts: AccountsClient) -> None:
    account_id = new_id()
    profile = accounts.account(account_id)
    assert profile.id == account_id
    assert (profile.firstName, profile.lastName) == ("Sam", f"Fan{account_id[-4:]}")
    assert (profile.email, profile.countryCode) == (f"{account_id}@example.com", "US")
    assert profile.marketingOptIn is (len(account_id) % 2 == 0)


def test_one_token_serves_every_call_of_every_process_until_shortly_before_it_expires(
    settings, accounts: AccountsClient, client_redis: redis.Redis, sim
) -> None:
    before = tokens_issued(sim)
    accounts.account(new_id())
    accounts.account(new_id())
    # another process's client finds the token in Redis
    other = AccountsClient.from_settings(settings, client_redis)
    other.account(new_id())

    assert (accounts.tokens_fetched, other.tokens_fetched) == (1, 0)
    assert tokens_issued(sim) == before + 1
    ttl = client_redis.ttl(TOKEN_KEY)
    lifetime = 3600 - settings.accounts_token_margin_seconds  # the simulator's tokens last an hour
    assert lifetime - 60 < ttl <= lifetime


def test_a_token_the_provider_no_longer_accepts_is_renewed_once(
    accounts: AccountsClient, client_redis: redis.Redis, sim
) -> None:
    # Given a cached token the provider revoked
    client_redis.set(TOKEN_KEY, "revoked-token", ex=600)
    before = tokens_issued(sim)

    # When a profile is asked for, the 401 costs one new token and one retry
    assert accounts.account(new_id()).firstName == "Sam"

    assert accounts.tokens_fetched == 1 and tokens_issued(sim) == before + 1
    renewed = client_redis.get(TOKEN_KEY)
    assert renewed is not None and renewed != b"revoked-token"


def test_an_unknown_account_is_account_not_found(accounts: AccountsClient) -> None:
    with pytest.raises(AccountNotFound) as raised:
        accounts.account(f"missing{uuid.uuid4().hex[:6]}")
    assert isinstance(raised.value, PermanentError)


def test_refused_client_credentials_are_permanent_and_the_secret_stays_out(settings, client_redis: redis.Redis) -> None:
    client = AccountsClient(settings.accounts_base_url, settings.accounts_client_id, "leaked-secret", client_redis)
    with pytest.raises(UpstreamRefused) as raised:
        client.account(new_id())
    assert raised.value.status_code == 401
    assert "invalid_client" in str(raised.value)
    assert "leaked-secret" not in str(raised.value)
    assert client_redis.get(TOKEN_KEY) is None


def test_a_server_error_is_transient(accounts: AccountsClient, faults) -> None:
    faults("accounts", error_rate=1.0)
    with pytest.raises(TransientError, match="upstream error 50") as raised:
        accounts.account(new_id())
    assert not isinstance(raised.value, RateLimited)


def test_a_quota_violation_is_rate_limited_with_its_retry_after(accounts: AccountsClient, faults) -> None:
    faults("accounts", throttle_rate=1.0, throttle_retry_after=6)
    with pytest.raises(RateLimited) as raised:
        accounts.account(new_id())
    assert raised.value.retry_after_seconds == 6.0


# --- answers the simulator never gives -----------------------------------------------------------


def test_a_token_refused_again_after_renewal_is_refused_for_good(canned, client_redis: redis.Redis) -> None:
    canned.answer("POST", "/oauth/token", 200, {"access_token": "t", "expires_in": 3600})
    canned.answer("GET", "/accounts/v1/accounts/a1", 401, {"error": "invalid_token"})
    client = AccountsClient(canned.url, "id", "secret", client_redis)

    with pytest.raises(UpstreamRefused) as raised:
        client.account("a1")

    assert raised.value.status_code == 401
    assert client.tokens_fetched == 2
    assert canned.requests == [("POST", "/oauth/token"), ("GET", "/accounts/v1/accounts/a1")] * 2


@pytest.mark.parametrize(
    "body", [{"token_type": "Bearer"}, b"<html/>", [], {"access_token": "t", "expires_in": "soon"}]
)
def test_a_token_answer_without_a_token_is_transient(canned, client_redis: redis.Redis, body: Any) -> None:
    canned.answer("POST", "/oauth/token", 200, body)
    with pytest.raises(TransientError, match="accounts token: unexpected response"):
        AccountsClient(canned.url, "id", "secret", client_redis).account("a1")
    assert client_redis.get(TOKEN_KEY) is None


@pytest.mark.parametrize("body", [{"email": "no id"}, b"<html/>", {"id": "a1", "email": ["x"]}])
def test_a_profile_answer_that_is_not_an_account_is_permanent(canned, client_redis: redis.Redis, body: Any) -> None:
    canned.answer("POST", "/oauth/token", 200, {"access_token": "t", "expires_in": 3600})
    canned.answer("GET", "/accounts/v1/accounts/a1", 200, body)
    with pytest.raises(PermanentError, match="accounts profile: unexpected response"):
        AccountsClient(canned.url, "id", "secret", client_redis).account("a1")


@pytest.mark.parametrize(
    "body",
    [[{"accountId": "a1"}], {"accountId": "a1", "name": "Sam Fan"}, {"accountId": "a1", "address": "US"}],
    ids=["array-body", "name-not-an-object", "address-not-an-object"],
)
def test_a_profile_answer_with_the_wrong_shape_is_permanent(canned, client_redis: redis.Redis, body: Any) -> None:
    canned.answer("POST", "/oauth/token", 200, {"access_token": "t", "expires_in": 3600})
    canned.answer("GET", "/accounts/v1/accounts/a1", 200, body)
    with pytest.raises(PermanentError, match="accounts profile: unexpected response"):
        AccountsClient(canned.url, "id", "secret", client_redis).account("a1")


def test_waiting_in_vain_for_another_process_fetching_the_token_is_transient(
    settings, client_redis: redis.Redis
) -> None:
    # Given no cached token, and another process holding the token lock (it died mid-fetch, say)
    holder = client_redis.lock(f"{TOKEN_KEY}:lock", timeout=30)
    assert holder.acquire(blocking=False)
    client = AccountsClient(
        settings.accounts_base_url,
        settings.accounts_client_id,
        settings.accounts_client_secret.get_secret_value(),
        client_redis,
        timeout_seconds=0.2,  # waits 0.6 s for the lock
    )
    try:
        with pytest.raises(TransientError):
            client.account(new_id())
    finally:
        holder.release()
