from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.celeryconfig import broker_url, build
from dmd_tasks.settings import QUEUE_NAMES, load_settings


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


def test_celery_config_targets_every_queue_on_sqs() -> None:
    settings = load_settings(aws_endpoint_url="http://127.0.0.1:5999")
    conf = build(settings)
    assert conf["broker_url"] == "sqs://testing:testing@127.0.0.1:5999"
    options = conf["broker_transport_options"]
    assert options["is_secure"] is False
    assert set(options["predefined_queues"]) == {f"dmd-{q}" for q in QUEUE_NAMES}
    assert options["predefined_queues"]["dmd-send"]["url"] == "http://127.0.0.1:5999/123456789012/dmd-send"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]


def test_aws_profile_uses_default_credentials_and_https(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DMD_AWS_ENDPOINT_URL", "DMD_AWS_ACCESS_KEY_ID", "DMD_AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DMD_PROFILE", "aws")
    settings = load_settings()
    assert broker_url(settings) == "sqs://"
    conf = build(settings)
    assert conf["broker_transport_options"]["is_secure"] is True
    assert conf["broker_transport_options"]["predefined_queues"]["dmd-short-url"]["url"] == \
        "https://sqs.us-east-1.amazonaws.com/123456789012/dmd-short-url"
