"""``python -m dmd_tasks.ops.settings_doc``: docs/settings.md, written from the Settings model.

Every field of ``dmd_tasks.infra.settings.Settings`` (its sections, ``SECTIONS``) becomes a row:
its environment variable, its type, its default, the value the ``local`` profile gives it, and what it does (the ``#:``
comment above the field, as Sphinx reads them). ``--check`` (run by ``make lint``) fails when
the page is not what the model says, or when a field has no comment.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from dmd_tasks.infra.settings import CONFIG_DIR, SECTIONS, Settings, variable

PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"

INTRO = """\
# Settings

Every setting of dmd, generated from the Settings model (`dmd_tasks/infra/settings/`) by
`python -m dmd_tasks.ops.settings_doc`; `make lint` fails when this page and the model differ.

Each setting is read from its environment variable. A profile (`DMD_PROFILE`, default `local`)
selects a file of values in `config/` (`local.env`: the embedded stack; `aws.env`: real AWS,
with placeholders that refuse to start until replaced); the environment overrides the file,
and the file overrides the default. A value that does not parse, or a combination that would
make the pipeline misbehave, stops every process at start with the variable named.
Durations are in the unit their name ends with; secrets are never logged.
"""


@dataclass(frozen=True)
class Row:
    section: str
    field: str
    annotation: str
    doc: str


def rows() -> list[Row]:
    """The settings in the page's order: Settings' own fields (the profile), then each section
    class's (``SECTIONS``), each with its annotation and ``#:`` comment."""
    out: list[Row] = []
    for cls, title in ((Settings, "Profile"), *((section, "") for section in SECTIONS)):
        out += _class_rows(cls, title)
    return out


def _class_rows(cls: type, title: str) -> list[Row]:
    """The fields a class declares itself, in source order; the section's title is the class's
    docstring unless given."""
    source = Path(inspect.getsourcefile(cls) or "").read_text()
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    section = title or (ast.get_docstring(node) or cls.__name__).splitlines()[0]
    out: list[Row] = []
    for field in node.body:
        if not isinstance(field, ast.AnnAssign) or not isinstance(field.target, ast.Name):
            continue
        if field.target.id not in Settings.model_fields:
            continue
        doc: list[str] = []
        line = field.lineno - 1
        while comments.get(line, "").startswith("#:"):
            doc.insert(0, comments[line][2:].strip())
            line -= 1
        annotation = ast.get_source_segment(source, field.annotation) or ""
        out.append(Row(section, field.target.id, annotation, " ".join(doc)))
    return out


def _profile(name: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in (CONFIG_DIR / f"{name}.env").read_text().splitlines():
        key, sep, value = raw.partition("=")
        if sep and not raw.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def _shown(value: Any, secret: bool) -> str:
    if secret:
        empty = value in (None, "", []) or (isinstance(value, SecretStr) and not value.get_secret_value())
        return "unset" if empty else "(secret)"
    if value is None:
        return "unset"
    if isinstance(value, str) and not value:
        return '""'
    return f"`{value}`".replace("|", "\\|")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def variables(field: str) -> list[str]:
    """The environment variables a field is read from, first match wins."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, str):
        return [alias]
    choices = getattr(alias, "choices", None)
    return [str(choice) for choice in choices] if choices else [variable(field)]


def render() -> str:
    local = _profile("local")
    lines = [INTRO]
    section = None
    for row in rows():
        if row.section != section:
            section = row.section
            lines += [
                "",
                f"## {section}",
                "",
                "| Variable | Type | Default | `local` profile | What it does |",
                "|---|---|---|---|---|",
            ]
        info = Settings.model_fields[row.field]
        secret = "SecretStr" in row.annotation
        default = info.get_default(call_default_factory=True)
        names = variables(row.field)
        in_local = next((local[n] for n in names if n in local), None)
        lines.append(
            "| "
            + " | ".join(
                [
                    ", ".join(f"`{n}`" for n in names),
                    f"`{_cell(row.annotation)}`",
                    _shown(default, secret),
                    _shown(in_local, secret) if in_local is not None else "",
                    _cell(row.doc),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmd_tasks.ops.settings_doc", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if docs/settings.md is stale or a field is undocumented"
    )
    args = parser.parse_args(argv)
    undocumented = [row.field for row in rows() if not row.doc]
    page = render()
    if args.check:
        problems = []
        if undocumented:
            problems.append("settings without a #: comment: " + ", ".join(undocumented))
        if not PAGE.exists() or PAGE.read_text() != page:
            problems.append(f"{PAGE.name} differs from the Settings model: run python -m dmd_tasks.ops.settings_doc")
        for problem in problems:
            print(f"settings doc: {problem}", file=sys.stderr)
        return 1 if problems else 0
    PAGE.write_text(page)
    print(f"wrote {PAGE} ({len(rows())} settings)")
    if undocumented:
        print(f"undocumented: {', '.join(undocumented)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
