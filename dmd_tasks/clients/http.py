"""What every provider client shares: a pooled session and the mapping of HTTP failures to dmd errors."""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import certifi
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from dmd_tasks.domain.errors import OutcomeUnknown, PermanentError, RateLimited, TransientError
from dmd_tasks.infra.metrics import PROVIDER_RESPONSES


class UpstreamRefused(PermanentError):
    """The upstream answered 4xx (other than 429): retrying the same request cannot help."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class EnvironmentOnceSession(requests.Session):
    """A session that reads the process environment (proxies, ``REQUESTS_CA_BUNDLE``) once per
    host instead of on every request.

    A plain session looks up the environment's proxies on every request (a walk of the whole
    environment, twice, and a ``.netrc`` lookup): a quarter of a send worker's CPU per provider
    call. A running worker's environment does not change, so the answer is kept per scheme and
    host. ``.netrc`` credentials are not used: every provider client sends its own."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False  # the per-request lookups off; the environment is read below instead
        self._env_verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._env_proxies: dict[tuple[str, str], dict[str, str]] = {}

    def merge_environment_settings(self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        text = url.decode() if isinstance(url, bytes) else str(url or "")
        parts = urlsplit(text)
        host = (parts.scheme, parts.netloc)
        found = self._env_proxies.get(host)
        if found is None:
            no_proxy = proxies.get("no_proxy") if proxies else None
            found = self._env_proxies[host] = dict(get_environ_proxies(text, no_proxy=no_proxy))
        merged = dict(proxies or {})
        for scheme, proxy in found.items():
            merged.setdefault(scheme, proxy)
        if (verify is True or verify is None) and self._env_verify:
            verify = self._env_verify
        return super().merge_environment_settings(url, merged, stream, verify, cert)


def pooled_session(pool_size: int = 20) -> requests.Session:
    """A keep-alive session (the environment read once per host); retries are left to Celery, so
    the adapter does none."""
    session = EnvironmentOnceSession()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def request(
    session: requests.Session, method: str, url: str, *, what: str, timeout: float, **kwargs: Any
) -> requests.Response:
    """Send a request; raise TransientError (retry) or PermanentError (don't) for failures.

    ``what`` names the call in error messages; URLs and headers are never put in them,
    so no secret (query-string keys, bearer tokens) can leak into a log.
    """
    provider = what.split(" ", 1)[0]
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.ConnectTimeout as exc:  # no connection: nothing was sent
        PROVIDER_RESPONSES.labels(provider, "connection").inc()
        raise TransientError(f"{what}: could not connect within {timeout}s") from exc
    except requests.Timeout as exc:  # sent, and no answer in time: it may have been acted on
        PROVIDER_RESPONSES.labels(provider, "timeout").inc()
        raise OutcomeUnknown(f"{what}: timed out after {timeout}s") from exc
    except requests.ConnectionError as exc:
        PROVIDER_RESPONSES.labels(provider, "connection").inc()
        raise TransientError(f"{what}: connection failed") from exc
    _check_status(what, provider, response.status_code, response.headers, response.json)
    return response


def _check_status(what: str, provider: str, status: int, headers: Any, body: Callable[[], Any]) -> None:
    """Count the answer; raise what a 429, a 5xx or another 4xx means."""
    PROVIDER_RESPONSES.labels(provider, str(status)).inc()
    if status == 429:
        raise RateLimited(
            f"{what}: rate limited (429)", retry_after_seconds=retry_after_seconds(headers.get("Retry-After"))
        )
    if status >= 500:
        raise TransientError(
            f"{what}: upstream error {status}", retry_after_seconds=retry_after_seconds(headers.get("Retry-After"))
        )
    if status >= 400:
        raise UpstreamRefused(f"{what}: refused with {status} {_short_reason(body)}".rstrip(), status)


class DirectUpstream:
    """One upstream's keep-alive connections through urllib3 itself, for the call made once per
    SMS: requests' per-call layers (preparing the request, cookies, hooks, merging the settings)
    were half of a provider call's CPU. Failures mean what ``request`` makes of them; proxies and
    the CA bundle come from the environment as requests would read them, once."""

    def __init__(self, base_url: str, pool_size: int = 20) -> None:
        scheme = urlsplit(base_url).scheme
        proxies = get_environ_proxies(base_url)
        proxy = proxies.get(scheme) or proxies.get("all")
        ca_certs = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
        self._http: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, maxsize=pool_size, retries=False, ca_certs=ca_certs)
            if proxy
            else urllib3.PoolManager(maxsize=pool_size, retries=False, ca_certs=ca_certs)
        )

    def post_json(
        self, url: str, payload: Any, *, what: str, timeout: float, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        """POST ``payload`` as JSON; the answer, or TransientError / OutcomeUnknown / RateLimited /
        UpstreamRefused as ``request`` raises them."""
        provider = what.split(" ", 1)[0]
        body = json.dumps(payload, separators=(",", ":")).encode()
        sent = {"Content-Type": "application/json", **headers}
        try:
            response = self._http.request("POST", url, body=body, headers=sent, timeout=timeout, retries=False)
        except NewConnectionError as exc:  # refused, unreachable: nothing was sent
            PROVIDER_RESPONSES.labels(provider, "connection").inc()
            raise TransientError(f"{what}: connection failed") from exc
        except ConnectTimeoutError as exc:  # no connection: nothing was sent
            PROVIDER_RESPONSES.labels(provider, "connection").inc()
            raise TransientError(f"{what}: could not connect within {timeout}s") from exc
        except ReadTimeoutError as exc:  # sent, and no answer in time: it may have been acted on
            PROVIDER_RESPONSES.labels(provider, "timeout").inc()
            raise OutcomeUnknown(f"{what}: timed out after {timeout}s") from exc
        except urllib3.exceptions.HTTPError as exc:  # reset, closed, a broken answer
            PROVIDER_RESPONSES.labels(provider, "connection").inc()
            raise TransientError(f"{what}: connection failed") from exc
        _check_status(what, provider, response.status, response.headers, response.json)
        return response


def _short_reason(body: Callable[[], Any]) -> str:
    try:
        body = body()
    except ValueError:
        return ""
    if isinstance(body, dict):
        for key in ("message", "description", "error"):
            if isinstance(body.get(key), str):
                return body[key][:200]
    return ""
