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
from tests.exported import exported

REPO = Path(__file__).resolve().parents[3]

#: Imports prometheus_client with no multiprocess directory set, then picks the directory.
WRITER = textwrap.dedent(
    """
    import os, socket, sys
    from pathlib import Path

    if os.environ.get("FAKE_HOST"):  # a container of its own: another host name, maybe the same pid
        socket.gethostname = lambda: os.environ["FAKE_HOST"]

    import prometheus_client  # first, while the environment names no directory
    from prometheus_client import values

    assert values.ValueClass is values.MutexValue, "expected prometheus_client to start in-process"

    from dmd_tasks.infra import metrics

    metrics.use_directory(Path(sys.argv[1]), "writer")
    metrics.TASKS.labels("dmd_tasks.test.task", "success").inc(int(sys.argv[2]))
    metrics.BRIDGE_LAG.labels("bridge-test").set(float(sys.argv[2]))
    metrics.SEND_LATENCY.labels("sms").observe(0.2)
    if len(sys.argv) > 3:
        live = prometheus_client.Gauge("test_live", "a live gauge", ["k"], multiprocess_mode="livesum")
        live.labels("a").set(1)
    print(os.getpid())
    """
)


def run_writer(directory: Path, amount: int, *, live_gauge: bool = False, host: str | None = None) -> int:
    """Run a fresh process (on ``host``, as its name says) that writes samples to ``directory``; its pid."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    if host:
        env["FAKE_HOST"] = host
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
    me = f"{metrics.host_name()}-{pid}"
    assert {f"counter_{me}.db", f"gauge_max_{me}.db", f"histogram_{me}.db"} <= files
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
    me = f"{metrics.host_name()}-{pid}"
    assert (tmp_path / f"gauge_livesum_{me}.db").exists()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))

    metrics.process_exited(pid)

    assert not (tmp_path / f"gauge_livesum_{me}.db").exists()
    assert (tmp_path / f"counter_{me}.db").exists()
    assert (tmp_path / f"gauge_max_{me}.db").exists()
    assert samples(tmp_path)[("dmd_tasks_total", (("state", "success"), ("task", "dmd_tasks.test.task")))] == 2


def test_process_exited_without_a_metrics_directory_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = run_writer(tmp_path, 1, live_gauge=True)
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)

    metrics.process_exited(pid)

    assert (tmp_path / f"gauge_livesum_{metrics.host_name()}-{pid}.db").exists()


def test_processes_of_two_containers_sharing_one_folder_write_files_of_their_own(tmp_path: Path) -> None:
    # every container runs its command under the same pid: the host name keeps their files apart
    a, b = run_writer(tmp_path, 3, host="container-a"), run_writer(tmp_path, 4, host="container-b")

    files = {p.name for p in tmp_path.iterdir()}
    assert {f"counter_container-a-{a}.db", f"counter_container-b-{b}.db"} <= files
    found = samples(tmp_path)
    assert found[("dmd_tasks_total", (("state", "success"), ("task", "dmd_tasks.test.task")))] == 7
    up = {labels: value for (name, labels), value in found.items() if name == "dmd_process_up"}
    assert up == {
        (("pid", f"container-a-{a}"), ("process", "writer")): 1,
        (("pid", f"container-b-{b}"), ("process", "writer")): 1,
    }


def test_a_gone_process_gauges_are_cleared_its_totals_kept_and_other_hosts_left_alone(tmp_path: Path) -> None:
    gone = run_writer(tmp_path, 2, live_gauge=True)  # exited: its pid is free now
    elsewhere = run_writer(tmp_path, 5, live_gauge=True, host="other-container")
    here = f"{metrics.host_name()}-{gone}"
    # a process of this host that still runs (this test) keeps its gauges
    alive = tmp_path / f"gauge_liveall_{metrics.host_name()}-{os.getpid()}.db"
    alive.write_bytes((tmp_path / f"gauge_liveall_{here}.db").read_bytes())

    removed = set(metrics.clear_stale(tmp_path))

    assert removed == {f"gauge_liveall_{here}.db", f"gauge_livesum_{here}.db", f"gauge_max_{here}.db"}
    assert alive.exists()
    assert (tmp_path / f"counter_{here}.db").exists()
    assert (tmp_path / f"gauge_livesum_other-container-{elsewhere}.db").exists()
    found = samples(tmp_path)
    assert found[("dmd_tasks_total", (("state", "success"), ("task", "dmd_tasks.test.task")))] == 7
    assert found[("dmd_bridge_lag_seconds", (("bridge", "bridge-test"),))] == 5  # only the other host's now


def test_a_starting_process_clears_the_gauges_an_earlier_process_of_its_pid_left(tmp_path: Path) -> None:
    # a restarted container: same host, same pid, the earlier process's gauges still on disk
    earlier = tmp_path / f"gauge_liveall_{metrics.host_name()}-{os.getpid()}.db"
    earlier.write_bytes(b"")
    counter = tmp_path / f"counter_{metrics.host_name()}-{os.getpid()}.db"
    counter.write_bytes(b"")

    assert metrics.clear_stale(tmp_path) == []  # the exporter's scrape: a live pid is kept
    assert metrics.clear_stale(tmp_path, starting=True) == [earlier.name]
    assert counter.exists()


def test_every_family_the_code_declares_reaches_the_exporter(settings, tmp_path: Path) -> None:
    # a process that imported every module (and prometheus_client) before it picked its directory,
    # and wrote one sample of each family, labelled or not: the exporter serves every one
    found = exported(settings, tmp_path)

    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    missing = [name for name in found.declared if not any(name + suffix in found.samples for suffix in suffixes)]
    assert "dmd_send_window_held" in found.declared and "dmd_notification_transitions" in found.declared
    assert missing == []
