"""Metrics in prometheus_client's multiprocess mode: every process writes its samples to files in
the metrics directory, whatever imported prometheus_client first, and a dead child's live gauges
are forgotten.

Each scenario runs in a fresh Python process (the choice between in-process and file-backed
values is per process), and the files are read back as ``dmd metrics`` reads them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from dmd_tasks.infra import metrics

REPO = Path(__file__).resolve().parents[3]

#: Imports prometheus_client with no multiprocess directory set, then picks the directory.
WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    import prometheus_client  # first, while the environment names no directory
    from prometheus_client import values

    assert values.ValueClass is values.MutexValue, "expected prometheus_client to start in-process"

    from dmd_tasks.infra import metrics

    metrics.use_directory(Path(sys.argv[1]))
    metrics.TASKS.labels("dmd_tasks.test.task", "success").inc(int(sys.argv[2]))
    metrics.BRIDGE_LAG.labels("bridge-test").set(float(sys.argv[2]))
    metrics.SEND_LATENCY.labels("sms").observe(0.2)
    if len(sys.argv) > 3:
        live = prometheus_client.Gauge("test_live", "a live gauge", ["k"], multiprocess_mode="livesum")
        live.labels("a").set(1)
    print(os.getpid())
    """
)


def run_writer(directory: Path, amount: int, *, live_gauge: bool = False) -> int:
    """Run a fresh process that writes samples to ``directory``; its pid."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    argv = [sys.executable, "-c", WRITER, str(directory), str(amount)] + (["live"] if live_gauge else [])
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def samples(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What ``dmd metrics`` would serve from ``directory``: (sample name, labels) -> value."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in registry.collect() for s in family.samples}


def test_a_process_that_imported_prometheus_client_first_still_writes_its_samples_to_the_directory(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "not" / "yet" / "there"

    pid = run_writer(directory, 3)

    files = {p.name for p in directory.iterdir()}
    assert {f"counter_{pid}.db", f"gauge_max_{pid}.db", f"histogram_{pid}.db"} <= files
    found = samples(directory)
    assert found[("dmd_tasks_total", (("state", "success"), ("task", "dmd_tasks.test.task")))] == 3
    assert found[("dmd_bridge_lag_seconds", (("bridge", "bridge-test"),))] == 3
    assert found[("dmd_send_latency_seconds_count", (("provider", "sms"),))] == 1


def test_the_samples_of_several_processes_add_up(tmp_path: Path) -> None:
    first, second = run_writer(tmp_path, 3), run_writer(tmp_path, 4)

    assert first != second
    found = samples(tmp_path)
    assert found[("dmd_tasks_total", (("state", "success"), ("task", "dmd_tasks.test.task")))] == 7
    # a gauge in "max" mode reports the largest value any process wrote
    assert found[("dmd_bridge_lag_seconds", (("bridge", "bridge-test"),))] == 4
    assert found[("dmd_send_latency_seconds_count", (("provider", "sms"),))] == 2


def test_a_dead_process_live_gauges_are_forgotten_and_its_counters_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = run_writer(tmp_path, 2, live_gauge=True)
    assert (tmp_path / f"gauge_livesum_{pid}.db").exists()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))

    metrics.process_exited(pid)

    assert not (tmp_path / f"gauge_livesum_{pid}.db").exists()
    assert (tmp_path / f"counter_{pid}.db").exists()
    assert (tmp_path / f"gauge_max_{pid}.db").exists()
    assert samples(tmp_path)[("dmd_tasks_total", (("state", "success"), ("task", "dmd_tasks.test.task")))] == 2


def test_process_exited_without_a_metrics_directory_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = run_writer(tmp_path, 1, live_gauge=True)
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)

    metrics.process_exited(pid)

    assert (tmp_path / f"gauge_livesum_{pid}.db").exists()
