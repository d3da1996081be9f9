"""``dmd metrics``' registry: samples every process wrote to the metrics directory, aggregated, the
queue and dead-letter queue depths read from SQS (moto) when scraped, and each SMS provider's
circuit (the session's Redis) and cap."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from prometheus_client import generate_latest

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.deadletters import DeadLetter, DeadLetters
from dmd_tasks.infra.settings import Settings
from dmd_tasks.ops.metrics_server import registry
from dmd_tasks.services import Services, sms_account

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from dmd_tasks.infra import metrics

    metrics.use_directory(Path(sys.argv[1]))
    metrics.BRIDGE_RECORDS.labels(sys.argv[2], "enqueued").inc(int(sys.argv[3]))
    metrics.TASKS.labels("dmd_tasks.send.send_notifications", "success").inc()
    """
)


def write_samples(directory: Path, bridge: str, enqueued: int) -> None:
    """Another process counts, as a bridge or a worker child would, into ``directory``."""
    subprocess.run([sys.executable, "-c", WRITER, str(directory), bridge, str(enqueued)], check=True, timeout=60)


def samples(
    settings: Settings, services: Services | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = registry(settings, services).collect()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in found for s in m.samples}


def by_label(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str) -> dict[str, float]:
    """The samples of ``metric`` by the value of their one label."""
    return {labels[0][1]: value for (name, labels), value in found.items() if name == metric}


def test_samples_written_by_other_processes_are_added_up(settings, stack, tmp_path: Path) -> None:
    mine = settings.model_copy(update={"metrics_dir_override": tmp_path / "metrics"})
    # Given two processes that counted records of the same bridge
    write_samples(mine.metrics_dir, "bridge-x", 3)
    write_samples(mine.metrics_dir, "bridge-x", 4)

    # When the registry is scraped
    found = samples(mine)

    # Then it reports their sum
    assert found[("dmd_bridge_records_total", (("bridge", "bridge-x"), ("outcome", "enqueued")))] == 7
    key = ("dmd_tasks_total", (("state", "success"), ("task", "dmd_tasks.send.send_notifications")))
    assert found[key] == 2


def test_dead_letter_depths_are_read_per_queue_and_a_missing_queue_is_left_out(settings, stack, tmp_path) -> None:
    # Given the dead-letter queues of some prefix exist, but of two owners only
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    mine = settings.model_copy(update={"queue_name_prefix": prefix, "metrics_dir_override": tmp_path / "metrics"})
    (tmp_path / "metrics").mkdir()
    sqs = aws.client("sqs", mine)
    send_dlq = sqs.create_queue(QueueName=topology.dlq_name(mine, "send"))["QueueUrl"]
    demand_dlq = sqs.create_queue(QueueName=topology.dlq_name(mine, "bridge-demand"))["QueueUrl"]
    try:
        # And two dead letters wait in one of them
        DeadLetters(mine).send_batch("send", [DeadLetter("a", {}), DeadLetter("b", {})])

        # When the registry is scraped
        found = samples(mine)
        text = generate_latest(registry(mine)).decode()

        # Then each existing queue has its depth, and the missing ones are simply absent
        depths = {dict(labels)["queue"]: v for (name, labels), v in found.items() if name == "dmd_dlq_depth"}
        assert depths == {"send": 2.0, "bridge-demand": 0.0}
        assert 'dmd_dlq_depth{queue="send"} 2.0' in text
    finally:
        sqs.delete_queue(QueueUrl=send_dlq)
        sqs.delete_queue(QueueUrl=demand_dlq)


def test_every_dead_letter_queue_provisioned_is_reported(queues, tmp_path) -> None:
    mine = queues.settings.model_copy(update={"metrics_dir_override": tmp_path / "metrics"})
    (tmp_path / "metrics").mkdir()

    depths = {dict(labels)["queue"]: v for (name, labels), v in samples(mine).items() if name == "dmd_dlq_depth"}

    assert depths == dict.fromkeys(topology.DLQ_OWNERS, 0.0)


