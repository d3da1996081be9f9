"""Settings: one class, the profile file under the environment, unsafe combinations refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dmd_tasks.infra.settings import load_settings
from tests.helpers import PRODUCTION


def test_visibility_timeout_shorter_than_countdown_plus_time_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match="visibility_timeout_seconds=100 must exceed"):
        load_settings(visibility_timeout_seconds=100, retry_backoff_max_seconds=60, task_time_limit_seconds=90)


def test_soft_limit_must_be_below_hard_limit() -> None:
    with pytest.raises(ValidationError, match="soft"):
        load_settings(task_soft_time_limit_seconds=90, task_time_limit_seconds=90)


def test_a_generator_run_must_leave_room_for_its_last_chunk_within_the_soft_limit() -> None:
    with pytest.raises(ValidationError, match="generate_run_seconds"):
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
    with pytest.raises(ValidationError) as raised:
        load_settings()
    lines = str(raised.value).splitlines()
    assert any("aws_account_id is the example account 123456789012" in line for line in lines)
    assert any("redis_url must use TLS and a password" in line for line in lines)
    assert any("mongo_url is not set" in line for line in lines)
    assert any("accounts_base_url is a placeholder (accounts.example.com)" in line for line in lines)


def test_real_aws_settings_without_placeholders_load() -> None:
    settings = load_settings(**{**PRODUCTION, "aws_endpoint_url": None})
    assert settings.placeholders() == []
    # and the local stack (an endpoint) is not held to them
    assert load_settings().placeholders() == []
