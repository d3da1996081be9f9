"""docker/compose.yaml, read as compose reads it (no Docker engine here): what `up` needs to start
in order and stay safe at its edges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dmd_tasks.ops.stack import read_procfile

ROOT = Path(__file__).resolve().parents[3]
STACK = {"moto", "redis", "mongo", "simulators"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def test_every_stack_service_has_a_health_check_and_every_dmd_process_waits_for_provision() -> None:
    services = compose()["services"]
    for name in STACK:
        assert services[name]["healthcheck"]["test"], name
    for name in read_procfile(ROOT / "Procfile"):
        depends = services[name]["depends_on"]
        assert depends["provision"] == {"condition": "service_completed_successfully"}, name
        assert all(depends[s] == {"condition": "service_healthy"} for s in ("redis", "mongo", "simulators")), name
        assert services[name]["init"] is True, name
    provision = services["provision"]
    assert provision["restart"] == "no" and provision["command"] == "dmd provision"
    assert provision["depends_on"]["moto"] == {"condition": "service_healthy"}


def test_ports_are_published_on_loopback_only_and_the_operator_ones_are_there() -> None:
    services = compose()["services"]
    published = {name: s.get("ports", []) for name, s in services.items()}
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)
    assert published["api"] == ["127.0.0.1:8080:8080"]
    assert published["flower"] == ["127.0.0.1:5555:5555"]
    assert published["metrics"] == ["127.0.0.1:9808:9808"]


def test_flower_never_runs_without_a_password() -> None:
    flower = compose()["services"]["flower"]
    auth = flower["environment"]["DMD_FLOWER_BASIC_AUTH"]
    assert auth.startswith("${DMD_FLOWER_BASIC_AUTH:?")  # compose refuses to start without it
    assert flower["environment"]["DMD_REDIS_URL"] == "redis://redis:6379/0"  # the shared environment too


def test_the_image_caches_its_dependencies_and_leaves_the_local_state_out() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    # the pinned dependencies (the lock) in a layer before the code; dmd itself adds nothing to them
    assert dockerfile.index("pip install -r requirements/${LOCK}.txt") < dockerfile.index("COPY dmd_tasks")
    assert "ARG LOCK=runtime" in dockerfile
    assert "pip install --no-deps ." in dockerfile
    # compose's image carries the local stack (the simulators run from it); production's does not
    for name, service in compose()["services"].items():
        if "build" in service:
            assert service["build"]["args"] == {"LOCK": "local"}, name
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".dmd", "tests"} <= set(ignored)
