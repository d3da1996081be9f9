"""Safe rendering of campaign message templates.

A template comes from the campaign store: it is data, not code. Placeholders are
``{{ name }}`` with ``name`` one of ``TEMPLATE_VARIABLES``; the renderer substitutes
strings from a flat mapping and nothing else, so no attribute or item access to Python
objects is possible (unlike ``str.format``, where ``{0.__class__}`` walks objects).
Anything that looks like a placeholder but is not a known variable is refused when the
template is checked, so a bad template fails once, at campaign creation or at the first
send, with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from dmd_tasks.domain.errors import InvalidTemplate

TEMPLATE_VARIABLES = frozenset({"event_name", "short_url", "sale_id", "fan_id"})
MAX_TEMPLATE_CHARS = 640
#: An SMS body longer than this is split by carriers into too many parts; we refuse it.
MAX_BODY_CHARS = 918

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_BRACES = re.compile(r"\{\{|\}\}|\{%|%\}")


def check_template(template: str) -> str:
    """Return the template if it is safe and complete; raise InvalidTemplate with the reason otherwise."""
    if not isinstance(template, str) or not template.strip():
        raise InvalidTemplate("template is empty")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise InvalidTemplate(f"template is longer than {MAX_TEMPLATE_CHARS} characters")
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - TEMPLATE_VARIABLES)
    if unknown:
        raise InvalidTemplate(f"template uses unknown variables {unknown}; allowed: {sorted(TEMPLATE_VARIABLES)}")
    leftover = _BRACES.search(_PLACEHOLDER.sub("", template))
    if leftover:
        raise InvalidTemplate(f"template has {leftover.group(0)!r} outside a '{{{{ variable }}}}' placeholder")
    return template


def render(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``{{ name }}`` placeholders with ``values[name]`` (strings only)."""
    check_template(template)

    def substitute(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if not isinstance(value, str):
            raise InvalidTemplate(f"no value for template variable {match.group(1)!r}")
        return value

    body = _PLACEHOLDER.sub(substitute, template)
    if len(body) > MAX_BODY_CHARS:
        raise InvalidTemplate(f"rendered message is longer than {MAX_BODY_CHARS} characters")
    return body
