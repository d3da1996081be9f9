"""The names of every queue, dead-letter queue and stream, derived from settings in one place.

- one SQS queue per Celery queue (``<prefix><queue>``), each with a dead-letter queue
  (``<prefix><queue>-dlq``) that SQS's redrive policy feeds;
- one dead-letter queue per bridge (``<prefix><bridge>-dlq``) for records it cannot route;
- the intake queues ``bridge-sqs`` reads (``<prefix>intake-<kind>``), each with a dead-letter queue;
- the SNS topic End User Messaging publishes its SMS events to (``<prefix>sms-events``),
  subscribed by the intake queue ``intake-sms-events``;
- the Kinesis stream of SMS statuses, and optionally the demand table's Kinesis stream.
"""

from __future__ import annotations

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
