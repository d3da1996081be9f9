"""The package as an operator installs it: the wheel, with the runtime lock only (no moto, flask,
waitress or montydb), in a clean virtualenv, run from a folder outside the checkout. ``dmd api`` and a
worker started from it serve the session's stack: the worker warms an event's details, the API
then answers them from the cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmd_tasks.celery_app import app
from dmd_tasks.infra.topology import WARM_EVENT_DETAILS
from dmd_tasks.ops.stack import ProcessGroup, free_port, spawn, wait_for_port
from tests.e2e.test_api import DETAILS, discovery_calls, gql, new_id
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
#: what the wheel is built from (a copy: building writes build/ and *.egg-info next to the sources)
SOURCES = ["pyproject.toml", "README.md", "Procfile", "dmd_tasks", "bridges", "config", "simulators", "bench"]
#: the only top-level names the wheel may put in site-packages
PACKAGES = {"dmd_tasks", "bridges"}


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with the runtime lock and the wheel; its bin folder."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", base / "dist", source, cwd=base)
    (wheel,) = (base / "dist").glob("dmd-*.whl")
    with zipfile.ZipFile(wheel) as contents:
        top = {name.split("/", 1)[0] for name in contents.namelist()}
    assert {name for name in top if not name.startswith("dmd-0")} == PACKAGES, top  # no config, bench, simulators
    run(sys.executable, "-m", "venv", base / "venv", cwd=base)
    pip = base / "venv" / "bin" / "pip"
    run(pip, "install", "--quiet", "-r", ROOT / "requirements" / "runtime.txt", cwd=base)
    run(pip, "install", "--quiet", "--no-deps", wheel, cwd=base)
    return base / "venv" / "bin"


def test_the_wheel_holds_what_the_package_reads_and_no_local_stack(installed: Path) -> None:
    python = installed / "python"
    outside = installed.parent.parent
    assert run(installed / "dmd", "--version", cwd=outside).strip() == "dmd, version 0.1.0"
    found = run(
        python,
        "-c",
        "import importlib.util, dmd_tasks.api.graphql as g, dmd_tasks.ops.stack as s; "
        "print(g.SCHEMA_PATH.is_file(), s.PROCFILE.is_file(), sorted(s.read_procfile())[0], "
        "[m for m in ('moto', 'flask', 'waitress', 'montydb', 'config', 'bench', 'simulators') "
        "if importlib.util.find_spec(m)])",
        cwd=outside,
    )
    # the schema and the Procfile from <prefix>/share/dmd; no local-stack package, nothing generic
    assert found.split(" ", 3) == ["True", "True", "api", "[]\n"], found
    # the local stack says what it needs instead of an ImportError
    refused = subprocess.run(
        [installed / "dmd", "stack", "up"], cwd=outside, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1
    assert "pip install 'dmd[local]'" in refused.stderr, refused.stderr


@pytest.fixture()
def from_wheel(installed: Path, settings, stack, sim) -> Iterator[tuple[str, ProcessGroup]]:
    """``dmd api`` and the query worker, from the installed wheel, outside the checkout."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update({"PATH": f"{installed}{os.pathsep}{env['PATH']}", "DMD_API_PORT": str(port)})
    outside = installed.parent.parent
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / f"wheel-{port}", env=env)
    group.log_dir.mkdir(parents=True, exist_ok=True)
    commands = {
        "api": [installed / "dmd", "api"],
        "worker": [
            *(installed / "celery", "-A", "dmd_tasks.celery_app", "-q", "worker", "-Q", "query"),
            *("-n", f"wheel-{port}@%h", "--concurrency", "1", "--without-gossip", "--without-mingle"),
        ],
    }
    for name, argv in commands.items():
        group.processes[name] = spawn(argv, group.log_dir / f"{name}.log", env, outside)  # type: ignore[arg-type]
    try:
        wait_for_port("127.0.0.1", port, timeout=60, what="api", process=group.processes["api"])
        yield f"http://127.0.0.1:{port}/graphql", group
    finally:
        group.stop()


def test_dmd_api_and_a_worker_run_from_the_installed_wheel(from_wheel, sim) -> None:
    url, group = from_wheel
    event_id = new_id()

    result = app.send_task(WARM_EVENT_DETAILS, args=[event_id], queue="query")

    def succeeded() -> bool:
        lines = (group.log_dir / "worker.log").read_text(errors="replace").splitlines()
        return any(result.id in line and "succeeded" in line for line in lines)

    wait_until(succeeded, timeout=120, what="the worker from the wheel to warm the event")
    assert discovery_calls(sim, event_id) == 1
    answer = gql(url, DETAILS % event_id).json()

    assert answer["data"]["eventDetails"]["id"] == event_id, answer
    assert discovery_calls(sim, event_id) == 1  # the API served the worker's copy from Redis
