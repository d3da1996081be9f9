"""The Celery configuration built from settings: SQS queues, routes, beat, settings-derived task options."""

from __future__ import annotations

import pytest

from dmd_tasks.celery_app.config import broker_url, build
from dmd_tasks.infra import topology
from dmd_tasks.infra.settings import load_settings
from dmd_tasks.infra.topology import QUEUE_NAMES
from tests.helpers import PRODUCTION


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
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(f"DMD_{name.upper()}", value)
    settings = load_settings()
    assert broker_url(settings) == "sqs://"
    conf = build(settings)
    assert conf["broker_transport_options"]["is_secure"] is True
    assert (
        conf["broker_transport_options"]["predefined_queues"]["dmd-short-url"]["url"]
        == "https://sqs.us-east-1.amazonaws.com/111122223333/dmd-short-url"
    )


def test_routes_beat_and_task_options_come_from_routing_and_settings() -> None:
    settings = load_settings(
        shorten_max_retries=7, status_max_retries=3, send_task_rate_limit="5/s", retry_backoff_max_seconds=60
    )
    conf = build(settings)
    assert conf["task_routes"][topology.SEND_NOTIFICATIONS] == {"queue": "send"}
    assert set(conf["task_routes"]) == set(topology.TASK_QUEUES)
    assert conf["imports"] == list(topology.TASK_MODULES)
    beat = {entry["task"]: entry for entry in conf["beat_schedule"].values()}
    assert beat[topology.CLAIM_DUE_SALES]["options"]["queue"] == "generate"
    assert beat[topology.SCHEDULE_NOTIFICATIONS]["schedule"] == settings.schedule_interval_seconds
    annotations = conf["task_annotations"]
    assert annotations["*"]["retry_backoff_max"] == 60
    assert annotations[topology.SHORTEN_EVENT_URL]["max_retries"] == 7
    assert annotations[topology.RECORD_SMS_STATUS]["max_retries"] == 3
    assert annotations[topology.SEND_NOTIFICATIONS]["rate_limit"] == "5/s"
    assert conf["monitor_broker_url"] == settings.redis_url


def test_a_receipt_batch_killed_by_its_hard_time_limit_goes_back_to_sqs() -> None:
    from dmd_tasks.celery_app import app
    from dmd_tasks.pipeline import stage5_sms_status  # noqa: F401  (registers the task)

    task = app.tasks[topology.RECORD_SMS_STATUS]
    # requeued, not acknowledged; a batch that failed for good is a dead letter, once
    assert task.acks_late and task.acks_on_timeout is False  # type: ignore[attr-defined]
    assert task.acks_on_failure is True  # type: ignore[attr-defined]
