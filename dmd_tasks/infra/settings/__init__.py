"""Every setting of dmd, in one place: ``Settings``, the union of the sections in this package
(``platform``, ``pipeline``, ``sms``), each section a class of fields with what they do.

This is the only package that knows environment variable names: each field
``foo_bar`` is read from ``DMD_FOO_BAR``. A profile (``DMD_PROFILE``, default
``local``) selects a file of defaults in ``config/`` (``local.env`` for the
embedded stack, ``aws.env`` for real AWS); the environment overrides it.

Nothing is read at import time: ``get_settings()`` parses the profile and the
environment on its first call, once per process.
"""

from __future__ import annotations

import functools
import json
import os
import sysconfig
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dmd_tasks.domain.phones import is_region
from dmd_tasks.infra.settings.pipeline import PipelineSettings, ShorteningSettings
from dmd_tasks.infra.settings.platform import (
    AwsSettings,
    BridgeSettings,
    CelerySettings,
    LocalStackSettings,
    LoggingSettings,
    MonitoringSettings,
    RedisSettings,
)
from dmd_tasks.infra.settings.sms import QuerySettings, SmsSettings


def _config_dir() -> Path:
    """config/: the checkout's, or (an installed package) the copy in ``<prefix>/share/dmd``."""
    checkout = Path(__file__).resolve().parents[3] / "config"
    if (checkout / "local.env").is_file() and (checkout.parent / "dmd_tasks").is_dir():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "dmd" / "config"


CONFIG_DIR = _config_dir()


class UnsafeConfiguration(ValueError):
    """A combination of settings that would make the pipeline misbehave (e.g. duplicate SQS deliveries)."""


def _profile_file() -> Path:
    profile = os.environ.get("DMD_PROFILE", "local")
    path = CONFIG_DIR / f"{profile}.env"
    if not path.is_file():
        raise UnsafeConfiguration(f"DMD_PROFILE={profile!r}: no profile file {path.name} in config/")
    return path


