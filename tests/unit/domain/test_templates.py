"""The campaign template renderer: data in, text out, never a walk through Python objects."""

from __future__ import annotations

import pytest

from dmd_tasks.domain.errors import InvalidTemplate
from dmd_tasks.domain.templates import check_template, render

VALUES = {"event_name": "The Tour", "short_url": "https://bit.ly/abc", "sale_id": "s1", "fan_id": "f1"}


def test_renders_known_variables() -> None:
    assert render("{{ event_name }} on sale: {{short_url}}", VALUES) == "The Tour on sale: https://bit.ly/abc"


@pytest.mark.parametrize(
    "template, reason",
    [
        ("{{ event_name.__class__ }}", "outside"),
        ("{{ event_name.__class__.__mro__[1].__subclasses__() }}", "outside"),
        ("{{ __import__('os').system('id') }}", "outside"),
        ("{% for x in y %}{% endfor %}", "outside"),
        ("{{ password }}", "unknown variables \\['password'\\]"),
        ("{{ config }}", "unknown variables"),
        ("   ", "empty"),
        ("x" * 641, "longer"),
    ],
)
def test_unsafe_or_unknown_templates_are_refused(template: str, reason: str) -> None:
    with pytest.raises(InvalidTemplate, match=reason):
        check_template(template)


def test_str_format_syntax_is_inert_text() -> None:
    # What str.format would evaluate is plain text here.
    body = render("{0.__class__} {event_name} {{ event_name }}", VALUES)
    assert body == "{0.__class__} {event_name} The Tour"


def test_values_are_substituted_literally_not_re_rendered() -> None:
    body = render("{{ event_name }}", {**VALUES, "event_name": "{{ short_url }}"})
    assert body == "{{ short_url }}"


def test_missing_value_is_an_error() -> None:
    with pytest.raises(InvalidTemplate, match="no value"):
        render("{{ fan_id }}", {"event_name": "x"})
