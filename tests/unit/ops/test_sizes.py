"""The size check of ``make lint``: no module over 400 lines, no function over 60, and the list of
those not yet split only shrinks."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmd_tasks.ops import sizes


def test_the_code_as_it_is_passes() -> None:
    assert sizes.problems(sizes.python_files()) == []


def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body_lines: int, listed: dict[str, int]) -> list[str]:
    module = tmp_path / "bench" / "probe.py"
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_text("def f() -> None:\n" + "    x = 1\n" * (body_lines - 1))
    monkeypatch.setattr(sizes, "ROOT", tmp_path)
    monkeypatch.setattr(sizes, "NOT_YET_SPLIT", listed)
    return sizes.problems([module])


def test_a_new_long_function_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert probe(tmp_path, monkeypatch, 61, {}) == ["bench/probe.py::f: 61 lines, over 60: split it"]
    assert probe(tmp_path, monkeypatch, 60, {}) == []


def test_a_listed_one_may_shrink_but_not_grow_and_leaves_the_list_once_it_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert probe(tmp_path, monkeypatch, 70, {"bench/probe.py::f": 80}) == []
    assert "grown past the 80" in probe(tmp_path, monkeypatch, 81, {"bench/probe.py::f": 80})[0]
    assert "take it off NOT_YET_SPLIT" in probe(tmp_path, monkeypatch, 50, {"bench/probe.py::f": 80})[0]
