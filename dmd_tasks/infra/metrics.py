"""The Prometheus metrics of every dmd process, safe with prefork workers.

Every process (bridges, worker children, beat, API) writes its samples to files in
``DMD_METRICS_DIR`` (prometheus_client's multiprocess mode), once ``use_directory`` ran at
its start; ``dmd metrics`` (``dmd_tasks.ops.metrics_server``) serves them aggregated at
``/metrics``. Names and labels: docs/operations.md.

A labelled metric makes no sample before its first ``labels()`` call, and ``use_directory`` makes
the one value of each metric without labels again: so a process picks the directory at start-up,
whatever imported prometheus_client before it (the ``celery`` command loads Flower's plugin, which
imports it first), under any process manager.

Files are named by host and pid (``counter_<host>-<pid>.db``), not by pid alone: containers
sharing one folder all run their command under the same pid. Stale files (gauges of a process
that is gone) are removed when a process starts and at every scrape, for the processes of the
host that looks; counters and histograms of a process that is gone keep counting in the totals.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import mark_process_dead

#: prometheus_client reads its directory from this variable when a sample is created.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

PROCESS_UP = Gauge(
    "dmd_process_up",
    "1 for every running dmd process that reports to this exporter (worker main processes, beat, "
    "bridges, api), by name; the pid label says which (host-pid).",
    ["process"],
    multiprocess_mode="liveall",
)
WORK_CUT_SHORT = Counter(
    "dmd_work_cut_short_total",
    "Runs of a task that stopped at their time budget with work left for the next run (a slow dependency).",
    ["task"],
)
BEAT_SENT = Counter(
    "dmd_beat_sent_total",
    "Ticks beat sent, by schedule entry: none for a few intervals while a beat holds the lock is an alert.",
    ["entry"],
)
BEAT_RESTED = Counter(
    "dmd_beat_rested_total",
    "Ticks beat did not send, by schedule entry: the task had found no work and nothing woke it since.",
    ["entry"],
)
BEAT_SCHEDULE_RESTORED = Counter(
    "dmd_beat_schedule_restored_total",
    "Times the beat holding the lock found its static schedule missing from Redis and wrote it again.",
)
BEAT_LOCK_HELD = Gauge(
    "dmd_beat_lock_held",
    "1 for the beat that holds the schedule's lock and ticks, 0 for a standby (pid label: host-pid).",
    ["process"],
    multiprocess_mode="liveall",
)

NOTIFICATION_TRANSITIONS = Counter(
    "dmd_notification_transitions_total",
    "Notification status transitions written (conditional writes that won).",
    ["from_status", "to_status"],
)
RECONCILER_ACTIONS = Counter(
    "dmd_reconciler_actions_total",
    "What the reconciler did: notifications republished, leases taken back, notifications failed "
    "(by reason), sales retired or restored.",
    ["action"],
)
SEND_LATENCY = Histogram(
    "dmd_send_latency_seconds",
    "Duration of one SMS provider send call, successful or not.",
    ["provider"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PROVIDER_RESPONSES = Counter(
    "dmd_provider_responses_total",
    "Answers of external providers by HTTP status (or timeout/connection).",
    ["provider", "code"],
)
PROVIDER_CIRCUIT = Counter(
    "dmd_provider_circuit_total",
    "Changes of a provider's circuit: opened, reopened, throttled (a 429 paused sending), probe, closed.",
    ["provider", "event"],
)
SMS_PARTS_SENT = Counter(
    "dmd_sms_parts_sent_total",
    "SMS parts of the sends a provider accepted (recorded sent), by provider account: its cap counts parts.",
    ["provider"],
)
SEND_DELAY = Histogram(
    "dmd_send_delay_seconds",
    "Seconds from when a notification was due (its sendAfter: written at its sale's notifyAt, or the "
    "end of its fan's quiet hours) to the provider accepting its SMS, by provider account.",
    ["provider"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
SEND_WINDOW_HELD = Counter(
    "dmd_send_window_held_total",
    "SMS sends held back after their paced slot: the account's last second (plus the headroom) "
    "already had the cap's parts in it.",
)
SEND_SLOTS_MISSED = Counter(
    "dmd_send_slots_missed_total",
    "Paced send slots a sender woke up too late for (it took the next free one instead of "
    "bunching with the sends after it).",
    ["limit"],
)
SMS_PROVIDER_WEIGHT = Gauge(
    "dmd_sms_provider_weight",
    "Share of the sends a provider gets now (resting weight times health; dmd_tasks.infra.failover).",
    ["provider"],
    multiprocess_mode="mostrecent",
)
SMS_PROVIDER_ERROR_RATIO = Gauge(
    "dmd_sms_provider_error_ratio",
    "Failed share of a provider's calls in its circuit's sliding window.",
    ["provider"],
    multiprocess_mode="mostrecent",
)
BRIDGE_LAG = Gauge(
    "dmd_bridge_lag_seconds", "Age of the newest stream record a bridge handled.", ["bridge"], multiprocess_mode="max"
)
BRIDGE_RECORDS = Counter(
    "dmd_bridge_records_total", "Stream records handled by a bridge, by outcome.", ["bridge", "outcome"]
)
BRIDGE_SHARD_EVENTS = Counter(
    "dmd_bridge_shard_events_total",
    "A bridge's trouble with a shard: read-error (retried with backoff), iterator-expired, "
    "checkpoint-trimmed (records lost upstream: older than the stream's retention), shard-gone.",
    ["bridge", "event"],
)
BRIDGE_LEASES = Gauge(
    "dmd_bridge_leases", "Shard leases a bridge process holds.", ["bridge"], multiprocess_mode="liveall"
)
BRIDGE_LEASE_EVENTS = Counter(
    "dmd_bridge_lease_events_total",
    "Shard leases taken (free or expired), stolen (balancing), lost (taken by another), released (on stop).",
    ["bridge", "event"],
)
CACHE_REQUESTS = Counter(
    "dmd_cache_requests_total", "Cache look-ups by result (hit, miss, stale).", ["cache", "result"]
)
TASKS = Counter("dmd_tasks_total", "Celery task runs by final state.", ["task", "state"])
AWS_REQUESTS = Counter(
    "dmd_aws_requests_total",
    "AWS API requests this process made (every attempt), by service and operation.",
    ["service", "operation"],
)
DYNAMODB_WRITE_ITEMS = Counter(
    "dmd_dynamodb_write_items_total",
    "Items DynamoDB write requests carried (a BatchWriteItem counts each).",
    ["operation"],
)
DYNAMODB_READ_UNITS = Counter(
    "dmd_dynamodb_read_units_total",
    "Estimated read units: one per item read by key, one per 4 KB a query returned.",
    ["operation"],
)

#: The metrics without labels. Their one value is made when they are declared, in memory unless a
#: directory was already set; ``use_directory`` makes it again in the files.
UNLABELLED: tuple[Counter, ...] = (BEAT_SCHEDULE_RESTORED, SEND_WINDOW_HELD)


#: This process's host, as its sample files name it (set by ``use_directory``).
_host = ""


def host_name() -> str:
    """The host part of sample file names: the host name with ``_`` (the files' separator) replaced."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def use_directory(directory: Path, process: str | None = None) -> None:
    """Write this process's samples (and its children's) to files in ``directory``, as ``process``.

    Call at process start, before the first sample. prometheus_client chooses between
    in-process and file-backed values when it is first imported; that choice is made again
    here, so it holds even if a library imported prometheus_client earlier. The files are named
    ``<kind>_<host>-<pid>.db``; a forked child (a prefork worker) gets files of its own.
    """
    global _host
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    _host = host = host_name()
    clear_stale(directory, starting=True)
    values.ValueClass = values.MultiProcessValue(lambda: f"{host}-{os.getpid()}")
    for metric in UNLABELLED:
        metric._metric_init()  # prometheus_client's own (re)initialisation: the value, now file-backed
    if process:
        PROCESS_UP.labels(process).set(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clear_stale(directory: Path, *, starting: bool = False) -> list[str]:
    """Remove the gauge files of this host's processes that are gone (and, when this process is
    ``starting``, of an earlier one that had its pid: a restarted container). Counters and
    histograms stay: they are totals. Files of other hosts are left alone (their processes
    cannot be seen from here)."""
    host, me = host_name(), (os.getpid() if starting else -1)
    removed = []
    for path in directory.glob("gauge_*.db"):
        owner = path.stem.rsplit("_", 1)[-1]
        owner_host, _, pid = owner.rpartition("-")
        if owner_host != host or not pid.isdigit() or (int(pid) != me and _alive(int(pid))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def process_exited(pid: int) -> None:
    """Forget a dead worker child's live gauges (its counters stay counted)."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(f"{_host or host_name()}-{pid}")
