"""Settings: one class, the profile file under the environment, unsafe combinations refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dmd_tasks.infra.settings import load_settings


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