def test_queue_depths_count_waiting_and_in_flight_messages_per_queue(queues, tmp_path) -> None:
    # Given three tasks waiting in the send queue, one of which a worker has received
    mine = queues.settings.model_copy(update={"metrics_dir_override": tmp_path / "metrics"})
    (tmp_path / "metrics").mkdir()
    sqs, url = aws.client("sqs", mine), topology.queue_url(mine, "send")
    for n in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"task {n}")
    assert len(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=60)["Messages"]) == 1

    # When the registry is scraped
    found = samples(mine)

    # Then every provisioned queue has its depth, the intake queues (not provisioned here) none
    assert by_label(found, "dmd_queue_depth") == {**dict.fromkeys(topology.QUEUE_NAMES, 0.0), "send": 2.0}
    assert by_label(found, "dmd_queue_in_flight") == {**dict.fromkeys(topology.QUEUE_NAMES, 0.0), "send": 1.0}


def test_the_intake_queues_dead_letters_are_reported_too(settings, stack, tmp_path) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    mine = settings.model_copy(update={"queue_name_prefix": prefix, "metrics_dir_override": tmp_path / "metrics"})
    (tmp_path / "metrics").mkdir()
    sqs = aws.client("sqs", mine)
    dlq = sqs.create_queue(QueueName=topology.dlq_name(mine, "intake-sms-events"))["QueueUrl"]
    try:
        sqs.send_message(QueueUrl=dlq, MessageBody="an event bridge-sqs could not hand on")

        assert by_label(samples(mine), "dmd_dlq_depth") == {"intake-sms-events": 1.0}
    finally:
        sqs.delete_queue(QueueUrl=dlq)


def test_each_providers_circuit_is_read_from_redis_and_its_cap_from_the_settings(settings, stack, tmp_path) -> None:
    # Given a provider account of this test's own, whose circuit a 429 has just opened
    mine = settings.model_copy(
        update={
            "sms_sender_id": f"t{uuid.uuid4().hex[:8]}",
            "sms_account_parts_per_second": 37.0,
            "metrics_dir_override": tmp_path / "metrics",
        }
    )
    (tmp_path / "metrics").mkdir()
    account = sms_account(mine)
    services = Services(mine)
    assert by_label(samples(mine, services), "dmd_sms_circuit_state") == {account: 0.0}  # closed
    circuit = services.sms_circuit
    circuit.throttled(circuit.before_call(), 30)

    # When the registry is scraped
    found = samples(mine, services)

    # Then the circuit is open (2) and the cap is the account's
    assert by_label(found, "dmd_sms_circuit_state") == {account: 2.0}
    assert by_label(found, "dmd_sms_cap_parts_per_second") == {account: 37.0}
    services.redis.delete(*services.redis.keys(f"dmd:circuit:{account}*"))


def test_an_exporter_beside_a_process_serves_its_samples_only(settings, tmp_path: Path) -> None:
    # Given a process that counted into the directory an exporter beside it reads (a task on ECS)
    mine = settings.model_copy(update={"metrics_dir_override": tmp_path / "metrics"})
    write_samples(mine.metrics_dir, "bridge-y", 2)

    # When that exporter, which leaves the queue depths and circuits to the deployment's own
    # exporter, is scraped
    families = {m.name: m for m in registry(mine, shared=False).collect()}

    # Then it serves the process's samples, and no queue depth or circuit at all (no SQS or Redis request)
    for shared in ("dmd_dlq_depth", "dmd_queue_depth", "dmd_queue_in_flight", "dmd_sms_circuit_state"):
        assert shared not in families
    records = families["dmd_bridge_records"].samples
    assert [(s.labels, s.value) for s in records if s.name.endswith("_total")] == [
        ({"bridge": "bridge-y", "outcome": "enqueued"}, 2.0)
    ]
