from __future__ import annotations

import email.utils
import os
import time
from typing import Any

import pytest
import requests

from dmd_tasks.clients.http import pooled_session, retry_after_seconds


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after_seconds(future) or 0) <= 31


def test_the_session_takes_proxies_and_the_ca_bundle_from_the_environment_once_per_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a proxy and a CA bundle in the environment, and a host that bypasses the proxy
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "sms.internal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp.pem")
    session = pooled_session()

    # Then a request's settings carry them as a plain session's would
    plain = requests.Session()
    for url in ("https://api.bitly.example/v4/shorten", "https://sms.internal/send"):
        ours = session.merge_environment_settings(url, {}, None, None, None)
        theirs = plain.merge_environment_settings(url, {}, None, None, None)
        assert ours["proxies"] == theirs["proxies"] and ours["verify"] == theirs["verify"] == "/etc/ssl/corp.pem"
    proxies = session.merge_environment_settings("https://api.bitly.example/x", {}, None, None, None)["proxies"]
    assert proxies["https"] == "http://proxy.internal:3128"
    assert session.merge_environment_settings("https://sms.internal/send", {}, None, None, None)["proxies"] == {}
    # an explicit verify wins over the environment's bundle
    assert session.merge_environment_settings("https://x.example/", {}, None, False, None)["verify"] is False

    # and the environment is not read again for a host already seen (a worker's environment does
    # not change: each request walking it cost a quarter of a send's CPU)
    monkeypatch.setattr(os, "environ", _Unreadable())
    again = session.merge_environment_settings("https://api.bitly.example/v4/other", {}, None, None, None)
    assert again["proxies"]["https"] == "http://proxy.internal:3128"


class _Unreadable(dict[str, str]):
    def __getitem__(self, key: str) -> str:
        raise AssertionError("the environment was read again")

    def get(self, key: str, default: object = None) -> Any:
        raise AssertionError("the environment was read again")

    def __iter__(self) -> Any:
        raise AssertionError("the environment was read again")


def test_the_direct_upstream_goes_through_the_environments_proxy_unless_its_host_bypasses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import urllib3

    from dmd_tasks.clients.http import DirectUpstream

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "sms.internal")
    proxied = DirectUpstream("https://sms.example.com")._http
    assert isinstance(proxied, urllib3.ProxyManager) and proxied.proxy is not None
    assert proxied.proxy.host == "proxy.internal" and proxied.proxy.port == 3128
    assert not isinstance(DirectUpstream("https://sms.internal")._http, urllib3.ProxyManager)
