"""The settings of the SMS providers and of the query surface (GraphQL API). Each class is one section of
``docs/settings.md``; ``Settings`` (in ``__init__``) is their union."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class SmsSettings(BaseModel):
    """SMS provider"""

    #: Which provider sends (docs/operations.md, "SMS providers"): ``http`` (the HTTP API with an
    #: idempotency key; receipts on the Kinesis status stream) or ``eum`` (AWS End User Messaging
    #: SMS; no idempotency; events through SNS to the intake queue that bridge-sqs reads).
    sms_provider: Literal["http", "eum"] = "http"
    #: A second provider (dmd_tasks/infra/failover.py): it gets ``sms_failover_weight`` of the
    #: sends while both are healthy (0: a standby) and the traffic the other loses when it fails.
    #: Its cap: ``sms_failover_parts_per_second`` (None: the same as the primary's).
    sms_failover_provider: Literal["http", "eum"] | None = None
    #: (the second provider, above) the share of sends it gets while both are healthy.
    sms_failover_weight: float = Field(default=0.5, ge=0, le=1)
    #: (the second provider, above) its cap in message parts a second; None: the primary's.
    sms_failover_parts_per_second: float | None = Field(default=None, gt=0)
    #: The HTTP SMS provider's API; locally the simulator.
    sms_base_url: str = "https://sms.example.com"
    #: The HTTP SMS provider's API key.
    sms_api_key: SecretStr = SecretStr("")
    #: Timeout of one provider call; past it the outcome is unknown (never a plain retry).
    sms_timeout_seconds: float = 5.0
    #: The sender id the HTTP provider shows.
    sms_sender_id: str = "DMD"
    #: End User Messaging: the origination identity (phone number, sender id, pool id or ARN) ...
    eum_origination_identity: str = ""
    #: ... the configuration set whose SNS event destination carries the delivery events (None: no
    #: events: every send stays ``sent`` and every unconfirmed one ends ``unknown``) ...
    eum_configuration_set: str | None = None
    #: (End User Messaging) the message type of every send.
    eum_message_type: Literal["TRANSACTIONAL", "PROMOTIONAL"] = "TRANSACTIONAL"
    #: ... and its endpoint (None: AWS's, from the region; locally the simulator serves the API).
    #: ``dmd provision`` creates the configuration set, the SNS topic ``<prefix>sms-events`` its
    #: events go to, and the topic's subscription by the intake queue ``<prefix>intake-sms-events``.
    eum_endpoint_url: str | None = None
    #: How long an unconfirmed send (no answer from a provider without idempotency) waits for the
    #: provider's event before it ends ``unknown``. Make it longer than the campaigns' validity:
    #: the provider reports an expired message (TEXT_TTL_EXPIRED) only when its TimeToLive ends.
    unconfirmed_window_seconds: float = Field(default=3_600.0, gt=0)
    #: Region (ISO 3166 alpha-2, e.g. ``US``) that reads phone numbers written without their country
    #: code, where a campaign does not set ``phoneRegion``. None: such numbers are invalid.
    phone_default_region: str | None = None


class QuerySettings(BaseModel):
    """Query surface (GraphQL API)"""

    #: Where ``dmd api`` listens.
    api_host: str = "127.0.0.1"
    #: The port ``dmd api`` listens on.
    api_port: int = 8080
    #: Accepted values of the ``x-api-key`` header (AppSync API_KEY auth).
    api_keys: list[SecretStr] = Field(default_factory=list)
    #: Which accounts each API key may read with ``accountProfile``: a JSON object, key → a list
    #: of account ids or ``"*"`` (every account). A key not named here reads no account profile.
    api_account_scopes: SecretStr = SecretStr("{}")
    #: The largest GraphQL query accepted (bytes); larger ones get a 413 with a reason.
    api_max_query_bytes: int = 8192
    #: The deepest GraphQL query accepted.
    api_max_query_depth: int = 6
    #: The most fields one GraphQL query may select.
    api_max_fields: int = 60

    #: Ticketmaster's Discovery API, for event details; locally the simulator.
    discovery_base_url: str = "https://app.ticketmaster.com"
    #: The Discovery API key (sent as ``apikey``; redacted from every log).
    discovery_api_key: SecretStr = SecretStr("")
    #: Timeout of one Discovery call.
    discovery_timeout_seconds: float = 3.0
    #: TM Discovery allows about 5 requests per second per key (shared by every API process).
    discovery_rate_per_second: float = 5.0
    #: How long event details are served from Redis before Discovery is asked again (24 h).
    event_cache_ttl_seconds: int = 86_400
    #: How long a copy is kept to serve, marked stale, when Discovery fails or rate-limits.
    event_stale_ttl_seconds: int = 604_800
    #: How long Discovery's "no such event" is remembered.
    event_missing_ttl_seconds: int = 60

    #: The account service the ``accountProfile`` query proxies; locally the simulator.
    accounts_base_url: str = "https://accounts.example.com"
    #: The account service's OAuth client id (client credentials).
    accounts_client_id: str = ""
    #: The account service's OAuth client secret.
    accounts_client_secret: SecretStr = SecretStr("")
    #: Timeout of one account-service call.
    accounts_timeout_seconds: float = 3.0
    #: How long an account profile is served from Redis.
    account_cache_ttl_seconds: int = 60
    #: A token is renewed this long before it expires.
    accounts_token_margin_seconds: int = 60
