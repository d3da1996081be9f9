"""Which URLs may leave the system: only http(s) on the allowed hosts (setting)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from dmd_tasks.domain.errors import DisallowedUrl

MAX_URL_LENGTH = 2048


def check_allowed_url(url: str, allowed_hosts: Iterable[str]) -> str:
    """Return ``url`` if it is http(s) on an allowed host; raise DisallowedUrl otherwise.

    An entry ``example.com`` admits that host only; ``.example.com`` admits it and its subdomains.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise DisallowedUrl("URL is empty or longer than 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DisallowedUrl(f"URL scheme {parts.scheme!r} is not http(s)")
    if parts.username or parts.password:
        raise DisallowedUrl("URL carries credentials")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise DisallowedUrl("URL has no host")
    for entry in allowed_hosts:
        entry = entry.lower()
        if entry.startswith("."):
            if host == entry[1:] or host.endswith(entry):
                return url
        elif host == entry:
            return url
    raise DisallowedUrl(f"host {host!r} is not on the allowed hosts")
