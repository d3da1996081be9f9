"""The Procfile under a plain process runner (honcho), as an operator runs it without `dmd demo`:
after a sale, ``dmd metrics`` serves the samples of the workers, beat and the bridges.

The ``celery`` command imports prometheus_client (Flower's plugin) before dmd's code runs, and
nothing here sets ``PROMETHEUS_MULTIPROC_DIR``: each process must pick the metrics directory
itself (``dmd_tasks.infra.metrics``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from dmd_tasks.infra import topology
from dmd_tasks.ops.stack import PROCFILE, REPO_ROOT, free_port, read_procfile, spawn
from tests.chaos.scenario import all_terminal, start_sale
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

FANS = 5


@pytest.fixture()
def honcho(settings, stack, tmp_path) -> Iterator[tuple[str, Path]]:
    """Every Procfile process under ``honcho start``; the metrics URL and honcho's output file."""
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "DMD_METRICS_DIR": str(tmp_path / "metrics"),
            "DMD_METRICS_PORT": str(metrics_port),
            "DMD_API_PORT": str(free_port()),
            "DMD_FLOWER_PORT": str(free_port()),
            "DMD_CLAIM_INTERVAL_SECONDS": "1",
            "DMD_SCHEDULE_INTERVAL_SECONDS": "1",
        }
    )
    output = tmp_path / "honcho.log"
    runner = spawn(
        [sys.executable, "-m", "honcho", "-f", str(PROCFILE), "-d", str(REPO_ROOT), "start"], output, env, REPO_ROOT
    )
    try:
        yield f"http://127.0.0.1:{metrics_port}/metrics", output
    finally:
        runner.send_signal(signal.SIGINT)  # honcho stops every process it started
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=10)


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    text = requests.get(url, timeout=10).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def test_under_honcho_the_exporter_serves_worker_beat_and_bridge_metrics(honcho, settings) -> None:
    url, output = honcho
    sale_id, _ = start_sale(settings, FANS, rate=5)

    wait_until(lambda: all_terminal(settings, sale_id, FANS), timeout=120, what="the sale to finish")

    # a worker counts a transition just after writing it: the last one may reach the exporter a moment
    # later; and the sale can end before the demand bridge has read its fans' rows (the claim may find
    # the sale before the bridge wakes it): the bridge counts them when it reads them
    def counted() -> list[tuple[str, dict[str, str], float]] | None:
        s = scrape(url)
        done = final_transitions(s) >= FANS and value_in(s, "dmd_bridge_records_total", bridge="bridge-demand") >= FANS
        return s if done else None

    samples = wait_until(counted, timeout=30, what="all counted")

    def value(name: str, **labels: str) -> float:
        return value_in(samples, name, **labels)

    up: dict[str, int] = {}
    for name, labels, v in samples:
        if name == "dmd_process_up" and v == 1:
            up[labels["process"]] = up.get(labels["process"], 0) + 1
    workers = sum(1 for process in read_procfile() if process.startswith("worker-"))
    assert up.get("worker") == workers, (up, output.read_text()[-3000:])
    for process in ("beat", "bridge-demand", "bridge-sms-status", "bridge-sqs", "api", "metrics"):
        assert up.get(process) == 1, (process, up)
    # worker children count their tasks; beat holds its lock; the bridges count their records
    assert value("dmd_tasks_total", task=topology.SEND_NOTIFICATIONS, state="success") >= 1, samples
    assert value("dmd_tasks_total", task=topology.RECORD_SMS_STATUS, state="success") >= 1, samples
    assert value("dmd_beat_lock_held", process="beat") == 1
    assert value("dmd_bridge_records_total", bridge="bridge-demand") >= FANS  # the fans' demand rows at least
    assert value("dmd_bridge_records_total", bridge="bridge-sms-status") >= FANS
    # every fan's final status was counted (the simulator draws some undelivered or failed)
    assert final_transitions(samples) >= FANS, samples


def value_in(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


def final_transitions(samples: list[tuple[str, dict[str, str], float]]) -> float:
    return sum(
        v
        for n, labels, v in samples
        if n == "dmd_notification_transitions_total"
        and labels.get("to_status") in ("delivered", "undelivered", "failed")
    )
