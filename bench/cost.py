"""7. Requests and CPU per notification, and what that costs at AWS list prices.

A demo sale of N fans (``make run``'s: a few opted out, a few invalid phone numbers)
through every pipeline process. Each process counts the AWS requests it signs (a botocore
``before-sign`` hook, ``dmd_aws_requests_total``: kombu's SQS traffic included) and the
DynamoDB items it writes and reads (``dmd_dynamodb_*``); the CPU seconds are those of the
project's own process trees (bridges, beat, workers; not moto, Redis or the simulators),
read from the OS before they stop. Counts, not speeds: they hold on any machine. Idle
polling (SQS long polls, stream reads) is part of the bill and is counted; it depends on
how long the sale takes, not on N, so it weighs less per notification as N grows.

Every figure counts from the sale's start (its rows written) to its end (each notification
terminal, and 3 s for late receipts), like the CPU seconds: the processes' start-up and the
idle window measured before the sale are reported on their own (``idle_*``,
``aws_requests_before_sale``), not charged to the sale's notifications.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.harness import Harness, SendsSettled, wait_until

if TYPE_CHECKING:
    from dmd_tasks.infra.settings import Settings

#: AWS list prices, us-east-1, in USD, as of 2026-11-25 (DynamoDB on-demand prices of 2024-11-01).
PRICES: dict[str, Any] = {
    "date": "2026-11-25",
    "region": "us-east-1",
    "sqs_per_million_requests": 0.40,  # standard queue; one request per call up to 64 KB of payload
    "dynamodb_per_million_write_units": 0.625,  # on-demand, Standard table class; 1 WRU per item up to 1 KB
    "dynamodb_per_million_read_units": 0.125,  # on-demand; 1 RRU per strongly consistent read up to 4 KB
    "dynamodb_streams_per_million_reads": 0.20,  # $0.02 per 100,000 GetRecords calls
}
#: Index entries a sent notification writes or removes (docs/data-model.md): pending entry written at
#: creation and removed when scheduled, sending entry written and removed, message-id entry written.
INDEX_WRITES_PER_NOTIFICATION = 5
#: how long the idle pipeline's own CPU use and AWS requests (polling) are measured before the
#: sale, after IDLE_SETTLE_SECONDS of start-up (first ticks, the bridges' backoff reaching its
#: idle pace): long enough to hold a 20 s long poll, an idle tick of every beat entry and a
#: status bridge's longest idle wait
IDLE_SECONDS = 120.0
IDLE_SETTLE_SECONDS = 15.0


def metric_samples(metrics_dir: str, name: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Every sample of a counter, summed over the processes that wrote it, by the values of ``labels``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == f"{name}_total" or (sample.name == name and family.type == "counter"):
                out[tuple(sample.labels.get(label, "") for label in labels)] += sample.value
    return dict(out)


@dataclass(frozen=True)
class SaleRun:
    """What one demo sale took: its final progress, its length, and the pipeline's CPU seconds."""

    progress: dict[str, Any]
    elapsed: float
    cpu_seconds: float
    idle_cpu_per_second: float
    idle_requests_per_second: float
    idle_requests_by_operation: dict[str, float]
    cpu_seconds_by_process: dict[str, float]
    #: the counters as they stood when the sale began (start-up and the idle window): the
    #: sale's figures are what they grew by
    before: dict[str, dict[tuple[str, ...], float]]


def run(h: Harness, *, fans: int, provider: str = "sms") -> dict[str, Any]:
    sale = _run_sale(h, fans, provider)
    return {"provider": provider, **_report(h.settings, fans, sale)}


def eum_environment(settings: Settings) -> dict[str, str]:
    """The processes' settings for End User Messaging on the simulator, its configuration set and
    event destination provisioned as ``dmd provision`` provisions them."""
    from dmd_tasks.ops.provision import ensure_eum_configuration_set, ensure_sms_events_topic

    env = {
        "DMD_SMS_PROVIDER": "eum",
        "DMD_EUM_ORIGINATION_IDENTITY": "+18005550100",
        "DMD_EUM_CONFIGURATION_SET": "dmd-bench",
        "DMD_EUM_ENDPOINT_URL": f"http://{settings.simulator_host}:{settings.simulator_port}",
    }
    eum = settings.model_copy(
        update={
            "sms_provider": "eum",
            "eum_origination_identity": env["DMD_EUM_ORIGINATION_IDENTITY"],
            "eum_configuration_set": env["DMD_EUM_CONFIGURATION_SET"],
            "eum_endpoint_url": env["DMD_EUM_ENDPOINT_URL"],
        }
    )
    ensure_eum_configuration_set(eum, ensure_sms_events_topic(eum)["topic_arn"])
    return env


