"""The layer check of ``make lint``: imports run down the layers only, deferred ones included."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmd_tasks.ops import layers


def test_the_code_as_it_is_has_no_import_up_the_layers() -> None:
    assert [str(v) for v in layers.check(layers.python_files())] == []


@pytest.mark.parametrize(
    ("source", "up"),
    [
        ("from dmd_tasks.pipeline.routing import plan_changes\n", True),  # infra → pipeline
        ("def f():\n    from dmd_tasks.services import get_services\n", True),  # inside a function too
        ("import bridges.reader\n", True),  # nothing in the package uses the bridges
        ("from dmd_tasks.domain.ids import is_valid_id\nfrom . import settings\n", False),  # down, and its own layer
    ],
)
def test_an_import_up_the_layers_is_found_wherever_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, up: bool
) -> None:
    module = tmp_path / "dmd_tasks" / "infra" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(source)
    monkeypatch.setattr(layers, "ROOT", tmp_path)
    found = layers.check([module])
    assert bool(found) is up, [str(v) for v in found]
