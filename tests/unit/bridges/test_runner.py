"""run_bridge, as the real process: ``python -m bridges.sms_status`` on moto, stopped with SIGTERM.

The process gets the session's environment with a Kinesis stream, queue prefix and metrics
directory of the test's own, so what it publishes, dead-letters and counts is this test's alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dmd_tasks.infra import aws
from dmd_tasks.ops.metrics_server import registry
from dmd_tasks.ops.provision import ensure_kinesis_stream
from dmd_tasks.ops.stack import REPO_ROOT, spawn, stop_pid
from tests.helpers import wait_until

SHARD = "shardId-000000000000"


@pytest.fixture()
def stream(settings, stack) -> Iterator[dict[str, Any]]:
    name = f"test-runner-{uuid.uuid4().hex[:8]}"
    created = ensure_kinesis_stream(settings, name)
    yield created
    aws.client("kinesis", settings).delete_stream(StreamName=name)


def start_bridge(queues, stream: dict[str, Any], run_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DMD_QUEUE_NAME_PREFIX": queues.settings.queue_name_prefix,
        "DMD_SMS_STATUS_STREAM_NAME": stream["name"],
        "DMD_METRICS_DIR": str(run_dir / "metrics"),
    }
    return spawn([sys.executable, "-m", "bridges.sms_status"], run_dir / "bridge.log", env, REPO_ROOT)


def put(settings, stream: dict[str, Any], payloads: list[bytes]) -> list[str]:
    kinesis = aws.client("kinesis", settings)
    return [kinesis.put_record(StreamName=stream["name"], Data=p, PartitionKey="p")["SequenceNumber"] for p in payloads]


def checkpoint(settings, stream: dict[str, Any]) -> dict[str, Any] | None:
    found = aws.client("dynamodb", settings).get_item(
        TableName=settings.checkpoint_table_name,
        Key={"stream": {"S": f"bridge-sms-status|{stream['arn']}"}, "shard": {"S": SHARD}},
        ConsistentRead=True,
    )
    return found.get("Item")


def gather(into: list[Any], more: list[Any]) -> list[Any]:
    into.extend(more)
    return into


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        stop_pid(process.pid, grace_seconds=1)


def event(message_id: str) -> bytes:
    return json.dumps(
        {"type": "status", "message_id": message_id, "status": "delivered", "timestamp": "2026-11-25T10:00:00Z"}
    ).encode()


def test_the_bridge_process_publishes_checkpoints_and_exits_cleanly_on_sigterm(
    settings, queues, stream, tmp_path
) -> None:
    # Given two provider events and a record that is not one on the bridge's stream
    sequences = put(settings, stream, [event("m1"), b"garbage", event("m2")])
    seen: list[Any] = []
    letters: list[dict[str, Any]] = []

    # When the bridge process runs
    process = start_bridge(queues, stream, tmp_path)
    try:
        wait_until(lambda: gather(seen, queues.tasks("sms-status")), timeout=60, what="the status task published")
        wait_until(lambda: gather(letters, queues.dead_letters("bridge-sms-status")), what="the dead letter")
        # Then, idle, it checkpoints the last record it handled
        wait_until(
            lambda: (c := checkpoint(settings, stream)) and c.get("sequence", {}).get("S") == sequences[-1],
            what="the checkpoint at the last record",
        )

        # When it gets SIGTERM, it stops and exits with 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)
    log = (tmp_path / "bridge.log").read_text()
    assert "stopping after the current page" in log

    assert [t.args for t in seen] == [[[json.loads(event("m1")), json.loads(event("m2"))]]]
    assert [d["reason"] for d in letters] == ["record is not JSON"]
    # And what it counted is in its metrics directory, for `dmd metrics` to serve
    mine = settings.model_copy(update={"metrics_dir_override": tmp_path / "metrics"})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry(mine).collect() for s in m.samples}
    records = "dmd_bridge_records_total"
    assert samples[(records, (("bridge", "bridge-sms-status"), ("outcome", "enqueued")))] == 2
    assert samples[(records, (("bridge", "bridge-sms-status"), ("outcome", "dead-lettered")))] == 1


def test_a_restarted_bridge_resumes_after_its_checkpoint(settings, queues, stream, tmp_path) -> None:
    # Given a bridge that handled one event, checkpointed it and was stopped
    first = put(settings, stream, [event("m1")])
    process = start_bridge(queues, stream, tmp_path)
    try:
        wait_until(
            lambda: (c := checkpoint(settings, stream)) and c.get("sequence", {}).get("S") == first[-1],
            timeout=60,
            what="the first checkpoint",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)
    assert [t.args[0][0]["message_id"] for t in queues.tasks("sms-status")] == ["m1"]

    # When another event arrives and the bridge starts again
    second = put(settings, stream, [event("m2")])
    process = start_bridge(queues, stream, tmp_path)
    try:
        wait_until(
            lambda: (c := checkpoint(settings, stream)) and c.get("sequence", {}).get("S") == second[-1],
            timeout=60,
            what="the second checkpoint",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)

    # Then it read on from the checkpoint: only the new event is published
    assert [t.args[0][0]["message_id"] for t in queues.tasks("sms-status")] == ["m2"]
    assert f"resuming after checkpoint {first[-1]}" in (tmp_path / "bridge.log").read_text()
