"""``python -m dmd_tasks.ops.layers``: imports run one way, down the layers (``make lint``).

The layers, top to bottom, are the ones ``dmd_tasks/__init__.py`` describes; ``bridges`` sits
above them all (it uses the package; nothing in it uses ``bridges``). A module may import its
own layer and the layers below it, never one above: every import counts, at the top of a
module or inside a function (a deferred import is still a dependency). Each violation is
printed as ``path:line: module (layer) imports target (layer)``; the exit status is 1 if any.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: top to bottom; layers on one line share a rank (they may import each other)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("bridges",),
    ("dmd_tasks.ops",),
    ("dmd_tasks.api",),
    ("dmd_tasks.pipeline",),
    ("dmd_tasks.services",),
    ("dmd_tasks.celery_app",),
    ("dmd_tasks.store", "dmd_tasks.clients"),
    ("dmd_tasks.infra",),
    ("dmd_tasks.domain",),
)
#: the packages checked
PACKAGES = ("dmd_tasks", "bridges")


def layer_of(module: str) -> tuple[str, int] | None:
    """The layer a module belongs to and its rank (0: the top); None outside the layers."""
    for rank, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                return name, rank
    return None


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    module: str
    target: str

    def __str__(self) -> str:
        own, up = layer_of(self.module), layer_of(self.target)
        return (
            f"{self.path.relative_to(ROOT)}:{self.line}: {self.module} ({own[0] if own else '?'}) imports "
            f"{self.target} ({up[0] if up else '?'}), a layer above"
        )


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """Every module ``tree`` imports (line, dotted name), wherever the import statement is."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                # ``from package import module`` imports the module; ``from module import name``, the module
                yield node.lineno, f"{prefix}.{alias.name}" if is_module(f"{prefix}.{alias.name}") else prefix


def check(paths: list[Path]) -> list[Violation]:
    found = []
    for path in paths:
        module = module_name(path)
        own = layer_of(module)
        if own is None:
            continue  # the package's own __init__ (documentation only)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in imports(tree, module, path.name == "__init__.py"):
            up = layer_of(target)
            if up is not None and up[1] < own[1]:
                found.append(Violation(path, line, module, target))
    return found


def python_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m dmd_tasks.ops.layers", description=__doc__).parse_args(argv)
    violations = check(python_files())
    for violation in violations:
        print(violation, file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