# The sections, last first: pydantic lists a union's fields from its last base (docs/settings.md
# takes them in SECTIONS' order, below).
class Settings(
    LoggingSettings,
    MonitoringSettings,
    LocalStackSettings,
    BridgeSettings,
    QuerySettings,
    SmsSettings,
    PipelineSettings,
    ShorteningSettings,
    CelerySettings,
    RedisSettings,
    AwsSettings,
    BaseSettings,
):
    """All of dmd's configuration. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix="DMD_", extra="ignore", frozen=True, populate_by_name=True)

    #: The profile file of defaults in config/ (``local``: the embedded stack; ``aws``: real AWS).
    #: Read from ``DMD_PROFILE`` before anything else.
    profile: str = "local"

    def placeholders(self) -> list[str]:
        """What still holds a placeholder or an unsafe local default, one line each: checked when
        the settings name real AWS (no ``aws_endpoint_url``), where every process refuses them."""
        if self.aws_endpoint_url is not None:
            return []
        problems = []
        if self.aws_account_id == "123456789012":
            problems.append("DMD_AWS_ACCOUNT_ID is the example account 123456789012: set it")
        providers = {self.sms_provider, self.sms_failover_provider}
        urls = {"accounts_base_url": self.accounts_base_url}
        if "http" in providers:
            urls["sms_base_url"] = self.sms_base_url
        for name, url in urls.items():
            host = (urlsplit(url).hostname or "").lower()
            if host == "example.com" or host.endswith(".example.com"):
                problems.append(f"{variable(name)} is a placeholder ({host}): set it")
        redis_urls: dict[str, str | None] = {"redis_url": self.redis_url, "result_backend_url": self.result_backend_url}
        for name, address in redis_urls.items():
            if address is None:
                continue
            parts = urlsplit(address)
            if parts.scheme != "rediss" or not parts.password:
                problems.append(
                    f"{variable(name)} must use TLS and a password (rediss://:PASSWORD@host:6379/0), "
                    f"not {parts.scheme}:// "
                    f"{'with' if parts.password else 'without'} a password"
                )
        if self.mongo_url is None:
            problems.append("DMD_MONGO_URL is not set: campaigns would live on one container's local disk")
        return problems

    def account_scopes(self) -> dict[str, frozenset[str] | None]:
        """``api_account_scopes`` read: API key → the account ids it may read (None: every one)."""
        raw = json.loads(self.api_account_scopes.get_secret_value() or "{}")
        return {str(k): None if v == "*" else frozenset(str(a) for a in v) for k, v in raw.items()}

    @model_validator(mode="after")
    def _check_visibility_timeout(self) -> Settings:
        needed = self.max_countdown_seconds + self.task_time_limit_seconds
        if self.visibility_timeout_seconds <= needed:
            raise UnsafeConfiguration(
                f"DMD_VISIBILITY_TIMEOUT_SECONDS={self.visibility_timeout_seconds} must exceed the longest "
                f"countdown a task can get ({self.max_countdown_seconds}s) plus the hard time limit "
                f"({self.task_time_limit_seconds}s) = {needed}s; otherwise SQS redelivers waiting or "
                f"running tasks and they execute twice"
            )
        run_seconds = self.generate_run_seconds
        if run_seconds is not None and run_seconds * 2 > self.task_soft_time_limit_seconds:
            raise UnsafeConfiguration(
                "DMD_GENERATE_RUN_SECONDS must be at most half of DMD_TASK_SOFT_TIME_LIMIT_SECONDS: a run stops "
                "handing over only after its current chunk, which may take as long again"
            )
        if self.task_soft_time_limit_seconds >= self.task_time_limit_seconds:
            raise UnsafeConfiguration("DMD_TASK_SOFT_TIME_LIMIT_SECONDS must be below DMD_TASK_TIME_LIMIT_SECONDS")
        send_worst_case = self.send_rate_wait_seconds + self.sms_timeout_seconds + self.task_time_limit_seconds
        if self.send_lease_seconds <= send_worst_case:
            raise UnsafeConfiguration(
                f"DMD_SEND_LEASE_SECONDS={self.send_lease_seconds} must exceed the worst case of one send: "
                f"DMD_SEND_RATE_WAIT_SECONDS ({self.send_rate_wait_seconds:g}) + DMD_SMS_TIMEOUT_SECONDS "
                f"({self.sms_timeout_seconds:g}) + DMD_TASK_TIME_LIMIT_SECONDS ({self.task_time_limit_seconds}) = "
                f"{send_worst_case:g}s; otherwise the reconciler takes back notifications a live worker still "
                f"sends"
            )
        if "eum" in (self.sms_provider, self.sms_failover_provider) and not self.eum_origination_identity:
            raise UnsafeConfiguration(
                "the eum provider needs DMD_EUM_ORIGINATION_IDENTITY (a phone number, sender id, pool id or ARN)"
            )
        if self.sms_failover_provider == self.sms_provider:
            raise UnsafeConfiguration(
                f"DMD_SMS_FAILOVER_PROVIDER={self.sms_failover_provider} is the primary provider: name the other one"
            )
        try:
            scopes = json.loads(self.api_account_scopes.get_secret_value() or "{}")
        except ValueError:
            scopes = None
        if not isinstance(scopes, dict) or not all(v == "*" or isinstance(v, list) for v in scopes.values()):
            raise UnsafeConfiguration(
                'DMD_API_ACCOUNT_SCOPES must be a JSON object: API key -> a list of account ids, or "*"'
            )
        problems = self.placeholders()
        if problems:
            raise UnsafeConfiguration(
                "settings for real AWS still hold placeholders:\n" + "\n".join(f"- {p}" for p in problems)
            )
        if self.phone_default_region is not None and not is_region(self.phone_default_region):
            raise UnsafeConfiguration(
                f"DMD_PHONE_DEFAULT_REGION={self.phone_default_region!r} is not a region code "
                "(ISO 3166 alpha-2, e.g. US)"
            )
        if self.bridge_start_position not in ("TRIM_HORIZON", "LATEST"):
            raise UnsafeConfiguration("DMD_BRIDGE_START_POSITION must be TRIM_HORIZON or LATEST")
        return self

    @property
    def generate_run_budget_seconds(self) -> float:
        """How long one generator run writes before it hands over (see generate_run_seconds)."""
        if self.generate_run_seconds is not None:
            return self.generate_run_seconds
        return self.task_soft_time_limit_seconds / 3

    @property
    def work_budget_seconds(self) -> float:
        """How long a task run (a scheduling tick, a send batch, a reconcile pass) takes new work:
        a third of the soft time limit, so that a run slowed by a dependency ends what it began
        well before the limit and leaves the rest to the next run (``dmd_tasks.infra.deadline``)."""
        return self.task_soft_time_limit_seconds / 3

    @property
    def max_countdown_seconds(self) -> int:
        """The longest countdown/ETA any task may be given (retries are clamped to it)."""
        return self.retry_backoff_max_seconds

    @property
    def metrics_dir(self) -> Path:
        return self.metrics_dir_override or self.run_dir / "metrics"


class SettingsError(ValueError):
    """A setting's value cannot be used: the message names its environment variable."""


def variable(field: str) -> str:
    """The environment variable a field is read from (``sqs_wait_time_seconds`` → ``DMD_SQS_WAIT_TIME_SECONDS``)."""
    return field if field.isupper() else f"DMD_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the profile file and the environment (environment wins). A value that
    does not parse raises SettingsError naming the variable(s) (never the value: it may be a secret)."""
    try:
        return Settings(_env_file=_profile_file(), **overrides)  # type: ignore[call-arg]  # pydantic-settings init option
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(
                f"{variable(where.split('.')[0])}{where[len(where.split('.')[0]) :]}: {message}" if where else message
            )
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed once."""
    return load_settings()


#: the sections of the settings, in the order docs/settings.md lists them
SECTIONS: tuple[type, ...] = (
    AwsSettings,
    RedisSettings,
    CelerySettings,
    ShorteningSettings,
    PipelineSettings,
    SmsSettings,
    QuerySettings,
    BridgeSettings,
    LocalStackSettings,
    MonitoringSettings,
    LoggingSettings,
)
