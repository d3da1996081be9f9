"""The local stack's process handling: the Procfile (which the compose file must run unchanged),
free ports, stopping process groups, and running Procfile processes by name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from dmd_tasks.ops.stack import ProcessGroup, free_port, port_open, read_procfile, stop_pid, wait_for_port
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[3]


def test_every_procfile_process_has_a_compose_service_with_the_same_command() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name, command in read_procfile(ROOT / "Procfile").items():
        assert name in services, f"compose has no service {name}"
        assert services[name]["command"] == command


def test_one_worker_per_queue() -> None:
    from dmd_tasks.celery_app import app
    from dmd_tasks.infra.topology import TASK_QUEUES

    app.loader.import_default_modules()
    procfile = read_procfile(ROOT / "Procfile")
    for queue in set(TASK_QUEUES.values()):
        command = procfile.get(f"worker-{queue}")
        assert command is not None, f"no worker process for queue {queue}"
        assert f"-Q {queue} " in command


# --- read_procfile, free_port, stop_pid, ProcessGroup ----------------------------------------------


def test_read_procfile_skips_comments_and_blank_lines_and_keeps_colons_in_commands(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "# one line per process\n"
        "\n"
        "web:   python -m http.server --bind 127.0.0.1:8000  \n"
        "   # an indented comment\n"
        "  worker: celery -A app worker -Q a,b\n"
        "\t\n"
    )

    assert read_procfile(procfile) == {
        "web": "python -m http.server --bind 127.0.0.1:8000",
        "worker": "celery -A app worker -Q a,b",
    }


@pytest.mark.stack  # a real socket: a connection refused on loopback
def test_free_port_is_a_loopback_port_that_can_be_bound() -> None:
    port = free_port()

    assert 1024 <= port <= 65535
    assert not port_open("127.0.0.1", port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if it were taken


def gone(pid: int) -> bool:
    """The process no longer runs (an unreaped zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_stop_pid_terminates_the_whole_process_group() -> None:
    # Given a process in a session of its own that started a child of its own
    parent = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())

    # When it is stopped
    stopped = stop_pid(parent.pid, grace_seconds=5)

    # Then it was running, and both are gone (stop_pid reaps its own child: no exit status is left)
    assert stopped is True
    parent.wait(timeout=10)
    parent.stdout.close()
    assert gone(parent.pid)
    wait_until(lambda: gone(child), timeout=10, what="the child stopped with its group")


def test_stop_pid_kills_a_process_that_ignores_sigterm_after_the_grace_period() -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ready"

    assert stop_pid(stubborn.pid, grace_seconds=0.5) is True
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    stubborn.stdout.close()


def test_stop_pid_of_no_process_is_false() -> None:
    finished = subprocess.Popen(["true"], start_new_session=True)
    finished.wait(timeout=10)

    assert stop_pid(finished.pid) is False
    assert stop_pid(0) is False
    assert stop_pid(-1) is False


def test_a_procfile_process_runs_logged_under_its_instance_name_until_stopped(settings, stack, tmp_path) -> None:
    # Given the Procfile's metrics process on a port of its own
    port = free_port()
    group = ProcessGroup(tmp_path / "logs", env={"DMD_METRICS_PORT": str(port), "DMD_METRICS_DIR": str(tmp_path)})
    try:
        process = group.start_one("metrics", instance="metrics-a")

        # Then it serves, and nothing is reported dead
        wait_for_port(settings.metrics_host, port, process=process, log_path=tmp_path / "logs" / "metrics-a.log")
        assert group.dead() == {}
        assert group.processes == {"metrics-a": process}
        with urllib.request.urlopen(f"http://{settings.metrics_host}:{port}/metrics", timeout=10) as response:
            assert "dmd_dlq_depth" in response.read().decode()
    finally:
        # When the group is stopped
        group.stop()

    # Then the process ended by SIGTERM, and is reported dead with that
    assert group.dead() == {"metrics-a": -signal.SIGTERM}
    assert (tmp_path / "logs" / "metrics-a.log").exists()


def test_a_process_that_exits_or_is_killed_is_reported_dead_with_its_code(settings, stack, tmp_path) -> None:
    # Given a metrics process whose port is taken, and another on a free port
    taken = socket.socket()
    taken.bind((settings.metrics_host, 0))
    taken.listen()
    busy_port = taken.getsockname()[1]
    free = free_port()
    busy = ProcessGroup(tmp_path / "logs", env={"DMD_METRICS_PORT": str(busy_port), "DMD_METRICS_DIR": str(tmp_path)})
    fine = ProcessGroup(tmp_path / "logs", env={"DMD_METRICS_PORT": str(free), "DMD_METRICS_DIR": str(tmp_path)})
    try:
        busy.start_one("metrics", instance="metrics-busy")
        process = fine.start_one("metrics", instance="metrics-killed")
        wait_for_port(settings.metrics_host, free, process=process)

        # Then the one that could not listen exits with an error, and is reported dead with its code
        dead = wait_until(busy.dead, timeout=60, what="the process on a taken port to exit")
        assert dead == {"metrics-busy": 1}
        assert "Address already in use" in (tmp_path / "logs" / "metrics-busy.log").read_text()

        # And one killed is reported dead by its signal
        fine.kill("metrics-killed", signal.SIGKILL)
        assert fine.dead() == {"metrics-killed": -signal.SIGKILL}
    finally:
        taken.close()
        busy.stop()
        fine.stop()
