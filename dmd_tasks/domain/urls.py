"""Which URLs may leave the system: https or http on the allowed hosts (setting), as a browser
reads them.

A URL is parsed with the WHATWG URL standard (``ada_url``: what a fan's phone does), and
refused unless it is plain: no backslash (browsers read it as ``/``), no user info, no port
but the scheme's own, no internationalized (punycode) label that an allowed name does not
have itself (a look-alike such as ``tіcketmaster.com`` with a Cyrillic ``і``), no IP address,
and the same host for Python's own parser (``urllib``) and the browser's: a URL two parsers
read differently is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from ada_url import URL

from dmd_tasks.domain.errors import DisallowedUrl

MAX_URL_LENGTH = 2048
_SCHEMES = ("https:", "http:")


def check_allowed_url(url: str, allowed_hosts: Iterable[str]) -> str:
    """``url`` as a browser normalizes it, if it is http(s) on an allowed host; raise
    DisallowedUrl (with the reason) otherwise. An entry ``example.com`` admits that host only;
    ``.example.com`` admits it and its subdomains."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise DisallowedUrl("URL is empty or longer than 2048 characters")
    if "\\" in url:
        raise DisallowedUrl("URL has a backslash (a browser reads it as '/')")
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise DisallowedUrl("URL has whitespace or control characters")
    try:
        parsed = URL(url)
    except ValueError:
        raise DisallowedUrl("URL cannot be parsed") from None
    if parsed.protocol not in _SCHEMES:
        raise DisallowedUrl(f"URL scheme {parsed.protocol.rstrip(':')!r} is not http(s)")
    if parsed.username or parsed.password or "@" in url.split("//", 1)[-1].split("/", 1)[0]:
        raise DisallowedUrl("URL carries credentials (user info)")
    if parsed.port:
        raise DisallowedUrl(f"URL names port {parsed.port}: only the scheme's own is allowed")
    host = parsed.hostname.rstrip(".")
    if not host:
        raise DisallowedUrl("URL has no host")
    if host.startswith("[") or host.replace(".", "").isdigit():
        raise DisallowedUrl("URL host is an IP address")
    entries = [e.lower().rstrip(".") for e in allowed_hosts]
    if "xn--" in host and not any("xn--" in e for e in entries):
        raise DisallowedUrl(f"host {host!r} has an internationalized label (a look-alike?)")
    try:
        theirs = (urlsplit(url).hostname or "").lower().rstrip(".")
    except ValueError:
        theirs = ""
    if theirs != host:
        raise DisallowedUrl("URL is read differently by two parsers")
    for entry in entries:
        domain = entry.lstrip(".")
        if host == domain or (entry.startswith(".") and host.endswith(entry)):
            if "xn--" in host[: len(host) - len(domain)]:
                raise DisallowedUrl(f"host {host!r} has an internationalized label (a look-alike?)")
            return parsed.href  # what was checked is what goes out (normalized: no default port)
    raise DisallowedUrl(f"host {host!r} is not on the allowed hosts")
