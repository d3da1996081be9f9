"""What dmd's processes export, read back from the exporters themselves: every sample name and its
label names, as Prometheus sees them.

- ``dmd metrics`` (port 9808): a fresh process imports every module of ``dmd_tasks`` and
  ``bridges`` (so every metric any of them declares is registered), picks a metrics directory
  as every process does at start-up (``metrics.use_directory``) and writes one sample of every
  family it declared; the exporter's own registry (``metrics_server.registry``) then reads the
  files and adds what it reads when scraped (queues and dead letters from SQS, circuits from
  Redis: here from stand-ins that answer as an idle pipeline's would), and its exposition is
  parsed back. So suffixes (``_total``, ``_bucket``, ``_count``, ``_sum``) and labels (``pid``
  of the live gauges) are the exporter's, and a family that never reaches the files is missing.
- Flower (port 5555): the same process, before it picks the directory, makes Flower's metrics as
  Flower's own process does and prints their exposition.

The families a process declared are also returned (``Exported.declared``), to check that each
reached the exporter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import PIPE
from typing import Any
from unittest import mock

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dmd_tasks.infra import aws
from dmd_tasks.infra.settings import Settings
from dmd_tasks.ops import metrics_server
from dmd_tasks.services import Services

REPO = Path(__file__).resolve().parents[1]

#: argv[1]: the metrics directory. Prints JSON: Flower's exposition, and the families declared.
WRITER = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    from pathlib import Path

    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.metrics import MetricWrapperBase

    import bridges, dmd_tasks
    from dmd_tasks.infra import metrics
    from flower.events import get_prometheus_metrics

    for package in (dmd_tasks, bridges):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    get_prometheus_metrics()  # Flower's, made as its own process makes them

    def touch(metric):
        # one sample of every family (prometheus_client keeps a metric's label names private)
        child = metric.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else metric
        {"counter": lambda: child.inc(), "gauge": lambda: child.set(1)}.get(metric._type, lambda: child.observe(1))()

    declared = [c for c in list(REGISTRY._collector_to_names) if isinstance(c, MetricWrapperBase)]
    flower = CollectorRegistry()
    for metric in declared:
        if metric._name.startswith("flower_"):
            touch(metric)
            flower.register(metric)
    flower_text = generate_latest(flower).decode()

    metrics.use_directory(Path(sys.argv[1]), "probe")
    ours = [m for m in declared if not m._name.startswith("flower_")]
    for metric in ours:
        touch(metric)
    print(json.dumps({"flower": flower_text, "declared": sorted(m._name for m in ours)}), flush=True)
    sys.stdin.read()  # alive until the exporter has read the files: a gone process's gauges are cleared
    """
)


class IdleQueues:
    """SQS as the exporter meets it on an idle pipeline: every queue there, and empty."""

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:  # noqa: N803
        return {"Attributes": dict.fromkeys(AttributeNames, "0")}


class ClosedCircuits:
    """Redis as a provider circuit reads it when the provider is healthy: no pause, no trip."""

    def register_script(self, script: str) -> Any:
        return lambda **_: None

    def pttl(self, key: str) -> int:
        return -2

    def exists(self, key: str) -> int:
        return 0


@dataclass
class Exported:
    #: sample name -> the label names its samples carry
    samples: dict[str, set[str]] = field(default_factory=dict)
    #: the metric names dmd's modules declare (without suffixes)
    declared: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.setdefault(sample.name, set()).update(sample.labels)


def served(settings: Settings, directory: Path) -> str:
    """The exposition of ``dmd metrics`` over ``directory``, with SQS and Redis answering as on an
    idle pipeline (no socket)."""
    mine = settings.model_copy(update={"metrics_dir_override": directory})
    services = Services(mine)
    services.__dict__["redis"] = ClosedCircuits()  # the circuits are built on it (a cached property)
    with mock.patch.object(aws, "client", lambda service, settings: IdleQueues()):
        return generate_latest(metrics_server.registry(mine, services)).decode()


def exported(settings: Settings, directory: Path) -> Exported:
    """What ``dmd metrics`` serves (from a process that wrote every family it declares into
    ``directory``) and what Flower serves."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    argv = [sys.executable, "-c", WRITER, str(directory)]
    with (
        tempfile.TemporaryFile("w+") as errors,
        subprocess.Popen(argv, stdin=PIPE, stdout=PIPE, stderr=errors, text=True, env=env, cwd=REPO) as writer,
    ):
        assert writer.stdin is not None and writer.stdout is not None
        try:
            line = writer.stdout.readline()
            if not line:
                errors.seek(0)
                raise AssertionError(f"the writer process failed: {errors.read()}")
            written = json.loads(line)
            found = Exported(declared=written["declared"])
            found.add(written["flower"])
            found.add(served(settings, directory))
        finally:
            writer.stdin.close()
            writer.wait(timeout=60)
    return found
