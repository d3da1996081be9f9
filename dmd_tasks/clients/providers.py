"""The SMS providers' clients behind one interface (``dmd_tasks.domain.providers``): the HTTP
provider and AWS End User Messaging, built from the settings."""

from __future__ import annotations

from dmd_tasks.clients.eum import EumSmsClient, client_config
from dmd_tasks.clients.sms import SmsClient
from dmd_tasks.domain.providers import EUM, HTTP, SmsProvider
from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import Settings


class HttpProvider:
    """The HTTP provider API (``dmd_tasks.clients.sms``): the notification id is its idempotency key."""

    capabilities = HTTP

    def __init__(self, client: SmsClient) -> None:
        self._client = client

    def send(self, to: str, body: str, *, notification_id: str, validity_seconds: float | None = None) -> str:
        return self._client.send(to, body, idempotency_key=notification_id)


class EumProvider:
    """AWS End User Messaging SMS (``dmd_tasks.clients.eum``): the notification id rides in
    ``Context``; the message's validity becomes its ``TimeToLive``."""

    capabilities = EUM

    def __init__(self, client: EumSmsClient) -> None:
        self._client = client

    def send(self, to: str, body: str, *, notification_id: str, validity_seconds: float | None = None) -> str:
        return self._client.send(to, body, idempotency_key=notification_id, validity_seconds=validity_seconds)


def build_provider(settings: Settings, name: str | None = None) -> SmsProvider:
    """The provider ``name`` (default: ``settings.sms_provider``)."""
    if (name or settings.sms_provider) == "eum":
        client = aws.client_from_shared_session(
            "pinpoint-sms-voice-v2",
            *aws.credentials(settings),
            endpoint_url=settings.eum_endpoint_url,
            config=client_config(settings.sms_timeout_seconds, settings.aws_max_pool_connections),
        )
        return EumProvider(
            EumSmsClient(
                client,
                origination_identity=settings.eum_origination_identity,
                configuration_set=settings.eum_configuration_set,
                message_type=settings.eum_message_type,
            )
        )
    return HttpProvider(SmsClient.from_settings(settings))
