"""Settings: one class, the profile file under the environment, unsafe combinations refused."""

from __future__ import annotations

import pytest

from dmd_tasks.infra.settings import SettingsError, load_settings
from tests.helpers import PRODUCTION


def test_visibility_timeout_shorter_than_countdown_plus_time_limit_is_refused() -> None:
    with pytest.raises(SettingsError, match="DMD_VISIBILITY_TIMEOUT_SECONDS=100 must exceed"):
        load_settings(visibility_timeout_seconds=100, retry_backoff_max_seconds=60, task_time_limit_seconds=90)


def test_soft_limit_must_be_below_hard_limit() -> None:
    with pytest.raises(SettingsError, match="DMD_TASK_SOFT_TIME_LIMIT_SECONDS must be below"):
        load_settings(task_soft_time_limit_seconds=90, task_time_limit_seconds=90)


def test_a_generator_run_must_leave_room_for_its_last_chunk_within_the_soft_limit() -> None:
    with pytest.raises(SettingsError, match="DMD_GENERATE_RUN_SECONDS must be at most half"):
        load_settings(generate_run_seconds=40, task_soft_time_limit_seconds=60)
    assert load_settings(task_soft_time_limit_seconds=15, task_time_limit_seconds=20).generate_run_budget_seconds == 5
    assert load_settings(generate_run_seconds=10).generate_run_budget_seconds == 10


def test_environment_overrides_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMD_TABLE_NAME", "other-table")
    assert load_settings().table_name == "other-table"


def test_the_aws_profile_as_shipped_refuses_to_start_and_says_each_placeholder_on_its_own_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (the test session's own endpoint, Redis and provider URLs out of the way)
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "REDIS_URL", "ACCOUNTS_BASE_URL"):
        monkeypatch.delenv(f"DMD_{name}", raising=False)
    monkeypatch.setenv("DMD_PROFILE", "aws")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    lines = str(raised.value).splitlines()
    assert any("DMD_AWS_ACCOUNT_ID is the example account 123456789012" in line for line in lines)
    assert any("DMD_REDIS_URL must use TLS and a password" in line for line in lines)
    assert any("DMD_MONGO_URL is not set" in line for line in lines)
    assert any("DMD_ACCOUNTS_BASE_URL is a placeholder (accounts.example.com)" in line for line in lines)


def test_real_aws_settings_without_placeholders_load() -> None:
    settings = load_settings(**{**PRODUCTION, "aws_endpoint_url": None})
    assert settings.placeholders() == []
    # and the local stack (an endpoint) is not held to them
    assert load_settings().placeholders() == []


def test_a_value_that_does_not_parse_is_named_by_its_variable_and_not_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMD_SQS_WAIT_TIME_SECONDS", "twenty")
    monkeypatch.setenv("DMD_SMS_PROVIDER", "carrier-pigeon")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "DMD_SQS_WAIT_TIME_SECONDS: Input should be a valid integer" in message
    assert "DMD_SMS_PROVIDER: Input should be 'http' or 'eum'" in message
    assert "twenty" not in message and "carrier-pigeon" not in message  # a value may be a secret


@pytest.mark.parametrize(
    ("environment", "region"),
    [
        ({}, "us-east-1"),
        ({"AWS_DEFAULT_REGION": "eu-west-2"}, "eu-west-2"),
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-2"}, "eu-west-1"),
        ({"DMD_AWS_REGION": "ap-south-1", "AWS_REGION": "eu-west-1"}, "ap-south-1"),
    ],
)
def test_the_region_is_boto3s_unless_dmd_names_one(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], region: str
) -> None:
    for name in ("DMD_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert load_settings().aws_region == region
