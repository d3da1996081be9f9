"""The settings of the platform the pipeline runs on: AWS, Redis, Celery on SQS, the stream
bridges, the local stack, monitoring and logs. Each class is one section of
``docs/settings.md``; ``Settings`` (in ``__init__``) is their union."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr


class AwsSettings(BaseModel):
    """AWS"""

    #: ``DMD_AWS_REGION``, else the region boto3 would take: ``AWS_REGION``, then
    #: ``AWS_DEFAULT_REGION`` (the environment before the profile file).
    aws_region: str = Field(
        default="us-east-1", validation_alias=AliasChoices("DMD_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    #: The AWS account the queue URLs and ARNs are built in (the aws profile refuses the example
    #: account).
    aws_account_id: str = "123456789012"
    #: One endpoint for every AWS service (moto server locally); None means real AWS.
    aws_endpoint_url: str | None = None
    #: Static credentials (moto locally); None means boto3's default chain (IAM role).
    aws_access_key_id: SecretStr | None = None
    #: The secret half of the static credentials above.
    aws_secret_access_key: SecretStr | None = None
    #: botocore's connect timeout for every AWS call.
    aws_connect_timeout_seconds: float = 5.0
    #: botocore's read timeout for every AWS call (above the 20 s SQS long poll).
    aws_read_timeout_seconds: float = 30.0
    #: HTTP connections each AWS client keeps open (botocore's pool).
    aws_max_pool_connections: int = 20
    #: Threads per process for AWS calls issued together (a chunk's batch writes, the scheduler's
    #: conditional writes); at most aws_max_pool_connections are useful.
    aws_io_threads: int = 8

    #: The demand table (events, fans' demand, sales, short URLs), whose stream feeds bridge-demand.
    table_name: str = "dmd-demand"
    #: The pipeline's own table: notifications and phone claims (docs/data-model.md). No stream:
    #: a notification's writes do not come back to any bridge.
    notifications_table_name: str = "dmd-notifications"
    #: The bridges' shard leases and checkpoints.
    checkpoint_table_name: str = "dmd-checkpoints"
    #: Prefix of every SQS queue name (``<prefix><queue>`` and ``<prefix><queue>-dlq``).
    queue_name_prefix: str = "dmd-"
    #: Kinesis stream the SMS provider publishes delivery statuses to.
    sms_status_stream_name: str = "dmd-sms-status"
    #: Shards ``dmd provision`` gives the status stream when it creates it (bridge processes
    #: share them through leases).
    sms_status_shards: int = Field(default=1, ge=1)
    #: Kinesis stream carrying the demand table's changes (the "DynamoDB Kinesis stream"
    #: form); None means the bridge reads the table's DynamoDB Stream directly.
    demand_kinesis_stream_name: str | None = None
    #: How many times SQS delivers a message before its redrive policy moves it to the DLQ.
    dlq_max_receive_count: int = 5
    #: The SQS bridge (``bridge-sqs``): how long a receive waits for messages (long polling), and
    #: how long a received message stays invisible before SQS delivers it again (it is deleted
    #: once its tasks are published or its dead letter written; longer than publishing's own
    #: retries, so that no other process takes the same batch meanwhile).
    intake_wait_seconds: int = Field(default=20, ge=0, le=20)
    #: (see ``DMD_INTAKE_WAIT_SECONDS`` above: the invisibility of a received intake message)
    intake_visibility_timeout_seconds: int = Field(default=300, ge=5)
    #: An IAM role EventBridge Pipes can assume to read the demand table's stream and send to the
    #: intake queue: when set, ``dmd provision`` creates the pipe ``<prefix>demand-pipe`` (the
    #: demand stream read by Pipes and bridge-sqs instead of bridge-demand; run one or the other).
    demand_pipe_role_arn: str | None = None


class RedisSettings(BaseModel):
    """Redis"""

    #: Redis for rate limits, circuits, beat's schedule and lock, caches and locks (``rediss://``
    #: with a password on AWS).
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Where Celery keeps task results; None: ``DMD_REDIS_URL``.
    result_backend_url: str | None = None  # defaults to redis_url
    #: How long Celery keeps a task's result.
    result_expires_seconds: int = 86_400


class CelerySettings(BaseModel):
    """Celery on SQS"""

    #: SQS visibility timeout of every task queue. Must exceed the longest countdown a task
    #: can get plus the hard time limit, or SQS redelivers a task that is still waiting or
    #: running (a duplicate execution).
    visibility_timeout_seconds: int = 600
    #: The long poll of every SQS receive (SQS's maximum): an idle worker makes one request per
    #: this many seconds, and a message that arrives meanwhile is answered at once.
    sqs_wait_time_seconds: int = Field(default=20, ge=0, le=20)
    #: kombu's pause after an empty receive, and also whenever the worker's prefetch is full: then
    #: it makes no request and only waits, so a long pause caps a busy worker at prefetch/pause
    #: tasks a second; an empty queue is long-polled anyway.
    sqs_polling_interval_seconds: float = 0.05
    #: A worker deletes the messages of finished tasks ten to a DeleteMessageBatch, waiting at most
    #: this long for a batch to fill (0: one DeleteMessage per task). A worker killed meanwhile
    #: gets that window's messages again after their visibility timeout; the tasks are idempotent.
    sqs_ack_batch_seconds: float = Field(default=0.5, ge=0, le=5)
    #: Celery's soft time limit of every task: the task is told to stop (work budgets are a third of
    #: it).
    task_soft_time_limit_seconds: int = 60
    #: Celery's hard time limit: the child process running the task is killed.
    task_time_limit_seconds: int = 90
    #: The longest countdown any retry gets (with jitter); the queues' visibility timeout must
    #: exceed it plus the hard limit.
    retry_backoff_max_seconds: int = 120
    #: Messages a worker process reserves ahead of the one it runs (1: none wait on a busy worker).
    worker_prefetch_multiplier: int = 1


class BridgeSettings(BaseModel):
    """Stream bridges"""

    #: Records one stream read asks for (a full page is followed by the next read at once).
    bridge_records_per_read: int = 1000
    #: A bridge that read nothing waits this long before it reads again, doubling while nothing
    #: comes, up to ``bridge_idle_max_sleep_seconds``: an idle stream costs one read per shard
    #: that often, and the first record after a quiet spell waits at most that long; a busy
    #: stream is read again at once.
    bridge_idle_sleep_seconds: float = 0.5
    #: (above) the longest wait between reads of an idle stream.
    bridge_idle_max_sleep_seconds: float = 10.0
    #: A bridge with a doorbell (the status bridge: the send worker rings it after each batch,
    #: ``dmd_tasks.infra.wake.Doorbell``) backs off up to this long instead, and reads again as
    #: soon as it is rung; it looks at the doorbell (a Redis GET) every
    #: ``bridge_doorbell_check_seconds``.
    bridge_doorbell_max_sleep_seconds: float = Field(default=60.0, gt=0)
    #: (above) how often a quiet bridge looks at its doorbell.
    bridge_doorbell_check_seconds: float = Field(default=0.5, gt=0)
    #: After a poll that read records but no full page, a bridge waits this long before it reads
    #: again, so that a trickle gathers into pages (a task per page: fewer reads and tasks) and no
    #: shard is read more than the 5 times a second Kinesis and DynamoDB Streams allow (the Kinesis
    #: Client Library waits 1 s, as this does). A full page is followed at once (a backlog). At
    #: 0.5 s the status bridge's pages of a 1,000-fan sale held ~20 receipts each: 0.05
    #: tasks a notification, and SQS over 0.2 requests a notification; at 1 s ~26 and 0.19.
    bridge_busy_sleep_seconds: float = Field(default=1.0, ge=0)
    #: How often a bridge lists the stream's shards (a split's children are found at once
    #: anyway: a shard read to its end lists the stream again).
    bridge_shard_refresh_seconds: float = 60.0
    #: A bridge writes a shard's checkpoint at most this often while busy (and at once when idle
    #: or stopping); a crash re-reads at most this much, and every task is idempotent.
    bridge_checkpoint_interval_seconds: float = 1.0
    #: How long the demand bridge remembers a task it enqueued, to skip repeats from later pages.
    bridge_dedupe_seconds: float = 600.0
    #: Where a bridge starts on a shard it has no checkpoint for.
    bridge_start_position: str = "TRIM_HORIZON"
    #: Shard leases (bridges.leases): every process of a bridge shares the stream's shards. A lease
    #: whose counter another process has not seen move for this long is taken over; its owner
    #: renews it three times as often (one request a process, every lease in it). A crashed
    #: process's shards wait up to 1.5 × this plus a sixth for a new reader (the listing that
    #: first sees its last renewal comes every half, the take at the next wake-up, every sixth);
    #: a process that stops releases its leases at once. The Kinesis Client Library's guide
    #: raises the same setting to cut the lease table's requests.
    bridge_lease_failover_seconds: float = Field(default=30.0, ge=1)
    #: The most shard leases one bridge process holds (more processes are needed past it).
    bridge_max_leases: int = Field(default=1000, ge=1)


class LocalStackSettings(BaseModel):
    """Local stack"""

    #: The local stack's working directory: logs, pids, metrics, the embedded campaign store.
    run_dir: Path = Path(".dmd")
    #: Where the local stack runs the AWS emulator.
    moto_host: str = "127.0.0.1"
    #: The AWS emulator's port.
    moto_port: int = 5000
    #: Where the local stack runs the provider simulators (Bitly, SMS, Discovery, accounts, End User
    #: Messaging).
    simulator_host: str = "127.0.0.1"
    #: The provider simulators' port.
    simulator_port: int = 8090
    #: The simulators' CPU priority (a nice increment; below 0 needs the right to raise it): a real
    #: provider runs on machines of its own, so a benchmark can raise it here.
    simulator_nice: int = Field(default=0, ge=-20, le=19)


class MonitoringSettings(BaseModel):
    """Monitoring"""

    #: Where worker events and remote control travel (SQS cannot carry them); None: redis_url.
    monitor_redis_url: str | None = None
    #: Workers send task events (started, succeeded, failed) for Flower.
    worker_send_task_events: bool = True
    #: Also publish task-sent events (one Redis publish per enqueued task).
    monitor_task_sent_events: bool = True
    #: Where ``dmd flower`` listens.
    flower_host: str = "127.0.0.1"
    #: The port ``dmd flower`` listens on.
    flower_port: int = 5555
    #: "user:password" for Flower's basic auth; unset, Flower's API answers without auth (loopback only).
    flower_basic_auth: SecretStr | None = None

    #: Where every process writes its Prometheus samples; None: run_dir/metrics.
    metrics_dir_override: Path | None = Field(default=None, alias="DMD_METRICS_DIR")
    #: Where ``dmd metrics`` (the Prometheus exporter of every process's samples) listens.
    metrics_host: str = "127.0.0.1"
    #: The port ``dmd metrics`` listens on.
    metrics_port: int = 9808

    #: OTLP/HTTP endpoint of a collector (e.g. http://collector:4318); None: no export.
    otlp_endpoint: str | None = None
    #: The service name on every span.
    otel_service_name: str = "dmd"


class LoggingSettings(BaseModel):
    """Logging"""

    #: The level of every process's logs (DEBUG, INFO, WARNING, ...).
    log_level: str = "INFO"
    #: One JSON object per log line (False: plain text lines).
    log_json: bool = True
