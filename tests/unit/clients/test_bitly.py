"""The Bitly client against the Bitly simulator (and a canned upstream for answers it never gives)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dmd_tasks.clients.bitly import BitlyClient
from dmd_tasks.clients.http import UpstreamRefused
from dmd_tasks.domain.errors import PermanentError, RateLimited, TransientError


@pytest.fixture()
def bitly(settings, stack) -> BitlyClient:
    return BitlyClient.from_settings(settings)


def long_url() -> str:
    return f"https://www.ticketmaster.com/e/{uuid.uuid4().hex}"


def test_a_long_url_gets_a_short_link_and_the_same_link_again(bitly: BitlyClient, sim) -> None:
    url = long_url()
    link = bitly.shorten(url)
    assert link.startswith("https://bit.ly/") and len(link) > len("https://bit.ly/")
    assert bitly.shorten(url) == link  # a repeat is harmless
    assert sim.bitly_calls(url) == 2


def test_the_link_is_on_the_configured_domain(settings, stack) -> None:
    client = BitlyClient(settings.bitly_base_url, settings.bitly_token.get_secret_value(), domain="tm.to")
    assert client.shorten(long_url()).startswith("https://tm.to/")


def test_a_refused_token_is_permanent_and_not_in_the_message(settings, stack) -> None:
    client = BitlyClient(settings.bitly_base_url, "stolen-token-value")
    with pytest.raises(UpstreamRefused) as raised:
        client.shorten(long_url())
    assert raised.value.status_code == 403
    assert isinstance(raised.value, PermanentError)
    assert "FORBIDDEN" in str(raised.value)
    assert "stolen-token-value" not in str(raised.value)


def test_a_url_bitly_refuses_is_permanent_with_bitlys_reason(bitly: BitlyClient) -> None:
    with pytest.raises(UpstreamRefused, match="refused with 400 INVALID_ARG_LONG_URL") as raised:
        bitly.shorten("ftp://www.ticketmaster.com/e/1")
    assert raised.value.status_code == 400


def test_a_server_error_is_transient(bitly: BitlyClient, faults) -> None:
    faults("bitly", error_rate=1.0)
    with pytest.raises(TransientError, match="upstream error 50") as raised:
        bitly.shorten(long_url())
    assert not isinstance(raised.value, RateLimited)
    assert raised.value.retry_after_seconds is None


def test_a_429_is_rate_limited_with_bitlys_retry_after(bitly: BitlyClient, faults) -> None:
    faults("bitly", throttle_rate=1.0, throttle_retry_after=3)
    with pytest.raises(RateLimited) as raised:
        bitly.shorten(long_url())
    assert raised.value.retry_after_seconds == 3.0


def test_calls_beyond_bitlys_rate_limit_are_rate_limited(bitly: BitlyClient, faults) -> None:
    faults("bitly", rate_limit_per_second=1)
    bitly.shorten(long_url())
    with pytest.raises(RateLimited) as raised:
        bitly.shorten(long_url())
    assert raised.value.retry_after_seconds is not None and raised.value.retry_after_seconds >= 1


def test_a_call_that_outlasts_the_timeout_is_transient(settings, faults) -> None:
    client = BitlyClient(settings.bitly_base_url, settings.bitly_token.get_secret_value(), timeout_seconds=0.2)
    faults("bitly", timeout_rate=1.0, timeout_ms=1000)
    with pytest.raises(TransientError, match=r"timed out after 0\.2s"):
        client.shorten(long_url())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"id": "bit.ly/x"}, "no link"),
        ([], "no link"),
        (b"<html>oops</html>", "no link"),
        ({"link": "ftp://bit.ly/x"}, "not an http"),
        ({"link": 42}, "not an http"),
    ],
)
def test_an_answer_without_a_usable_link_is_permanent(canned, body: Any, reason: str) -> None:
    canned.answer("POST", "/v4/shorten", 200, body)
    with pytest.raises(PermanentError, match=reason):
        BitlyClient(canned.url, "t").shorten(long_url())
