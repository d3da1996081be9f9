"""Client of the simulators' ``/_sim`` control API, for tests and benchmarks."""

from __future__ import annotations

from typing import Any

import requests


class SimulatorControl:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def health(self) -> dict[str, Any]:
        """Providers served, and the simulators' CPU priority (``nice``)."""
        return requests.get(f"{self.base_url}/_sim/health", timeout=5).json()

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.base_url}/_sim/stats", timeout=5).json()

    def configure(self, **providers: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(f"{self.base_url}/_sim/config", json=providers, timeout=5)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        requests.post(f"{self.base_url}/_sim/reset", timeout=5).raise_for_status()

    def bitly_calls(self, long_url: str) -> int:
        return int(self.stats()["bitly"]["calls_by_long_url"].get(long_url, 0))

    def sms_sale(self, sale_id: str, times: bool = False) -> dict[str, Any]:
        """A sale's messages at the provider; with ``times``, when each was accepted."""
        params = {"times": "1"} if times else {}
        return requests.get(f"{self.base_url}/_sim/sms/sales/{sale_id}", params=params, timeout=5).json()

    def sms_messages_to(self, phone: str) -> int:
        return int(requests.get(f"{self.base_url}/_sim/sms/recipients/{phone}", timeout=5).json()["messages"])

    def eum_message(self, message_id: str) -> dict[str, Any] | None:
        """What End User Messaging was asked to send (destination, context, TTL...), or None."""
        response = requests.get(f"{self.base_url}/_sim/eum/messages/{message_id}", timeout=5)
        return None if response.status_code == 404 else response.json()
