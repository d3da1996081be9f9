"""Bitly v4: ``POST /v4/shorten`` with Bearer auth; the same long URL always gets the same link."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request

from simulators.faults import Faults


class BitlySimulator:
    def __init__(self, token: str) -> None:
        self.token = token
        self.faults = Faults()
        self.calls_by_long_url: Counter[str] = Counter()
        self.links: dict[str, str] = {}
        self._lock = threading.Lock()

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "calls": sum(self.calls_by_long_url.values()),
                "calls_by_long_url": dict(self.calls_by_long_url),
                "links": len(self.links),
                **{f"responses_{k}": v for k, v in self.faults.counters.items()},
            }

    def configure(self, values: dict[str, object]) -> None:
        self.faults.update(values)

    def public_config(self) -> dict[str, float]:
        return self.faults.public()

    def reset(self) -> None:
        with self._lock:
            self.calls_by_long_url.clear()
            self.links.clear()
            self.faults = Faults()

    def blueprint(self) -> Blueprint:
        bp = Blueprint("bitly", __name__)

        @bp.post("/v4/shorten")
        def shorten() -> tuple[Response, int] | tuple[Response, int, dict[str, str]]:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return jsonify(
                    message="FORBIDDEN", description="You are currently forbidden to access this resource."
                ), 403
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                body = {}
            long_url = body.get("long_url")
            if not isinstance(long_url, str) or not long_url.startswith(("http://", "https://")):
                return jsonify(message="INVALID_ARG_LONG_URL", resource="bitlinks", field="long_url"), 400
            failure = self.faults.apply()
            if isinstance(failure, tuple):
                status, headers = failure
                return jsonify(message="RATE_LIMIT_EXCEEDED" if status == 429 else "INTERNAL_ERROR"), status, headers
            domain = body.get("domain") or "bit.ly"
            with self._lock:
                self.calls_by_long_url[long_url] += 1
                created = long_url not in self.links
                if created:
                    self.links[long_url] = hashlib.sha256(long_url.encode()).hexdigest()[:7]
                code = self.links[long_url]
            link_id = f"{domain}/{code}"
            return jsonify(
                created_at=datetime.now(UTC).isoformat(),
                id=link_id,
                link=f"https://{link_id}",
                long_url=long_url,
                archived=False,
                tags=[],
                deeplinks=[],
                custom_bitlinks=[],
                references={"group": "https://api-ssl.bitly.com/v4/groups/Bsim"},
            ), 201 if created else 200

        return bp
