"""The Procfile is the list of processes; the compose file must run each of them, unchanged."""

from __future__ import annotations

from pathlib import Path

import yaml

from dmd_tasks.ops.stack import read_procfile

ROOT = Path(__file__).resolve().parents[3]


def test_every_procfile_process_has_a_compose_service_with_the_same_command() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name, command in read_procfile(ROOT / "Procfile").items():
        assert name in services, f"compose has no service {name}"
        assert services[name]["command"] == command


def test_one_worker_per_queue() -> None:
    from dmd_tasks.celery_app import app
    from dmd_tasks.pipeline.routing import TASK_QUEUES

    app.loader.import_default_modules()
    procfile = read_procfile(ROOT / "Procfile")
    for queue in set(TASK_QUEUES.values()):
        command = procfile.get(f"worker-{queue}")
        assert command is not None, f"no worker process for queue {queue}"
        assert f"-Q {queue} " in command
