"""Every setting of dmd, in one place.

This is the only module that knows environment variable names: each field
``foo_bar`` is read from ``DMD_FOO_BAR``. A profile (``DMD_PROFILE``, default
``local``) selects a file of defaults in ``config/`` (``local.env`` for the
embedded stack, ``aws.env`` for real AWS); the environment overrides it.

Nothing is read at import time: ``get_settings()`` parses the profile and the
environment on its first call, once per process.
"""

from __future__ import annotations

import functools
import json
import os
import sysconfig
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dmd_tasks.domain.phones import is_region


def _config_dir() -> Path:
    """config/: the checkout's, or (an installed package) the copy in ``<prefix>/share/dmd``."""
    checkout = Path(__file__).resolve().parents[2] / "config"
    return checkout if checkout.is_dir() else Path(sysconfig.get_path("data")) / "share" / "dmd" / "config"


CONFIG_DIR = _config_dir()


class UnsafeConfiguration(ValueError):
    """A combination of settings that would make the pipeline misbehave (e.g. duplicate SQS deliveries)."""


def _profile_file() -> Path:
    profile = os.environ.get("DMD_PROFILE", "local")
    path = CONFIG_DIR / f"{profile}.env"
    if not path.is_file():
        raise UnsafeConfiguration(f"DMD_PROFILE={profile!r}: no profile file {path.name} in config/")
    return path