def _run_sale(h: Harness, fans: int, provider: str) -> SaleRun:
    """A demo sale of ``fans`` through every pipeline process, until each notification is terminal."""
    from dmd_tasks.ops.demo import PIPELINE_PROCESSES, TERMINAL, sale_progress, seed_sale

    settings = h.settings
    h.fresh()
    h.sim.configure(sms={"status_delay_ms": 100}, eum={"status_delay_ms": 100})
    env = eum_environment(settings) if provider == "eum" else None
    # End User Messaging's events come back through SNS and the intake queue: bridge-sqs reads them
    processes = (*PIPELINE_PROCESSES, "bridge-sqs") if provider == "eum" else PIPELINE_PROCESSES
    with h.processes(processes, env=env, label="cost") as group:
        h.wait_workers(group, ["generate", "schedule", "send", "sms-status", "short-url"])
        idle_cpu_per_second, idle_by_operation, baseline_usage = _idle(h, group)
        idle_requests_per_second = sum(idle_by_operation.values())
        baseline = baseline_usage.cpu_seconds
        before = _counters(settings)
        sale_id, opted_out = seed_sale(settings, fans, rate_per_second=1000.0, run_id=uuid.uuid4().hex[:8])
        expected = fans - opted_out
        started = time.monotonic()

        settled = SendsSettled(h.sim, sale_id, expected)

        def finished() -> dict[str, Any] | None:
            if not settled():
                return None
            progress = sale_progress(settings, sale_id)
            done = sum(progress["status"][s] for s in TERMINAL)
            if group.dead():
                raise RuntimeError(f"processes exited: {group.dead()}")
            return progress if progress["sale_status"] == "generated" and done == expected else None

        progress = wait_until(finished, 120 + fans, 2.0, what=f"{expected} notifications terminal")
        elapsed = time.monotonic() - started
        time.sleep(3)  # late duplicate receipts still being recorded are part of the cost
        after = h.usage(group)
        cpu_seconds = after.cpu_seconds - baseline
        by_process = {
            name: round(used - baseline_usage.cpu_seconds_by_process.get(name, 0.0), 2)
            for name, used in sorted(after.cpu_seconds_by_process.items(), key=lambda item: -item[1])
        }
    return SaleRun(
        progress,
        elapsed,
        cpu_seconds,
        idle_cpu_per_second,
        idle_requests_per_second,
        idle_by_operation,
        by_process,
        before,
    )


#: the counters a sale's report reads: name → the labels it is summed by
COUNTERS: dict[str, tuple[str, ...]] = {
    "dmd_aws_requests": ("service", "operation"),
    "dmd_dynamodb_write_items": ("operation",),
    "dmd_dynamodb_read_units": ("operation",),
    "dmd_tasks": ("task", "state"),
    "dmd_bridge_records": ("bridge",),
}


def _counters(settings: Settings) -> dict[str, dict[tuple[str, ...], float]]:
    metrics_dir = str(settings.metrics_dir.resolve())
    return {name: metric_samples(metrics_dir, name, labels) for name, labels in COUNTERS.items()}


def _idle(h: Harness, group: Any) -> tuple[float, dict[str, float], Any]:
    """The idle pipeline's CPU seconds a second and AWS requests a second by operation, measured
    over IDLE_SECONDS after IDLE_SETTLE_SECONDS of start-up (imports, connections: not the sale's);
    and the processes' usage at its end (the sale's baseline)."""
    time.sleep(IDLE_SETTLE_SECONDS)
    idle_from, requests_from = h.usage(group).cpu_seconds, _requests_by_operation(h.settings)
    time.sleep(IDLE_SECONDS)
    usage = h.usage(group)
    requests_to = _requests_by_operation(h.settings)
    by_operation = {
        op: round((n - requests_from.get(op, 0.0)) / IDLE_SECONDS, 3)
        for op, n in sorted(requests_to.items(), key=lambda item: -item[1] + requests_from.get(item[0], 0.0))
        if n > requests_from.get(op, 0.0)
    }
    return (usage.cpu_seconds - idle_from) / IDLE_SECONDS, by_operation, usage


def _requests_by_operation(settings: Settings) -> dict[str, float]:
    """AWS requests the pipeline's processes signed so far, by "service Operation"."""
    samples = metric_samples(str(settings.metrics_dir.resolve()), "dmd_aws_requests", ("service", "operation"))
    return {f"{service} {operation}": n for (service, operation), n in samples.items()}


