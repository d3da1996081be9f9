"""Test configuration: every test session gets its own local stack.

The environment is set here, before any dmd module is imported (settings are read once
per process): a moto server and the simulators on free ports, Redis database 11 of the
machine's Redis (or one the launcher starts), and a run directory in a temp folder.
End-to-end fixtures start real processes from the Procfile with the same environment.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmd_tasks.stack import free_port

_RUN_DIR = Path(tempfile.mkdtemp(prefix="dmd-test-"))
TEST_ENV = {
    "DMD_PROFILE": "local",
    "DMD_MOTO_PORT": str(free_port()),
    "DMD_SIMULATOR_PORT": str(free_port()),
    "DMD_REDIS_URL": os.environ.get("DMD_TEST_REDIS_URL", "redis://127.0.0.1:6379/11"),
    "DMD_RUN_DIR": str(_RUN_DIR),
    "DMD_LOG_LEVEL": "INFO",
    "DMD_BRIDGE_IDLE_SLEEP_SECONDS": "0.2",
    "DMD_SQS_POLLING_INTERVAL_SECONDS": "0.1",
}
TEST_ENV["DMD_AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{TEST_ENV['DMD_MOTO_PORT']}"
for _provider in ("BITLY", "SMS", "DISCOVERY", "ACCOUNTS"):
    TEST_ENV[f"DMD_{_provider}_BASE_URL"] = f"http://127.0.0.1:{TEST_ENV['DMD_SIMULATOR_PORT']}"
os.environ.update(TEST_ENV)


@pytest.fixture(scope="session")
def settings():  # type: ignore[no-untyped-def]
    from dmd_tasks.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def stack(settings) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """moto server, Redis and the simulators, provisioned; stopped at the end of the session."""
    import redis

    from dmd_tasks.provision import provision
    from dmd_tasks.stack import Stack

    local = Stack(settings)
    local.up()
    try:
        provision(settings)
        redis.Redis.from_url(settings.redis_url).flushdb()
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def sim(settings, stack):  # type: ignore[no-untyped-def]
    """A small client of the simulators' control API."""
    from simulators.control import SimulatorControl

    control = SimulatorControl(f"http://{settings.simulator_host}:{settings.simulator_port}")
    control.reset()
    return control
