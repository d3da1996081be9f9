"""The SMS provider's send API: ``POST /sms/v1/messages`` with an idempotency key.

The provider answers a repeated ``Idempotency-Key`` with the first result and sends
nothing new, so a send retried after a crash never reaches the fan twice.
"""

from __future__ import annotations

from dmd_tasks.clients.http import DirectUpstream
from dmd_tasks.domain.errors import PermanentError
from dmd_tasks.infra.settings import Settings


class SmsClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        sender_id: str = "DMD",
        timeout_seconds: float = 5.0,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/sms/v1/messages"
        self._auth = f"Bearer {api_key}"
        self._sender = sender_id
        self._timeout = timeout_seconds
        self._upstream = DirectUpstream(base_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> SmsClient:
        return cls(
            settings.sms_base_url,
            settings.sms_api_key.get_secret_value(),
            sender_id=settings.sms_sender_id,
            timeout_seconds=settings.sms_timeout_seconds,
        )

    def send(self, to: str, body: str, *, idempotency_key: str) -> str:
        response = self._upstream.post_json(
            self._url,
            {"to": to, "from": self._sender, "body": body, "reference": idempotency_key},
            what="sms send",
            timeout=self._timeout,
            headers={"Authorization": self._auth, "Idempotency-Key": idempotency_key},
        )
        try:
            message_id = response.json()["message_id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError("sms send: response has no message_id") from exc
        if not isinstance(message_id, str) or not message_id:
            raise PermanentError("sms send: empty message_id")
        return message_id