def _report(settings: Settings, fans: int, sale: SaleRun) -> dict[str, Any]:
    """The sale's requests, units, task runs and CPU per notification, and their price."""
    now = _counters(settings)

    def grown(name: str) -> dict[tuple[str, ...], float]:
        then = sale.before[name]
        return {k: v - then.get(k, 0.0) for k, v in now[name].items() if v > then.get(k, 0.0)}

    requests, writes = grown("dmd_aws_requests"), grown("dmd_dynamodb_write_items")
    reads, tasks, records = grown("dmd_dynamodb_read_units"), grown("dmd_tasks"), grown("dmd_bridge_records")
    progress = sale.progress
    n = progress["notifications"]
    per_service = _per_service(requests)
    write_units = (
        sum(writes.values())
        + INDEX_WRITES_PER_NOTIFICATION * progress["status"].get("delivered", 0)
        + INDEX_WRITES_PER_NOTIFICATION * progress["status"].get("undelivered", 0)
    )
    read_units = sum(reads.values())
    stream_reads = requests.get(("dynamodb-streams", "GetRecords"), 0)
    cost = _cost(per_service, write_units, read_units, stream_reads, n)
    cpu_seconds, elapsed = sale.cpu_seconds, sale.elapsed
    return {
        "fans": fans,
        "notifications": n,
        "status": progress["status"],
        "elapsed_seconds": round(elapsed, 1),
        "aws_requests_total": int(sum(requests.values())),
        "aws_requests_per_notification": round(sum(requests.values()) / n, 3),
        # the processes' start-up and the idle window before the sale (not charged to it)
        "aws_requests_before_sale": int(sum(sale.before["dmd_aws_requests"].values())),
        "by_service_per_notification": {s: round(c / n, 3) for s, c in sorted(per_service.items())},
        "by_operation": _by_operation(requests, n),
        "dynamodb_write_units_per_notification": round(write_units / n, 3),
        "dynamodb_read_units_per_notification": round(read_units / n, 3),
        "tasks_per_notification": {t: round(c / n, 4) for t, c in sorted(_successful_runs(tasks).items())},
        "cpu_seconds_per_1000_notifications": round(1000 * cpu_seconds / n, 2),
        "cpu_seconds_total": round(cpu_seconds, 1),
        "idle_cpu_seconds_per_second": round(sale.idle_cpu_per_second, 3),
        "idle_aws_requests_per_second": round(sale.idle_requests_per_second, 2),
        "idle_aws_requests_per_second_by_operation": sale.idle_requests_by_operation,
        "cpu_seconds_by_process": sale.cpu_seconds_by_process,
        # the demand table's stream records the demand bridge read (routed or not) per notification
        "stream_records_per_notification": round(records.get(("bridge-demand",), 0) / n, 2),
        "cpu_seconds_per_1000_notifications_less_idle": round(
            1000 * max(0.0, cpu_seconds - sale.idle_cpu_per_second * elapsed) / n, 2
        ),
        "cost_per_million_notifications_usd": {k: round(v, 2) for k, v in cost.items()}
        | {"total": round(sum(cost.values()), 2)},
        "prices": PRICES,
    }


def _by_operation(requests: dict[tuple[str, ...], float], n: int) -> dict[str, dict[str, float]]:
    """Requests per AWS operation, most frequent first, in all and per notification."""
    return {
        f"{service} {operation}": {"requests": int(count), "per_notification": round(count / n, 4)}
        for (service, operation), count in sorted(requests.items(), key=lambda kv: -kv[1])
    }


def _per_service(requests: dict[tuple[str, ...], float]) -> dict[str, float]:
    """Requests per AWS service."""
    per_service: dict[str, float] = defaultdict(float)
    for (service, _operation), count in requests.items():
        per_service[service] += count
    return per_service


def _cost(
    per_service: dict[str, float], write_units: float, read_units: float, stream_reads: float, n: int
) -> dict[str, float]:
    """USD per million notifications, by what is billed."""
    million = 1_000_000 / n
    return {
        "sqs": per_service.get("sqs", 0) * million * PRICES["sqs_per_million_requests"] / 1e6,
        "dynamodb_writes": write_units * million * PRICES["dynamodb_per_million_write_units"] / 1e6,
        "dynamodb_reads": read_units * million * PRICES["dynamodb_per_million_read_units"] / 1e6,
        "dynamodb_streams": stream_reads * million * PRICES["dynamodb_streams_per_million_reads"] / 1e6,
    }


def _successful_runs(tasks: dict[tuple[str, ...], float]) -> dict[str, float]:
    """Successful runs per task (by its short name)."""
    task_runs: dict[str, float] = defaultdict(float)
    for (task, state), count in tasks.items():
        if state == "success":
            task_runs[task.rsplit(".", 1)[-1]] += count
    return task_runs
