"""The Celery configuration of dmd, built from Settings.

Tasks travel over SQS (kombu's SQS transport, with predefined queues so workers need
neither ListQueues nor CreateQueue: `dmd provision` makes the queues, their dead-letter
queues and redrive policies). Results go to Redis. Queues, routes, the beat schedule and
every task default are set here once; the app reads this when it first needs its
configuration (``app.add_defaults``), not when it is imported.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from kombu import Exchange, Queue

from dmd_tasks.infra import topology
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.topology import QUEUE_NAMES


def broker_url(settings: Settings) -> str:
    """``sqs://`` URL; credentials and endpoint only when set (moto), else boto3's default chain."""
    userinfo = ""
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        userinfo = (
            f"{quote(settings.aws_access_key_id.get_secret_value(), safe='')}:"
            f"{quote(settings.aws_secret_access_key.get_secret_value(), safe='')}@"
        )
    host = ""
    if settings.aws_endpoint_url:
        host = urlsplit(settings.aws_endpoint_url).netloc
    return f"sqs://{userinfo}{host}"


def task_queues() -> list[Queue]:
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUE_NAMES]


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """The clock of the pipeline. Ticks expire unconsumed after a few intervals, so workers that
    were down come back to one tick, not a pile of them."""
    return {
        "claim-due-sales": {
            "task": topology.CLAIM_DUE_SALES,
            "schedule": settings.claim_interval_seconds,
            "options": {
                "queue": topology.queue_of(topology.CLAIM_DUE_SALES),
                "expires": settings.claim_interval_seconds * 5,
            },
        },
        "schedule-notifications": {
            "task": topology.SCHEDULE_NOTIFICATIONS,
            "schedule": settings.schedule_interval_seconds,
            "options": {
                "queue": topology.queue_of(topology.SCHEDULE_NOTIFICATIONS),
                "expires": settings.schedule_interval_seconds * 5,
            },
        },
        "reconcile-sales": {
            "task": topology.RECONCILE,
            "schedule": settings.reconcile_interval_seconds,
            "options": {
                "queue": topology.queue_of(topology.RECONCILE),
                "expires": settings.reconcile_interval_seconds * 3,
            },
        },
    }


def task_annotations(settings: Settings) -> dict[str, dict[str, Any]]:
    """Task options that come from settings (Celery applies them when it registers each task)."""
    return {
        "*": {"retry_backoff_max": settings.retry_backoff_max_seconds},
        topology.SHORTEN_EVENT_URL: {"max_retries": settings.shorten_max_retries},
        topology.SEND_NOTIFICATIONS: {"rate_limit": settings.send_task_rate_limit},
        # A receipt batch killed by its hard time limit (a dependency hung) would be acknowledged
        # and lost, and nothing else ever moves its notifications out of `sent`: give it back to
        # SQS instead (every receipt applies once: its writes are conditional). `acks_on_timeout`,
        # not `acks_on_failure_or_timeout`: Celery derives the former from the latter when it binds
        # the task, before annotations apply, so annotating the latter changed nothing.
        topology.RECORD_SMS_STATUS: {"max_retries": settings.status_max_retries, "acks_on_timeout": False},
    }


def build(settings: Settings) -> dict[str, Any]:
    """The Celery configuration mapping for ``app.conf.update``."""
    return {**_broker(settings), **_tasks(settings), **_monitoring_and_beat(settings)}


def _broker(settings: Settings) -> dict[str, Any]:
    """SQS as the broker, with the queues provisioned (never created by Celery)."""
    secure = not (settings.aws_endpoint_url or "").startswith("http://")
    predefined = {
        topology.queue_name(settings, name): {"url": topology.queue_url(settings, name)} for name in QUEUE_NAMES
    }
    return {
        "broker_url": broker_url(settings),
        "broker_transport_options": {
            "region": settings.aws_region,
            "is_secure": secure,
            "queue_name_prefix": settings.queue_name_prefix,
            "predefined_queues": predefined,
            "visibility_timeout": settings.visibility_timeout_seconds,
            "wait_time_seconds": settings.sqs_wait_time_seconds,
            "polling_interval": settings.sqs_polling_interval_seconds,
            "ack_batch_seconds": settings.sqs_ack_batch_seconds,
            # botocore's defaults (60 s timeouts, retries) would block beat and the workers for
            # minutes on a frozen endpoint; a receive long-polls sqs_wait_time_seconds at most.
            "client-config": {
                "connect_timeout": settings.aws_connect_timeout_seconds,
                "read_timeout": max(settings.aws_read_timeout_seconds, settings.sqs_wait_time_seconds + 5),
                "retries": {"mode": "standard", "max_attempts": 3},
                # the messages are built by Celery and kombu, not from input (as in aws.client)
                "parameter_validation": False,
            },
        },
        "broker_connection_retry_on_startup": True,
    }


def _tasks(settings: Settings) -> dict[str, Any]:
    """Results, serialization, routes, acknowledgement and limits of every task."""
    return {
        # The state of the pipeline is in DynamoDB; nothing waits on a task's result. Results are
        # not stored (a Redis outage cannot fail a task that did its work), nor is STARTED (with
        # task_track_started, a result-backend outage failed a task before it ran). Flower shows
        # both from the task events. The backend stays for callers who ask for a result.
        "result_backend": settings.result_backend_url or settings.redis_url,
        "result_expires": settings.result_expires_seconds,
        "task_ignore_result": True,
        "redis_socket_timeout": 5.0,
        "redis_socket_connect_timeout": 5.0,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_queues": task_queues(),
        "task_routes": {name: {"queue": queue} for name, queue in topology.TASK_QUEUES.items()},
        "task_annotations": task_annotations(settings),
        "imports": list(topology.TASK_MODULES),
        "task_default_queue": "query",
        "task_create_missing_queues": False,
        # At-least-once: ack after the task ran, give the message back if the worker dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_soft_time_limit": settings.task_soft_time_limit_seconds,
        "task_time_limit": settings.task_time_limit_seconds,
        "task_track_started": False,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        "worker_hijack_root_logger": False,
    }


def _monitoring_and_beat(settings: Settings) -> dict[str, Any]:
    """Events and remote control over Redis; beat's schedule and lock (RedBeat)."""
    return {
        # SQS carries neither Celery's event exchange nor the broadcast mailbox: both travel
        # over Redis (dmd_tasks.celery_app.monitoring), so remote control and task events are on.
        "monitor_broker_url": settings.monitor_redis_url or settings.redis_url,
        "monitor_task_sent_event": settings.monitor_task_sent_events,
        "worker_enable_remote_control": True,
        "worker_send_task_events": settings.worker_send_task_events,
        "beat_schedule": beat_schedule(settings),
        # Beat is safe to run twice: RedBeat keeps the schedule in Redis behind a lock; a
        # second beat waits on the lock and takes over within lock timeout + loop interval.
        # DmdBeatScheduler rides out Redis/AWS stalls and a lost lock instead of exiting.
        "beat_scheduler": "dmd_tasks.celery_app.beat:DmdBeatScheduler",
        "redbeat_redis_url": settings.redis_url,
        "redbeat_redis_options": {"socket_timeout": 5.0, "socket_connect_timeout": 5.0},
        "redbeat_key_prefix": settings.beat_key_prefix,
        "redbeat_lock_timeout": settings.beat_lock_timeout_seconds,
        "beat_max_loop_interval": settings.beat_max_loop_interval_seconds,
        "timezone": "UTC",
        "enable_utc": True,
    }
