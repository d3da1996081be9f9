from __future__ import annotations

import pytest

from dmd_tasks.domain.errors import DisallowedUrl
from dmd_tasks.domain.urls import check_allowed_url

HOSTS = [".ticketmaster.com", "livenation.com"]


@pytest.mark.parametrize(
    "url",
    [
        "https://www.ticketmaster.com/event/1",
        "http://ticketmaster.com/x?y=1",
        "https://livenation.com/e",
    ],
)
def test_allowed(url: str) -> None:
    assert check_allowed_url(url, HOSTS) == url


@pytest.mark.parametrize(
    "url, reason",
    [
        ("javascript:alert(1)", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("ftp://www.ticketmaster.com/x", "scheme"),
        ("https://evil.com/www.ticketmaster.com", "not on the allowed hosts"),
        ("https://www.ticketmaster.com.evil.com/", "not on the allowed hosts"),
        ("https://sub.livenation.com/", "not on the allowed hosts"),
        ("https://user:pw@www.ticketmaster.com/", "credentials"),
        ("https://", "cannot be parsed"),
        ("", "empty"),
        ("https://www.ticketmaster.com/" + "a" * 3000, "longer"),
        # a browser reads "\" as "/": the host is evil.com
        ("https://evil.com\\.ticketmaster.com/", "backslash"),
        ("https://www.ticketmaster.com%2f@evil.com/", "credentials"),
        ("https://www.ticketmaster.com:8443/x", "port 8443"),
        # a Cyrillic "і" in the registered name, and a punycode label under an allowed domain
        ("https://www.t\u0456cketmaster.com/", "internationalized"),
        ("https://xn--80ak6aa92e.ticketmaster.com/", "internationalized"),
        ("https://0x7f.1/", "IP address"),
        ("https://[::1]/", "IP address"),
        ("https://www.ticketmaster.com/a b", "whitespace"),
        ("https:/www.ticketmaster.com/x", "two parsers"),
    ],
)
def test_refused(url: str, reason: str) -> None:
    with pytest.raises(DisallowedUrl, match=reason):
        check_allowed_url(url, HOSTS)


def test_what_is_returned_is_what_a_browser_opens() -> None:
    assert check_allowed_url("HTTPS://WWW.TicketMaster.com:443/e/1", HOSTS) == "https://www.ticketmaster.com/e/1"
