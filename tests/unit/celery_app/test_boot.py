"""The worker's boot check: a queue whose SQS visibility timeout is not longer than the longest
countdown plus the hard time limit (SQS would hand a waiting or running task to a second worker),
or that cannot be read, is refused.

Against the session's moto server, on queues provisioned under a prefix of each test's own, so
lowering a timeout touches no queue another test uses.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dmd_tasks.celery_app.boot import check_queue_visibility
from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.settings import Settings, UnsafeConfiguration, load_settings
from dmd_tasks.infra.topology import QUEUE_NAMES
from dmd_tasks.ops.provision import ensure_queues


def prefixed(**overrides: Any) -> Settings:
    settings = load_settings(queue_name_prefix=f"t{uuid.uuid4().hex[:10]}-", **overrides)
    return settings


@pytest.fixture()
def provisioned(stack: Any) -> Settings:
    settings = prefixed()
    ensure_queues(settings)
    return settings


def test_provisioned_queues_pass(provisioned: Settings) -> None:
    assert provisioned.visibility_timeout_seconds > provisioned.max_countdown_seconds + (
        provisioned.task_time_limit_seconds
    )
    check_queue_visibility(provisioned, QUEUE_NAMES)


def test_a_queue_whose_visibility_timeout_was_lowered_is_refused_by_name(provisioned: Settings) -> None:
    # Given the send queue's visibility timeout lowered to exactly countdown + time limit (not above it)
    needed = provisioned.max_countdown_seconds + provisioned.task_time_limit_seconds
    aws.client("sqs", provisioned).set_queue_attributes(
        QueueUrl=topology.queue_url(provisioned, "send"), Attributes={"VisibilityTimeout": str(needed)}
    )

    # When a worker of that queue checks, Then it is refused, naming the queue and the figures
    with pytest.raises(UnsafeConfiguration, match=f"queue send: SQS visibility timeout {needed}s is not above"):
        check_queue_visibility(provisioned, ["send"])
    with pytest.raises(UnsafeConfiguration, match="queue send"):
        check_queue_visibility(provisioned, QUEUE_NAMES)
    # and workers of the other queues still start
    check_queue_visibility(provisioned, [q for q in QUEUE_NAMES if q != "send"])


def test_one_second_above_the_need_is_enough(provisioned: Settings) -> None:
    needed = provisioned.max_countdown_seconds + provisioned.task_time_limit_seconds
    aws.client("sqs", provisioned).set_queue_attributes(
        QueueUrl=topology.queue_url(provisioned, "query"), Attributes={"VisibilityTimeout": str(needed + 1)}
    )
    check_queue_visibility(provisioned, ["query"])


def test_a_missing_queue_is_refused_with_a_hint_to_provision(stack: Any) -> None:
    never_provisioned = prefixed()

    with pytest.raises(UnsafeConfiguration, match=r"queue generate: cannot read its attributes .*run `dmd provision`"):
        check_queue_visibility(never_provisioned, ["generate"])


def test_the_check_reads_the_need_from_the_settings_it_is_given(provisioned: Settings) -> None:
    # the same queues, checked for settings that allow longer countdowns than they were made for
    longer = load_settings(
        queue_name_prefix=provisioned.queue_name_prefix,
        retry_backoff_max_seconds=provisioned.visibility_timeout_seconds,
        visibility_timeout_seconds=provisioned.visibility_timeout_seconds * 3,
    )
    with pytest.raises(UnsafeConfiguration, match="queue short-url"):
        check_queue_visibility(longer, QUEUE_NAMES)
