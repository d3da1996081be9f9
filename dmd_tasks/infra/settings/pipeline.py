"""The settings of the pipeline's stages: URL shortening, campaigns, sales and notifications.
Each class is one section of ``docs/settings.md``; ``Settings`` (in ``__init__``) is their union."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class ShorteningSettings(BaseModel):
    """URL shortening (Bitly v4)"""

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


class PipelineSettings(BaseModel):
    """Campaigns, sales, notifications"""

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
    #: ahead of the sender, so a late tick never leaves the sender idle (ticks of 4-7 s were seen on
    #: a busy 2-core machine, longer than a lead of 4 s).
    schedule_lead_seconds: float = Field(default=8.0, ge=0)
    #: Fans written per generator chunk (one BatchWriteItem stream and one checkpoint per chunk).
    generate_chunk_size: int = 5000
    #: A sale's first chunk is this small (one demand page of this size), so its first SMS goes out
    #: while the rest is generated; each chunk after it is 2.5 times the one before, up to
    #: ``generate_chunk_size``: at 50 messages/s, 100 fans are 2 s of sending.
    generate_first_chunk_size: int = Field(default=100, ge=1)
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
