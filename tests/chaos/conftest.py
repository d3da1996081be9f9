"""The fault suite's fixtures: an empty moto per scenario, short visibility timeouts, and the
pipeline's processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dmd_tasks.infra import aws, topology
from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.stack import ProcessGroup
from tests.chaos.scenario import CHAOS_ENV, REPORTED
from tests.helpers import fresh_stack


@pytest.fixture(autouse=True)
def figures_in_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """The scenario's figure lines, kept on its report (``user_properties``): the run's summary
    prints them (tests/conftest.py), also when the scenario ran on an xdist worker."""
    start = len(REPORTED)
    yield
    request.node.user_properties.extend(("chaos", line) for line in REPORTED[start:])


@pytest.fixture(autouse=True)
def fresh_aws(settings, stack) -> Iterator[None]:
    """Every scenario on an empty moto, provisioned again, with short visibility timeouts, and an
    empty Redis database (``fresh_stack``).

    moto answers a DynamoDB query or a Kinesis GetRecords by walking everything the table or the
    shard ever held, so scenario after scenario the emulator (not the pipeline) slowed down:
    recovery times grew with each scenario run before. On an empty moto each scenario's figures
    are its own. A killed worker's unacknowledged messages come back after 30 s instead of minutes.
    """
    fresh_stack(settings)  # Redis too: an earlier outage's circuit would stay tripped for a while
    sqs = aws.client("sqs", settings)
    urls = [topology.queue_url(settings, q) for q in ("send", "sms-status", "generate", "schedule")]
    for url in urls:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "30"})
    yield
    # the tests after this one (end-to-end ones too) find the queues as provisioned: a worker
    # refuses a queue whose visibility timeout is shorter than its countdowns and time limit
    for url in urls:
        sqs.set_queue_attributes(
            QueueUrl=url, Attributes={"VisibilityTimeout": str(settings.visibility_timeout_seconds)}
        )


@pytest.fixture()
def pipeline(settings, sim) -> Iterator[ProcessGroup]:
    sim.configure(sms={"status_delay_ms": 100})
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / f"chaos-{uuid.uuid4().hex[:6]}", env=CHAOS_ENV)
    group.start(PIPELINE_PROCESSES)
    try:
        yield group
    finally:
        group.stop()
        sim.configure(
            sms={
                "latency_ms": 0,
                "error_rate": 0,
                "throttle_rate": 0,
                "timeout_rate": 0,
                "duplicate_status_rate": 0.05,
                "out_of_order_rate": 0.05,
            }
        )
