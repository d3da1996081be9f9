"""The names of every queue, dead-letter queue and stream, derived from settings in one place.

- one SQS queue per Celery queue (``<prefix><queue>``), each with a dead-letter queue
  (``<prefix><queue>-dlq``) that SQS's redrive policy feeds;
- one dead-letter queue per bridge (``<prefix><bridge>-dlq``) for records it cannot route;
- the intake queues ``bridge-sqs`` reads (``<prefix>intake-<kind>``), each with a dead-letter queue;
- the SNS topic End User Messaging publishes its SMS events to (``<prefix>sms-events``),
  subscribed by the intake queue ``intake-sms-events``;
- the Kinesis stream of SMS statuses, and optionally the demand table's Kinesis stream;
- every task's name and queue, and ``TaskCall`` (one message to enqueue). Task names are the
  names on the wire: they stay the same when code moves, so messages already queued and dead
  letters waiting for replay still find their task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmd_tasks.infra.settings import Settings

#: Every Celery queue of the pipeline, one worker process per queue.
QUEUE_NAMES: tuple[str, ...] = ("short-url", "generate", "schedule", "send", "sms-status", "query")
#: Processes that turn stream records into tasks; each has a dead-letter queue of its own.
BRIDGE_NAMES: tuple[str, ...] = ("bridge-demand", "bridge-sms-status", "bridge-sqs")
#: Queues others write to and ``bridge-sqs`` reads: demand-table changes (EventBridge Pipes' SQS
#: target) and SMS provider events (End User Messaging's SNS event destination). Each has a
#: dead-letter queue its redrive policy feeds (``<prefix>intake-<kind>-dlq``).
INTAKE_QUEUES: tuple[str, ...] = ("intake-demand", "intake-sms-events")
#: Every name that has a dead-letter queue.
DLQ_OWNERS: tuple[str, ...] = (*QUEUE_NAMES, *BRIDGE_NAMES)


def queue_name(settings: Settings, queue: str) -> str:
    """SQS name of a Celery queue."""
    return f"{settings.queue_name_prefix}{queue}"


def sms_events_topic(settings: Settings) -> str:
    """Name of the SNS topic End User Messaging's configuration set publishes its events to."""
    return f"{settings.queue_name_prefix}sms-events"


def dlq_name(settings: Settings, owner: str) -> str:
    """SQS name of the dead-letter queue beside a Celery queue or a bridge."""
    return f"{settings.queue_name_prefix}{owner}-dlq"


def sqs_url(settings: Settings, sqs_name: str) -> str:
    """The URL of an SQS queue by its name (no GetQueueUrl round trip)."""
    base = settings.aws_endpoint_url or f"https://sqs.{settings.aws_region}.amazonaws.com"
    return f"{base.rstrip('/')}/{settings.aws_account_id}/{sqs_name}"


def queue_url(settings: Settings, queue: str) -> str:
    """The URL of a Celery queue's SQS queue."""
    return sqs_url(settings, queue_name(settings, queue))


def dlq_url(settings: Settings, owner: str) -> str:
    """The URL of the dead-letter queue of a Celery queue or a bridge."""
    return sqs_url(settings, dlq_name(settings, owner))


def kinesis_streams(settings: Settings) -> list[str]:
    """The Kinesis streams dmd reads: SMS statuses, and the demand table's when configured."""
    streams = [settings.sms_status_stream_name]
    if settings.demand_kinesis_stream_name:
        streams.append(settings.demand_kinesis_stream_name)
    return streams


# --- task names, in pipeline order -------------------------------------------------------------
SHORTEN_EVENT_URL = "dmd_tasks.shorten.shorten_event_url"
CLAIM_DUE_SALES = "dmd_tasks.generate.claim_due_sales"
GENERATE_NOTIFICATIONS = "dmd_tasks.generate.generate_notifications"
SCHEDULE_NOTIFICATIONS = "dmd_tasks.schedule.schedule_notifications"
SEND_NOTIFICATIONS = "dmd_tasks.send.send_notifications"
RECORD_SMS_STATUS = "dmd_tasks.sms_status.record_sms_status"
RECONCILE = "dmd_tasks.reconcile.reconcile_sales"
WARM_EVENT_DETAILS = "dmd_tasks.query.warm_event_details"

#: The queue (and so the worker process) of every task.
TASK_QUEUES: dict[str, str] = {
    SHORTEN_EVENT_URL: "short-url",
    CLAIM_DUE_SALES: "generate",
    GENERATE_NOTIFICATIONS: "generate",
    SCHEDULE_NOTIFICATIONS: "schedule",
    SEND_NOTIFICATIONS: "send",
    RECORD_SMS_STATUS: "sms-status",
    RECONCILE: "schedule",
    WARM_EVENT_DETAILS: "query",
}

#: The modules that define the tasks (workers import them; nothing else needs to).
TASK_MODULES: tuple[str, ...] = (
    "dmd_tasks.pipeline.stage1_shorten",
    "dmd_tasks.pipeline.stage2_generate",
    "dmd_tasks.pipeline.stage3_schedule",
    "dmd_tasks.pipeline.stage4_send",
    "dmd_tasks.pipeline.stage5_sms_status",
    "dmd_tasks.pipeline.stage6_reconcile",
    "dmd_tasks.api.tasks",
)

#: SQS holds a message back at most 15 minutes (DelaySeconds).
MAX_DELAY_SECONDS = 900


def queue_of(task_name: str) -> str:
    """The queue a task is routed to."""
    return TASK_QUEUES[task_name]


@dataclass
class TaskCall:
    """One task message to enqueue: its arguments and extra message headers (e.g. correlation id)."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    #: SQS holds the message back this long (0-900 s): the broker waits, not a worker.
    delay_seconds: int = 0
    #: The trace this message continues (the stream record's span).
    traceparent: str | None = None
