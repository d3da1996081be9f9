"""Topology: every queue, dead-letter queue and stream name derived from settings in one place (no network)."""

from __future__ import annotations

from dmd_tasks.infra import topology
from dmd_tasks.infra.settings import load_settings
from dmd_tasks.infra.topology import BRIDGE_NAMES, DLQ_OWNERS, QUEUE_NAMES
from tests.helpers import PRODUCTION


def test_every_celery_queue_and_every_bridge_owns_a_dead_letter_queue() -> None:
    assert QUEUE_NAMES == ("short-url", "generate", "schedule", "send", "sms-status", "query")
    assert BRIDGE_NAMES == ("bridge-demand", "bridge-sms-status", "bridge-sqs")
    assert DLQ_OWNERS == QUEUE_NAMES + BRIDGE_NAMES
    settings = load_settings(queue_name_prefix="acme-")
    dlqs = [topology.dlq_name(settings, owner) for owner in DLQ_OWNERS]
    queues = [topology.queue_name(settings, queue) for queue in QUEUE_NAMES]
    # no two owners share a dead-letter queue, and no DLQ is also a task queue
    assert len(set(dlqs)) == len(DLQ_OWNERS)
    assert not set(dlqs) & set(queues)


def test_queue_and_dlq_names_carry_the_prefix() -> None:
    settings = load_settings(queue_name_prefix="acme-")
    assert topology.queue_name(settings, "send") == "acme-send"
    assert topology.dlq_name(settings, "send") == "acme-send-dlq"
    assert topology.dlq_name(settings, "bridge-demand") == "acme-bridge-demand-dlq"


def test_urls_on_an_endpoint_are_built_without_a_round_trip_and_without_a_double_slash() -> None:
    settings = load_settings(aws_endpoint_url="http://127.0.0.1:4566/", aws_account_id="000000000042")
    assert topology.sqs_url(settings, "anything") == "http://127.0.0.1:4566/000000000042/anything"
    assert topology.queue_url(settings, "sms-status") == "http://127.0.0.1:4566/000000000042/dmd-sms-status"
    assert topology.dlq_url(settings, "bridge-sms-status") == (
        "http://127.0.0.1:4566/000000000042/dmd-bridge-sms-status-dlq"
    )


def test_urls_on_real_aws_use_the_regional_sqs_endpoint() -> None:
    settings = load_settings(**{**PRODUCTION, "aws_endpoint_url": None, "aws_region": "eu-west-1"})
    assert topology.queue_url(settings, "query") == "https://sqs.eu-west-1.amazonaws.com/111122223333/dmd-query"
    assert topology.dlq_url(settings, "query") == "https://sqs.eu-west-1.amazonaws.com/111122223333/dmd-query-dlq"


def test_kinesis_streams_are_the_status_stream_alone_without_a_demand_stream() -> None:
    settings = load_settings(sms_status_stream_name="statuses", demand_kinesis_stream_name=None)
    assert topology.kinesis_streams(settings) == ["statuses"]


def test_kinesis_streams_add_the_demand_stream_when_configured() -> None:
    settings = load_settings(sms_status_stream_name="statuses", demand_kinesis_stream_name="demand-changes")
    assert topology.kinesis_streams(settings) == ["statuses", "demand-changes"]
    # an empty name means "not configured", like None
    assert topology.kinesis_streams(load_settings(demand_kinesis_stream_name="")) == [
        load_settings().sms_status_stream_name
    ]
