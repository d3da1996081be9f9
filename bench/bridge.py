"""4. Bridge throughput: stream records → enqueued tasks by one bridge process, against bare SendMessageBatch.

The records: demand rows of distinct events (one record → one shortening task). (Notifications
are not on the demand table's stream: they live in the notifications table, and the stage that
moves one publishes its next task itself.) Per run the bridge process (the Procfile's ``bridge-demand``) is paused
(SIGSTOP) while the records go into the table, then resumed and timed until their tasks
are in SQS. Side by side, a bare boto3 loop sends as many messages of the same size to
the same queue with SendMessageBatch, ten a call. Both start from an empty queue (moto's
SQS slows down with depth, so the depth profile must be the same).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bench.harness import Harness, summary, wait_until

BRIDGE = "bridge-demand"


def demand_stream_records(settings: Any, count: int, page: int = 1000) -> list[list[dict[str, Any]]]:
    """Synthetic DynamoDB Streams INSERT records of demand rows (M distinct events), in pages."""
    from bench.seed import demand_rows
    from dmd_tasks.store.codec import serialize

    now = datetime.now(UTC)
    records = []
    for n in range(count):
        row = demand_rows(f"evb{n:07d}", 1, start=n)[0]
        image = serialize(row)
        records.append(
            {
                "eventID": uuid.uuid4().hex,
                "eventName": "INSERT",
                "dynamodb": {
                    "ApproximateCreationDateTime": now,
                    "Keys": {"pk": image["pk"], "sk": image["sk"]},
                    "NewImage": image,
                    "SequenceNumber": f"{n:021d}",
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            }
        )
    return [records[i : i + page] for i in range(0, count, page)]


def queue_depth(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def empty_queue(sqs: Any, url: str) -> None:
    """Empty a queue now: delete and re-create it with its attributes (SQS allows one purge a minute)."""
    kept = ("VisibilityTimeout", "RedrivePolicy", "MessageRetentionPeriod", "ReceiveMessageWaitTimeSeconds")
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(kept))["Attributes"]
    sqs.delete_queue(QueueUrl=url)
    sqs.create_queue(QueueName=url.rsplit("/", 1)[1], Attributes={k: v for k, v in attributes.items() if k in kept})


def bare_send(sqs: Any, url: str, body: str, count: int) -> float:
    """Seconds a bare loop takes to send ``count`` messages of ``body`` with SendMessageBatch (10 a call)."""
    entries = [{"Id": str(i), "MessageBody": body} for i in range(10)]
    started = time.perf_counter()
    for start in range(0, count, 10):
        batch = entries[: min(10, count - start)]
        response = sqs.send_message_batch(QueueUrl=url, Entries=batch)
        if response.get("Failed"):
            raise RuntimeError(f"SendMessageBatch failed: {response['Failed'][:1]}")
    return time.perf_counter() - started


def sample_body(settings: Any) -> str:
    """A message body as the bridge builds it for one shortening task."""
    from dmd_tasks.celery_app import app
    from dmd_tasks.celery_app.publish import BatchPublisher
    from dmd_tasks.infra.topology import SHORTEN_EVENT_URL, TaskCall

    return BatchPublisher(app, settings)._encode(
        SHORTEN_EVENT_URL, "short-url", TaskCall(args=("evb0000001",), headers={"dmd_correlation_id": uuid.uuid4().hex})
    )


def _write_demand(settings: Any, run_no: int, count: int) -> tuple[int, int, str]:
    """``count`` demand rows of as many events: (stream records, tasks expected, queue)."""
    from bench.seed import demand_rows
    from dmd_tasks.store.table import DemandTable

    DemandTable(settings).put_items([r for n in range(count) for r in demand_rows(f"ev{run_no}x{n:06d}", 1, start=n)])
    return count, count, "short-url"


SCENARIOS = {
    "demand_inserts": _write_demand,  # one record → one shortening task (distinct events)
}


def run(h: Harness, *, records: int, runs: int) -> dict[str, Any]:
    from dmd_tasks.infra import aws, topology

    settings = h.settings
    h.fresh()
    sqs = aws.client("sqs", settings)
    body = sample_body(settings)
    out: dict[str, Any] = {"runs": runs, "message_bytes": len(body)}
    env = {"DMD_BRIDGE_IDLE_SLEEP_SECONDS": "0.02"}
    with h.processes([BRIDGE], env=env, label="bridge") as group:
        pid = group.processes[BRIDGE].pid
        # The bridge is up and reading once a first record has become a task.
        _write_demand(settings, 999, 1)
        short_url = topology.queue_url(settings, "short-url")
        wait_until(lambda: queue_depth(sqs, short_url) >= 1, 60, 0.1, what="bridge started")
        for name, write in SCENARIOS.items():
            count = records if name == "scheduled_notifications" else max(1, records // 2)
            record_rates, task_rates, bare_rates = [], [], []
            for run_no in range(runs):
                os.kill(pid, signal.SIGSTOP)  # the records pile up in the stream meanwhile
                try:
                    for queue in ("short-url", "send"):
                        empty_queue(sqs, topology.queue_url(settings, queue))
                    n_records, n_tasks, queue = write(settings, run_no, count)
                finally:
                    os.kill(pid, signal.SIGCONT)
                url = topology.queue_url(settings, queue)
                started = time.perf_counter()
                wait_until(
                    lambda: queue_depth(sqs, url) >= n_tasks,  # noqa: B023 (called at once, in this iteration)
                    120 + n_records / 10,
                    0.02,
                    what=f"{n_tasks} tasks enqueued",
                )
                elapsed = time.perf_counter() - started
                record_rates.append(n_records / elapsed)
                task_rates.append(n_tasks / elapsed)
                empty_queue(sqs, url)
                bare_rates.append(n_tasks / bare_send(sqs, url, body, n_tasks))
                h.say(
                    f"bridge {name} run {run_no + 1}/{runs}: {record_rates[-1]:,.0f} records/s = "
                    f"{task_rates[-1]:,.0f} tasks/s; bare SendMessageBatch {bare_rates[-1]:,.0f} messages/s"
                )
            out[name] = {
                "records_per_run": n_records,
                "tasks_per_run": n_tasks,
                "records_per_second": summary(record_rates, 1),
                "tasks_per_second": summary(task_rates, 1),
                "bare_messages_per_second": summary(bare_rates, 1),
                "ratio_to_bare": summary([t / b for t, b in zip(task_rates, bare_rates, strict=True)], 3),
            }
        if group.dead():
            raise RuntimeError(f"bridge exited: {group.dead()}")
    out["status_bridges"] = status_bridges(h, events=records * 10, runs=runs)
    return out


STATUS_BRIDGE = "bridge-sms-status"


def _status_events(count: int, run_no: int) -> list[dict[str, Any]]:
    """Kinesis records of ``count`` delivery statuses, spread over the shards by message id."""
    import json

    stamp = datetime.now(UTC).isoformat()
    return [
        {
            "Data": json.dumps(
                {"type": "status", "message_id": f"SMb{run_no}x{n:07d}", "status": "delivered", "timestamp": stamp}
            ).encode(),
            "PartitionKey": f"SMb{run_no}x{n:07d}",
        }
        for n in range(count)
    ]


def status_bridges(h: Harness, *, events: int, runs: int) -> dict[str, Any]:
    """Status records/s with one and with two ``bridge-sms-status`` processes sharing the status
    stream's shards through leases (each run: both paused while the records go in, then timed until
    their tasks are in SQS; the pause is shorter than the lease failover, so no lease moves)."""
    from bridges.lease_table import LeaseTable
    from bridges.sources import KinesisSource
    from dmd_tasks.infra import aws, topology

    settings = h.settings
    sqs = aws.client("sqs", settings)
    kinesis = aws.client("kinesis", settings)
    stream = settings.sms_status_stream_name
    url = topology.queue_url(settings, "sms-status")
    tasks = -(-events // settings.status_batch_size)
    leases = LeaseTable(settings, STATUS_BRIDGE, KinesisSource(settings, stream).stream_id)
    shards = len(kinesis.list_shards(StreamName=stream)["Shards"])
    out: dict[str, Any] = {"shards": shards, "events_per_run": events, "tasks_per_run": tasks}
    env = {"DMD_BRIDGE_IDLE_SLEEP_SECONDS": "0.02", "DMD_BRIDGE_LEASE_FAILOVER_SECONDS": "10"}
    for processes in (1, 2):
        instances = [STATUS_BRIDGE] + [f"{STATUS_BRIDGE}-{n}" for n in range(2, processes + 1)]
        specs = [(STATUS_BRIDGE, name, ()) for name in instances]
        with h.processes(specs, env=env, label=f"status-bridges-{processes}") as group:

            def balanced(group: Any = group, processes: int = processes) -> bool:
                owners: dict[str, int] = {}
                for lease in leases.list():
                    if not lease.finished and lease.owner:
                        owners[lease.owner] = owners.get(lease.owner, 0) + 1
                pids = {str(p.pid) for p in group.processes.values()}
                return (
                    sum(owners.values()) == shards
                    and len(owners) == processes
                    and {o.split(":")[1] for o in owners} <= pids
                    and max(owners.values()) - min(owners.values()) <= 1
                )

            wait_until(balanced, 90, 0.5, what=f"{processes} status bridge(s) sharing the shards")
            rates: list[float] = []
            for run_no in range(runs):
                empty_queue(sqs, url)
                for process in group.processes.values():
                    os.kill(process.pid, signal.SIGSTOP)
                try:
                    records = _status_events(events, run_no + 10 * processes)
                    for start in range(0, events, 500):
                        kinesis.put_records(StreamName=stream, Records=records[start : start + 500])
                finally:
                    for process in group.processes.values():
                        os.kill(process.pid, signal.SIGCONT)
                started = time.perf_counter()
                wait_until(lambda: queue_depth(sqs, url) >= tasks, 120 + events / 10, 0.02, what="status tasks")
                rates.append(events / (time.perf_counter() - started))
                h.say(f"status bridges x{processes} run {run_no + 1}/{runs}: {rates[-1]:,.0f} records/s")
            if group.dead():
                raise RuntimeError(f"status bridge exited: {group.dead()}")
            out[f"records_per_second_{processes}"] = summary(rates, 1)
    empty_queue(sqs, url)
    return out
