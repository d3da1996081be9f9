"""The Celery app: importing it reads no setting, its configuration is built from settings on first
use, and its routes and queues are the routing table's.

Import-time behaviour is checked in fresh processes whose environment has no ``DMD_*`` variable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from dmd_tasks.celery_app import app
from dmd_tasks.infra import topology
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.topology import QUEUE_NAMES

REPO = Path(__file__).resolve().parents[3]


def run_fresh(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter with no DMD_* variable but the given ones."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DMD_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=clean,
        cwd=REPO,
        timeout=120,
    )


def test_importing_the_app_and_its_task_modules_reads_no_setting_even_without_a_profile() -> None:
    # Given a process with no DMD_* variable and a profile that does not exist
    done = run_fresh(
        """
        import importlib
        import json

        import dmd_tasks.celery_app as package
        from dmd_tasks.infra import settings
        from dmd_tasks.infra.topology import TASK_MODULES

        for name in TASK_MODULES:
            importlib.import_module(name)
        report = {"settings_read": settings.get_settings.cache_info().currsize, "configured": package.app.configured}
        try:
            package.app.conf.broker_url
        except settings.UnsafeConfiguration as exc:
            report["refused"] = str(exc)
        print(json.dumps(report))
        """,
        DMD_PROFILE="no-such-profile",
    )

    # Then the imports succeed without reading settings or building the configuration
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["settings_read"] == 0
    assert report["configured"] is False
    # and only the first use of the configuration reads them (and refuses the missing profile)
    assert "DMD_PROFILE='no-such-profile'" in report["refused"]


def test_the_configuration_is_built_from_settings_on_first_access_of_app_conf() -> None:
    done = run_fresh(
        """
        import json

        import dmd_tasks.celery_app as package
        from dmd_tasks.infra.settings import get_settings
        from dmd_tasks.infra.topology import SHORTEN_EVENT_URL

        app = package.app
        before = (get_settings.cache_info().currsize, app.configured)
        default_queue = app.conf.task_default_queue  # the first access
        after = (get_settings.cache_info().currsize, app.configured)
        app.loader.import_default_modules()
        print(json.dumps({
            "before": before,
            "after": after,
            "default_queue": default_queue,
            "broker_url": app.conf.broker_url,
            "retry_backoff_max": app.conf.task_annotations["*"]["retry_backoff_max"],
            "shorten_max_retries": app.tasks[SHORTEN_EVENT_URL].max_retries,
        }))
        """,
        DMD_PROFILE="local",
        DMD_SHORTEN_MAX_RETRIES="7",
        DMD_RETRY_BACKOFF_MAX_SECONDS="45",
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["before"] == [0, False]
    assert report["after"] == [1, True]
    assert report["default_queue"] == "query"
    # the local profile's moto credentials and endpoint, and the environment's overrides
    assert report["broker_url"] == "sqs://testing:testing@127.0.0.1:5000"
    assert report["retry_backoff_max"] == 45
    assert report["shorten_max_retries"] == 7


def test_the_app_routes_every_task_of_the_routing_table_to_its_queue() -> None:
    routes: dict[str, Any] = app.conf.task_routes
    assert routes == {name: {"queue": queue} for name, queue in topology.TASK_QUEUES.items()}
    for name, queue in topology.TASK_QUEUES.items():
        assert app.amqp.router.route({}, name)["queue"].name == queue, name


def test_the_app_declares_one_direct_queue_per_pipeline_queue_and_creates_none() -> None:
    queues = app.conf.task_queues
    assert [q.name for q in queues] == list(QUEUE_NAMES)
    assert all(q.exchange.type == "direct" and q.routing_key == q.name for q in queues)
    assert set(topology.TASK_QUEUES.values()) <= set(QUEUE_NAMES)
    assert app.conf.task_default_queue in QUEUE_NAMES
    assert app.conf.task_create_missing_queues is False


def test_every_routed_task_is_registered_under_its_wire_name_by_the_task_modules() -> None:
    app.loader.import_default_modules()
    assert list(app.conf.imports) == list(topology.TASK_MODULES)
    for name in topology.TASK_QUEUES:
        assert name in app.tasks, name
        assert app.tasks[name].name == name


def test_events_and_remote_control_go_to_redis_and_workers_check_their_queues(settings: Settings) -> None:
    from dmd_tasks.celery_app.boot import QueueVisibilityCheck
    from dmd_tasks.celery_app.monitoring import MonitorAppEvents, MonitorConsumer, MonitorControl

    assert isinstance(app.control, MonitorControl)
    assert isinstance(app.events, MonitorAppEvents)
    assert app.conf.worker_consumer == f"{MonitorConsumer.__module__}:MonitorConsumer"
    assert app.conf.monitor_broker_url == settings.redis_url
    assert QueueVisibilityCheck in app.steps["worker"]