class Settings(BaseSettings):
    """All of dmd's configuration. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix="DMD_", extra="ignore", frozen=True, populate_by_name=True)

    #: The profile file of defaults in config/ (``local``: the embedded stack; ``aws``: real AWS).
    #: Read from ``DMD_PROFILE`` before anything else.
    profile: str = "local"

    # --- AWS -----------------------------------------------------------------------------
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

    # --- Redis ---------------------------------------------------------------------------
    #: Redis for rate limits, circuits, beat's schedule and lock, caches and locks (``rediss://``
    #: with a password on AWS).
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Where Celery keeps task results; None: ``DMD_REDIS_URL``.
    result_backend_url: str | None = None  # defaults to redis_url
    #: How long Celery keeps a task's result.
    result_expires_seconds: int = 86_400

    # --- Celery on SQS ---------------------------------------------------------------------
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

    # --- URL shortening (Bitly v4) ----------------------------------------------------------
    #: Bitly's API (v4); locally the simulator.
    bitly_base_url: str = "https://api-ssl.bitly.com"
    #: Bitly's access token.
    bitly_token: SecretStr = SecretStr("")
    #: The short-link domain Bitly shortens into.
    bitly_domain: str = "bit.ly"
    #: Timeout of one Bitly call.
    bitly_timeout_seconds: float = 5.0
    #: Retries of a failed Bitly call after the first attempt (then the message is dead-lettered).
    shorten_max_retries: int = 2
    #: Hosts whose URLs may be sent to the shortener; a leading dot admits subdomains.
    shorten_allowed_hosts: list[str] = Field(default_factory=lambda: [".ticketmaster.com", ".livenation.com"])
    #: How long one worker holds the per-event shortening lock.
    shorten_lock_seconds: int = 30

    # --- Campaigns, sales, notifications ---------------------------------------------------------
    #: MongoDB URL of the campaign store; None means the embedded store (montydb on disk, in run_dir).
    mongo_url: SecretStr | None = None
    #: The MongoDB database of the campaign store.
    mongo_database: str = "campaigns"
    #: A standby beat takes over at most this long (plus one loop) after the active one died.
    beat_lock_timeout_seconds: int = 25
    #: The longest beat sleeps between looks at its schedule (and at its lock).
    beat_max_loop_interval_seconds: int = 5
    #: Redis key prefix of beat's schedule and lock (one per deployment).
    beat_key_prefix: str = "dmd:redbeat"
    #: How often beat claims due sales and runs the scheduler.
    claim_interval_seconds: float = 2.0
    #: How often beat runs the scheduler (a tick moves due notifications pending to scheduled).
    schedule_interval_seconds: float = 2.0
    #: A beat task that found no work rests up to this long (no tick sent: no SQS round trip, no
    #: index read) unless new work wakes it first (a sale written or claimed): an idle pipeline
    #: still looks around this often. 0: every tick is sent.
    beat_idle_tick_seconds: float = Field(default=120.0, ge=0)
    #: A sale's first tick also releases this many seconds of its share: its sends stay that far
    #: ahead of the sender, so a late tick (or the bridge's lag) never leaves the sender idle.
    schedule_lead_seconds: float = Field(default=4.0, ge=0)
    #: Fans written per generator chunk (one BatchWriteItem stream and one checkpoint per chunk).
    generate_chunk_size: int = 5000
    #: A sale's first chunk is this small (one demand page of this size), so its first SMS goes out
    #: while the rest is generated: at 50 messages/s, 500 fans are 10 s of sending.
    generate_first_chunk_size: int = Field(default=500, ge=1)
    #: Chunks one generator task run writes before it hands the rest of the sale to a fresh message.
    generate_chunks_per_run: int = 4
    #: ... or after this long, whichever comes first (a slow table must not push a run into its
    #: time limit). None: a third of the soft time limit.
    generate_run_seconds: float | None = None
    #: How long one generator run owns a sale before another may resume it.
    generate_lease_seconds: int = 120
    #: Shards of the pending index per sale (spreads a big sale's GSI writes over partitions).
    pending_shards: int = 4
    #: Notifications one ``send_notifications`` message carries (claimed and recorded together: a
    #: request per batch; the scheduler releases only what the rate allows, so a slow campaign's
    #: batches stay small).
    send_batch_size: int = 50
    #: Provider calls a notification gets before it ends ``failed`` (attempts that reached the
    #: provider and failed; a send that never reached it spends none).
    max_send_attempts: int = 3
    #: First retry delay of a failed send; doubles per attempt (plus jitter), capped by retry_backoff_max.
    send_retry_base_seconds: float = 2.0
    #: How long a worker owns a notification in ``sending`` before the reconciler may take it
    #: back. Must outlast the worst case of the send path: send_rate_wait_seconds +
    #: sms_timeout_seconds + task_time_limit_seconds (checked below; every process refuses to start
    #: otherwise), so a live worker's lease never expires under it.
    send_lease_seconds: int = 180
    #: Longest a send waits for a slot of the shared provider rate limit before it gives the
    #: notification back (a retry that does not count as a provider attempt).
    send_rate_wait_seconds: float = 30.0
    #: How often the reconciler visits every unfinished sale (beat).
    reconcile_interval_seconds: float = 10.0
    #: A notification ``scheduled`` this long past its due time has lost its send message (a
    #: dead letter, a purge, a bridge that refused it): the reconciler publishes it again.
    scheduled_stale_seconds: float = 300.0
    #: ... at most this many times; then it ends ``failed`` with the reason.
    max_republishes: int = 5
    #: A notification still ``pending`` this long after its send-after time ends ``failed``
    #: (its sale lost its campaign, or the scheduler never reached it).
    pending_deadline_seconds: float = 86_400.0
    #: Celery's native per-worker rate limit of send_notifications (tasks, not messages).
    send_task_rate_limit: str | None = None
    #: The provider account's throughput cap in message parts per second (per provider and sender):
    #: every sale and campaign shares it; a campaign's ratePerSecond is a ceiling within it.
    sms_account_parts_per_second: float = Field(default=20.0, gt=0)
    #: Sends are spaced this share wider than 1/cap, so that jitter between the grant and the
    #: provider's receipt never puts more than the cap in one of the provider's seconds: the
    #: jitter allowed is this many seconds per second (40 ms at 4 %). In one `make bench` on a
    #: loaded 2-core machine, 2 % let 11 arrive in one second at a cap of 10 (three 429s in six
    #: runs); 4 % never did. The cost is 2 % of the cap; a 429 pauses every sender instead.
    sms_account_headroom: float = Field(default=0.04, ge=0, le=0.5)
    #: A message may take at most this many SMS parts: a campaign whose message would take more is
    #: refused when stored, and a send whose rendered message does ends ``failed``.
    max_message_parts: int = Field(default=6, ge=1, le=10)
    #: The provider's circuit (dmd_tasks.infra.circuit): over this sliding window, at least
    #: circuit_min_calls failed calls at a ratio of circuit_error_ratio or more (or as many failed
    #: calls in a row, whatever the window holds) pause every send worker for
    #: circuit_open_seconds; then one probe call at a time decides.
    circuit_window_seconds: float = Field(default=30.0, gt=0)
    #: (the circuit, above) failed calls needed in the window to open it.
    circuit_min_calls: int = Field(default=10, ge=1)
    #: (the circuit, above) the failed share of the window's calls that opens it.
    circuit_error_ratio: float = Field(default=0.5, gt=0, le=1)
    #: (the circuit, above) how long an open circuit pauses every sender.
    circuit_open_seconds: float = Field(default=15.0, gt=0)
    #: Failed calls in a row (every sender's) after which a failure spends no attempt although the
    #: window still shows the successes from before the provider went down.
    circuit_streak_failures: int = Field(default=3, ge=1)
    #: Statuses one ``record_sms_status`` message carries (applied 100 to a request).
    status_batch_size: int = 100
    #: Retries of a delivery status whose notification is not (yet) marked sent.
    status_max_retries: int = 8

    # --- SMS provider -------------------------------------------------------------------------------
    #: Which provider sends (docs/operations.md, "SMS providers"): ``http`` (the HTTP API with an
    #: idempotency key; receipts on the Kinesis status stream) or ``eum`` (AWS End User Messaging
    #: SMS; no idempotency; events through SNS to the intake queue that bridge-sqs reads).
    sms_provider: Literal["http", "eum"] = "http"
    #: A second provider (dmd_tasks/infra/failover.py): it gets ``sms_failover_weight`` of the
    #: sends while both are healthy (0: a standby) and the traffic the other loses when it fails.
    #: Its cap: ``sms_failover_parts_per_second`` (None: the same as the primary's).
    sms_failover_provider: Literal["http", "eum"] | None = None
    #: (the second provider, above) the share of sends it gets while both are healthy.
    sms_failover_weight: float = Field(default=0.5, ge=0, le=1)
    #: (the second provider, above) its cap in message parts a second; None: the primary's.
    sms_failover_parts_per_second: float | None = Field(default=None, gt=0)
    #: The HTTP SMS provider's API; locally the simulator.
    sms_base_url: str = "https://sms.example.com"
    #: The HTTP SMS provider's API key.
    sms_api_key: SecretStr = SecretStr("")
    #: Timeout of one provider call; past it the outcome is unknown (never a plain retry).
    sms_timeout_seconds: float = 5.0
    #: The sender id the HTTP provider shows.
    sms_sender_id: str = "DMD"
    #: End User Messaging: the origination identity (phone number, sender id, pool id or ARN) ...
    eum_origination_identity: str = ""
    #: ... the configuration set whose SNS event destination carries the delivery events (None: no
    #: events: every send stays ``sent`` and every unconfirmed one ends ``unknown``) ...
    eum_configuration_set: str | None = None
    #: (End User Messaging) the message type of every send.
    eum_message_type: Literal["TRANSACTIONAL", "PROMOTIONAL"] = "TRANSACTIONAL"
    #: ... and its endpoint (None: AWS's, from the region; locally the simulator serves the API).
    #: ``dmd provision`` creates the configuration set, the SNS topic ``<prefix>sms-events`` its
    #: events go to, and the topic's subscription by the intake queue ``<prefix>intake-sms-events``.
    eum_endpoint_url: str | None = None
    #: How long an unconfirmed send (no answer from a provider without idempotency) waits for the
    #: provider's event before it ends ``unknown``. Make it longer than the campaigns' validity:
    #: the provider reports an expired message (TEXT_TTL_EXPIRED) only when its TimeToLive ends.
    unconfirmed_window_seconds: float = Field(default=3_600.0, gt=0)
    #: Region (ISO 3166 alpha-2, e.g. ``US``) that reads phone numbers written without their country
    #: code, where a campaign does not set ``phoneRegion``. None: such numbers are invalid.
    phone_default_region: str | None = None

    # --- Query surface (GraphQL API) ---------------------------------------------------------------
    #: Where ``dmd api`` listens.
    api_host: str = "127.0.0.1"
    #: The port ``dmd api`` listens on.
    api_port: int = 8080
    #: Accepted values of the ``x-api-key`` header (AppSync API_KEY auth).
    api_keys: list[SecretStr] = Field(default_factory=list)
    #: Which accounts each API key may read with ``accountProfile``: a JSON object, key → a list
    #: of account ids or ``"*"`` (every account). A key not named here reads no account profile.
    api_account_scopes: SecretStr = SecretStr("{}")
    #: The largest GraphQL query accepted (bytes); larger ones get a 413 with a reason.
    api_max_query_bytes: int = 8192
    #: The deepest GraphQL query accepted.
    api_max_query_depth: int = 6
    #: The most fields one GraphQL query may select.
    api_max_fields: int = 60

    #: Ticketmaster's Discovery API, for event details; locally the simulator.
    discovery_base_url: str = "https://app.ticketmaster.com"
    #: The Discovery API key (sent as ``apikey``; redacted from every log).
    discovery_api_key: SecretStr = SecretStr("")
    #: Timeout of one Discovery call.
    discovery_timeout_seconds: float = 3.0
    #: TM Discovery allows about 5 requests per second per key (shared by every API process).
    discovery_rate_per_second: float = 5.0
    #: How long event details are served from Redis before Discovery is asked again (24 h).
    event_cache_ttl_seconds: int = 86_400
    #: How long a copy is kept to serve, marked stale, when Discovery fails or rate-limits.
    event_stale_ttl_seconds: int = 604_800
    #: How long Discovery's "no such event" is remembered.
    event_missing_ttl_seconds: int = 60

    #: The account service the ``accountProfile`` query proxies; locally the simulator.
    accounts_base_url: str = "https://accounts.example.com"
    #: The account service's OAuth client id (client credentials).
    accounts_client_id: str = ""
    #: The account service's OAuth client secret.
    accounts_client_secret: SecretStr = SecretStr("")
    #: Timeout of one account-service call.
    accounts_timeout_seconds: float = 3.0
    #: How long an account profile is served from Redis.
    account_cache_ttl_seconds: int = 60
    #: A token is renewed this long before it expires.
    accounts_token_margin_seconds: int = 60

    # --- Stream bridges ----------------------------------------------------------------------
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
    #: Client Library waits 1 s). A full page is followed at once (a backlog).
    bridge_busy_sleep_seconds: float = Field(default=0.5, ge=0)
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
    #: process's shards wait up to 1.5 × this for a new reader (a process that stops releases
    #: its leases at once); the Kinesis Client Library's guide raises the same setting to cut
    #: the lease table's requests.
    bridge_lease_failover_seconds: float = Field(default=30.0, ge=1)
    #: The most shard leases one bridge process holds (more processes are needed past it).
    bridge_max_leases: int = Field(default=1000, ge=1)

    # --- Local stack ---------------------------------------------------------------------------
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

    # --- Monitoring ----------------------------------------------------------------------------------
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

    # --- Logging ---------------------------------------------------------------------------------
    #: The level of every process's logs (DEBUG, INFO, WARNING, ...).
    log_level: str = "INFO"
    #: One JSON object per log line (False: plain text lines).
    log_json: bool = True

    def placeholders(self) -> list[str]:
        """What still holds a placeholder or an unsafe local default, one line each: checked when
        the settings name real AWS (no ``aws_endpoint_url``), where every process refuses them."""
        if self.aws_endpoint_url is not None:
            return []
        problems = []
        if self.aws_account_id == "123456789012":
            problems.append("DMD_AWS_ACCOUNT_ID is the example account 123456789012: set it")
        providers = {self.sms_provider, self.sms_failover_provider}
        urls = {"accounts_base_url": self.accounts_base_url}
        if "http" in providers:
            urls["sms_base_url"] = self.sms_base_url
        for name, url in urls.items():
            host = (urlsplit(url).hostname or "").lower()
            if host == "example.com" or host.endswith(".example.com"):
                problems.append(f"{variable(name)} is a placeholder ({host}): set it")
        redis_urls: dict[str, str | None] = {"redis_url": self.redis_url, "result_backend_url": self.result_backend_url}
        for name, address in redis_urls.items():
            if address is None:
                continue
            parts = urlsplit(address)
            if parts.scheme != "rediss" or not parts.password:
                problems.append(
                    f"{variable(name)} must use TLS and a password (rediss://:PASSWORD@host:6379/0), "
                    f"not {parts.scheme}:// "
                    f"{'with' if parts.password else 'without'} a password"
                )
        if self.mongo_url is None:
            problems.append("DMD_MONGO_URL is not set: campaigns would live on one container's local disk")
        return problems

    def account_scopes(self) -> dict[str, frozenset[str] | None]:
        """``api_account_scopes`` read: API key → the account ids it may read (None: every one)."""
        raw = json.loads(self.api_account_scopes.get_secret_value() or "{}")
        return {str(k): None if v == "*" else frozenset(str(a) for a in v) for k, v in raw.items()}

    @model_validator(mode="after")
    def _check_visibility_timeout(self) -> Settings:
        needed = self.max_countdown_seconds + self.task_time_limit_seconds
        if self.visibility_timeout_seconds <= needed:
            raise UnsafeConfiguration(
                f"DMD_VISIBILITY_TIMEOUT_SECONDS={self.visibility_timeout_seconds} must exceed the longest "
                f"countdown a task can get ({self.max_countdown_seconds}s) plus the hard time limit "
                f"({self.task_time_limit_seconds}s) = {needed}s; otherwise SQS redelivers waiting or "
                f"running tasks and they execute twice"
            )
        run_seconds = self.generate_run_seconds
        if run_seconds is not None and run_seconds * 2 > self.task_soft_time_limit_seconds:
            raise UnsafeConfiguration(
                "DMD_GENERATE_RUN_SECONDS must be at most half of DMD_TASK_SOFT_TIME_LIMIT_SECONDS: a run stops "
                "handing over only after its current chunk, which may take as long again"
            )
        if self.task_soft_time_limit_seconds >= self.task_time_limit_seconds:
            raise UnsafeConfiguration("DMD_TASK_SOFT_TIME_LIMIT_SECONDS must be below DMD_TASK_TIME_LIMIT_SECONDS")
        send_worst_case = self.send_rate_wait_seconds + self.sms_timeout_seconds + self.task_time_limit_seconds
        if self.send_lease_seconds <= send_worst_case:
            raise UnsafeConfiguration(
                f"DMD_SEND_LEASE_SECONDS={self.send_lease_seconds} must exceed the worst case of one send: "
                f"DMD_SEND_RATE_WAIT_SECONDS ({self.send_rate_wait_seconds:g}) + DMD_SMS_TIMEOUT_SECONDS "
                f"({self.sms_timeout_seconds:g}) + DMD_TASK_TIME_LIMIT_SECONDS ({self.task_time_limit_seconds}) = "
                f"{send_worst_case:g}s; otherwise the reconciler takes back notifications a live worker still "
                f"sends"
            )
        if "eum" in (self.sms_provider, self.sms_failover_provider) and not self.eum_origination_identity:
            raise UnsafeConfiguration(
                "the eum provider needs DMD_EUM_ORIGINATION_IDENTITY (a phone number, sender id, pool id or ARN)"
            )
        if self.sms_failover_provider == self.sms_provider:
            raise UnsafeConfiguration(
                f"DMD_SMS_FAILOVER_PROVIDER={self.sms_failover_provider} is the primary provider: name the other one"
            )
        try:
            scopes = json.loads(self.api_account_scopes.get_secret_value() or "{}")
        except ValueError:
            scopes = None
        if not isinstance(scopes, dict) or not all(v == "*" or isinstance(v, list) for v in scopes.values()):
            raise UnsafeConfiguration(
                'DMD_API_ACCOUNT_SCOPES must be a JSON object: API key -> a list of account ids, or "*"'
            )
        problems = self.placeholders()
        if problems:
            raise UnsafeConfiguration(
                "settings for real AWS still hold placeholders:\n" + "\n".join(f"- {p}" for p in problems)
            )
        if self.phone_default_region is not None and not is_region(self.phone_default_region):
            raise UnsafeConfiguration(
                f"DMD_PHONE_DEFAULT_REGION={self.phone_default_region!r} is not a region code "
                "(ISO 3166 alpha-2, e.g. US)"
            )
        if self.bridge_start_position not in ("TRIM_HORIZON", "LATEST"):
            raise UnsafeConfiguration("DMD_BRIDGE_START_POSITION must be TRIM_HORIZON or LATEST")
        return self

    @property
    def generate_run_budget_seconds(self) -> float:
        """How long one generator run writes before it hands over (see generate_run_seconds)."""
        if self.generate_run_seconds is not None:
            return self.generate_run_seconds
        return self.task_soft_time_limit_seconds / 3

    @property
    def work_budget_seconds(self) -> float:
        """How long a task run (a scheduling tick, a send batch, a reconcile pass) takes new work:
        a third of the soft time limit, so that a run slowed by a dependency ends what it began
        well before the limit and leaves the rest to the next run (``dmd_tasks.infra.deadline``)."""
        return self.task_soft_time_limit_seconds / 3

    @property
    def max_countdown_seconds(self) -> int:
        """The longest countdown/ETA any task may be given (retries are clamped to it)."""
        return self.retry_backoff_max_seconds

    @property
    def metrics_dir(self) -> Path:
        return self.metrics_dir_override or self.run_dir / "metrics"


class SettingsError(ValueError):
    """A setting's value cannot be used: the message names its environment variable."""


def variable(field: str) -> str:
    """The environment variable a field is read from (``sqs_wait_time_seconds`` → ``DMD_SQS_WAIT_TIME_SECONDS``)."""
    return field if field.isupper() else f"DMD_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the profile file and the environment (environment wins). A value that
    does not parse raises SettingsError naming the variable(s) (never the value: it may be a secret)."""
    try:
        return Settings(_env_file=_profile_file(), **overrides)  # type: ignore[call-arg]  # pydantic-settings init option
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(
                f"{variable(where.split('.')[0])}{where[len(where.split('.')[0]) :]}: {message}" if where else message
            )
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed once."""
    return load_settings()
