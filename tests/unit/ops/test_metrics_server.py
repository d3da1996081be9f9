"""``dmd metrics``' registry: samples every process wrote to the metrics directory, aggregated, and
the dead-letter queue depths read from SQS (moto) when scraped."""

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


def samples(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry(settings).collect() for s in m.samples}


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


def test_an_exporter_without_dead_letter_depths_serves_the_samples_only(settings, tmp_path: Path) -> None:
    # Given a process that counted into the directory an exporter beside it reads (a task on ECS)
    mine = settings.model_copy(update={"metrics_dir_override": tmp_path / "metrics"})
    write_samples(mine.metrics_dir, "bridge-y", 2)

    # When that exporter, which leaves the queue depths to the deployment's own exporter, is scraped
    families = {m.name: m for m in registry(mine, dlq_depth=False).collect()}

    # Then it serves the process's samples, and no dead-letter depth at all (no SQS request)
    assert "dmd_dlq_depth" not in families
    records = families["dmd_bridge_records"].samples
    assert [(s.labels, s.value) for s in records if s.name.endswith("_total")] == [
        ({"bridge": "bridge-y", "outcome": "enqueued"}, 2.0)
    ]
