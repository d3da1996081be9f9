"""A worker refuses to start on an SQS queue whose visibility timeout is too short."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dmd_tasks.infra import aws

pytestmark = pytest.mark.e2e


def test_worker_refuses_a_queue_that_would_redeliver_running_tasks(settings, stack) -> None:
    # Given a queue whose visibility timeout (10 s) is shorter than a retry countdown
    aws.client("sqs", settings).create_queue(QueueName="unsafe-short-url", Attributes={"VisibilityTimeout": "10"})
    # When a worker is started on it
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dmd_tasks.celery_app",
            "worker",
            "-Q",
            "short-url",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env={**os.environ, "DMD_QUEUE_NAME_PREFIX": "unsafe-"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it exits with an error that says why, before consuming anything
    assert result.returncode != 0
    assert "visibility timeout 10s is not above" in result.stderr + result.stdout
    assert "ready." not in result.stderr + result.stdout
