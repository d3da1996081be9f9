"""The package's dependencies: runtime, the local stack as an extra, and the locks that the
Makefile and the image install from, in agreement with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: lock file -> the extras it holds besides the runtime dependencies
LOCKS = {"runtime": (), "local": ("local",), "dev": ("local", "test", "bench")}
LOCAL_ONLY = {"moto", "flask", "waitress", "montydb"}


def pins(lock: str) -> dict[str, list[str]]:
    """Package -> pinned versions (a universal lock may pin two, one per Python version marker)."""
    found: dict[str, list[str]] = {}
    for line in (ROOT / "requirements" / f"{lock}.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^]]*\])?==([^\s;]+)", line)
        if match:
            found.setdefault(canonicalize_name(match[1]), []).append(match[2])
    return found


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    listed = list(PROJECT["dependencies"])
    for extra in extras:
        listed += PROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in listed]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_requirement_is_pinned_in_its_lock_within_its_range(lock: str) -> None:
    pinned = pins(lock)
    for requirement in requirements(LOCKS[lock]):
        versions = pinned.get(canonicalize_name(requirement.name))
        assert versions, f"{requirement.name} is not in requirements/{lock}.txt: run `make lock`"
        for version in versions:
            assert requirement.specifier.contains(version, prereleases=True), (requirement, version, lock)


def test_the_runtime_carries_no_local_stack() -> None:
    runtime = {canonicalize_name(r.name) for r in requirements(())}
    assert not runtime & LOCAL_ONLY
    assert not set(pins("runtime")) & LOCAL_ONLY  # nothing brings them in either
    assert {canonicalize_name(r.name) for r in requirements(("local",))} >= LOCAL_ONLY


def test_the_locks_agree_on_every_version() -> None:
    dev = pins("dev")
    for lock in ("runtime", "local"):
        for name, versions in pins(lock).items():
            assert set(versions) <= set(dev[name]), (lock, name, versions, dev[name])


def test_make_setup_installs_the_lock_and_dmd_without_resolving_again() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements/dev.txt" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile
