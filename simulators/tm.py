"""TM Discovery v2 and TM Accounts (OAuth2 client credentials), with faults and call counters.

- ``GET /discovery/v2/events/<id>.json?apikey=…``: a deterministic event for any id;
  404 for ids starting with ``missing``.
- ``POST /oauth/token`` (HTTP Basic client id/secret, ``grant_type=client_credentials``):
  a bearer token valid for ``token_ttl_seconds``.
- ``GET /accounts/v1/accounts/<id>`` with that bearer token: a deterministic profile;
  404 for ids starting with ``missing``; 401 for an unknown or expired token.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections import Counter
from typing import Any

from flask import Blueprint, jsonify, request

from simulators.faults import Faults


def _fail(faults: Faults) -> Any:
    failure = faults.apply()
    if not isinstance(failure, tuple):
        return None
    status, headers = failure
    return (
        jsonify(fault={"faultstring": "Rate limit quota violation" if status == 429 else "Upstream error"}),
        status,
        headers,
    )


class DiscoverySimulator:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.faults = Faults()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def configure(self, values: dict[str, Any]) -> None:
        self.faults.update(values)

    def public_config(self) -> dict[str, float]:
        return self.faults.public()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": sum(self.calls.values()),
                "calls_by_event": dict(self.calls),
                **{f"responses_{k}": v for k, v in self.faults.counters.items()},
            }

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.faults = Faults()

    def blueprint(self) -> Blueprint:
        bp = Blueprint("discovery", __name__)

        @bp.get("/discovery/v2/events/<event_id>.json")
        def event(event_id: str) -> Any:
            if request.args.get("apikey") != self.api_key:
                return jsonify(fault={"faultstring": "Invalid ApiKey"}), 401
            with self._lock:
                self.calls[event_id] += 1
            failed = _fail(self.faults)
            if failed is not None:
                return failed
            if event_id.startswith("missing"):
                return jsonify(errors=[{"code": "DIS1004", "detail": "Resource not found"}]), 404
            digest = int(hashlib.sha256(event_id.encode()).hexdigest(), 16)
            day = 1 + digest % 28
            return jsonify(
                {
                    "id": event_id,
                    "name": f"Simulated Event {event_id}",
                    "type": "event",
                    "url": f"https://www.ticketmaster.com/event/{event_id}",
                    "dates": {
                        "start": {
                            "localDate": f"2027-03-{day:02d}",
                            "localTime": "19:30:00",
                            "dateTime": f"2027-03-{day:02d}T23:30:00Z",
                        },
                        "timezone": "America/New_York",
                    },
                    "sales": {
                        "public": {
                            "startDateTime": "2026-12-01T15:00:00Z",
                            "endDateTime": f"2027-03-{day:02d}T23:00:00Z",
                        },
                        "presales": [
                            {
                                "name": "Fan presale",
                                "startDateTime": "2026-11-28T15:00:00Z",
                                "endDateTime": "2026-11-30T03:00:00Z",
                            }
                        ],
                    },
                    "_embedded": {
                        "venues": [
                            {
                                "id": f"KovZ{digest % 10000:04d}",
                                "name": "Simulated Arena",
                                "city": {"name": "New York"},
                                "state": {"stateCode": "NY"},
                                "country": {"countryCode": "US"},
                                "address": {"line1": "4 Penn Plaza"},
                                "timezone": "America/New_York",
                            }
                        ]
                    },
                }
            )

        return bp


class AccountsSimulator:
    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.faults = Faults()
        self.token_ttl_seconds = 3600.0
        self.tokens: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()

    def configure(self, values: dict[str, Any]) -> None:
        self.faults.update(values)
        if "token_ttl_seconds" in values:
            self.token_ttl_seconds = float(values["token_ttl_seconds"])

    def public_config(self) -> dict[str, float]:
        return {**self.faults.public(), "token_ttl_seconds": self.token_ttl_seconds}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.counters)

    def reset(self) -> None:
        with self._lock:
            self.tokens.clear()
            self.counters.clear()
            self.faults = Faults()
            self.token_ttl_seconds = 3600.0

    def blueprint(self) -> Blueprint:
        bp = Blueprint("accounts", __name__)

        @bp.post("/oauth/token")
        def token() -> Any:
            expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
            if request.headers.get("Authorization") != f"Basic {expected}":
                return jsonify(error="invalid_client"), 401
            if request.form.get("grant_type") != "client_credentials":
                return jsonify(error="unsupported_grant_type"), 400
            value = uuid.uuid4().hex
            with self._lock:
                self.counters["tokens_issued"] += 1
                self.tokens[value] = time.time() + self.token_ttl_seconds
            return jsonify(access_token=value, token_type="Bearer", expires_in=int(self.token_ttl_seconds))

        @bp.get("/accounts/v1/accounts/<account_id>")
        def account(account_id: str) -> Any:
            header = request.headers.get("Authorization", "")
            token = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
            with self._lock:
                self.counters["account_calls"] += 1
                valid = self.tokens.get(token, 0) > time.time()
            if not valid:
                return jsonify(error="invalid_token"), 401
            failed = _fail(self.faults)
            if failed is not None:
                return failed
            if account_id.startswith("missing"):
                return jsonify(error="not_found"), 404
            return jsonify(
                {
                    "accountId": account_id,
                    "name": {"first": "Sam", "last": f"Fan{account_id[-4:]}"},
                    "email": f"{account_id}@example.com",
                    "address": {"countryCode": "US"},
                    "preferences": {"marketingOptIn": len(account_id) % 2 == 0},
                }
            )

        return bp
