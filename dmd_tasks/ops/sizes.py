"""``python -m dmd_tasks.ops.sizes``: rooms of one size (``make lint``).

No module over ``MAX_MODULE_LINES`` lines and no function over ``MAX_FUNCTION_LINES`` in
dmd_tasks, bridges, simulators and bench. The ones still over are listed in ``NOT_YET_SPLIT``
with the size they had when the check came: they may shrink, never grow, and an entry that
fits the limit fails the check until it is taken off the list (so the list only gets shorter).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dmd_tasks", "bridges", "simulators", "bench")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

#: ``path`` (a module) or ``path::function`` → its size when listed: to be split, never to grow
NOT_YET_SPLIT: dict[str, int] = {}


def sizes(path: Path) -> dict[str, int]:
    """The module's line count, and each function's (methods included), keyed as in NOT_YET_SPLIT."""
    text = path.read_text()
    name = path.relative_to(ROOT).as_posix()
    out = {name: len(text.splitlines())}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            key = f"{name}::{node.name}"
            out[key] = max(out.get(key, 0), (node.end_lineno or node.lineno) - node.lineno + 1)
    return out


def problems(paths: list[Path]) -> list[str]:
    found: list[str] = []
    measured: dict[str, int] = {}
    for path in paths:
        measured.update(sizes(path))
    for key, size in sorted(measured.items()):
        limit = MAX_FUNCTION_LINES if "::" in key else MAX_MODULE_LINES
        allowed = NOT_YET_SPLIT.get(key)
        if size > limit and allowed is None:
            found.append(f"{key}: {size} lines, over {limit}: split it")
        elif allowed is not None and size > allowed:
            found.append(f"{key}: {size} lines, grown past the {allowed} it was listed at: split it")
        elif allowed is not None and size <= limit:
            found.append(f"{key}: {size} lines, within {limit} now: take it off NOT_YET_SPLIT")
    found += [f"{key}: listed in NOT_YET_SPLIT but not found" for key in NOT_YET_SPLIT if key not in measured]
    return found


def python_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m dmd_tasks.ops.sizes", description=__doc__).parse_args(argv)
    found = problems(python_files())
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
