"""Worker boot checks: refuse to start when the broker would run a task twice."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError
from celery import bootsteps

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.settings import Settings, UnsafeConfiguration, get_settings


def check_queue_visibility(settings: Settings, queues: Iterable[str]) -> None:
    """Raise UnsafeConfiguration if a task queue's visibility timeout is too short for our countdowns."""
    sqs = aws.client("sqs", settings)
    needed = settings.max_countdown_seconds + settings.task_time_limit_seconds
    for queue in queues:
        try:
            attrs = sqs.get_queue_attributes(
                QueueUrl=topology.queue_url(settings, queue), AttributeNames=["VisibilityTimeout"]
            )["Attributes"]
        except ClientError as exc:
            raise UnsafeConfiguration(
                f"queue {queue}: cannot read its attributes ({exc.response['Error']['Code']}); run `dmd provision`"
            ) from exc
        visibility = int(attrs["VisibilityTimeout"])
        if visibility <= needed:
            raise UnsafeConfiguration(
                f"queue {queue}: SQS visibility timeout {visibility}s is not above the longest countdown plus "
                f"time limit ({needed}s); tasks would run twice. Run `dmd provision` or raise the timeout."
            )


class QueueVisibilityCheck(bootsteps.Step):
    """Worker boot step: refuse to start when a consumed SQS queue would redeliver waiting or running tasks.

    (A boot step and not a ``worker_init`` handler: Celery logs and ignores exceptions
    raised by signal handlers, so a handler could not stop the worker.)
    """

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        queues = list(worker.app.amqp.queues.consume_from or topology.QUEUE_NAMES)
        check_queue_visibility(get_settings(), queues)
        super().__init__(worker, **kwargs)
