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
        ("https://", "no host"),
        ("", "empty"),
        ("https://www.ticketmaster.com/" + "a" * 3000, "longer"),
    ],
)
def test_refused(url: str, reason: str) -> None:
    with pytest.raises(DisallowedUrl, match=reason):
        check_allowed_url(url, HOSTS)
