"""docs/settings.md is written from the Settings model, and lint says when it is stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmd_tasks.infra.settings import Settings
from dmd_tasks.ops import settings_doc


def test_every_setting_has_a_row_with_its_variable_and_what_it_does() -> None:
    page = settings_doc.render()
    for row in settings_doc.rows():
        assert row.doc, f"{row.field} has no #: comment"
        assert f"| `{settings_doc.variables(row.field)[0]}`" in page
    assert {row.field for row in settings_doc.rows()} == set(Settings.model_fields)


def test_secrets_are_never_shown() -> None:
    page = settings_doc.render()
    assert "local-sms-key" not in page and "testing" not in page  # values the local profile sets
    assert "| `DMD_SMS_API_KEY` | `SecretStr` | unset | (secret) |" in page


def test_the_check_fails_on_a_stale_page_and_passes_on_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "settings.md"
    monkeypatch.setattr(settings_doc, "PAGE", page)
    page.write_text("# Settings\n")
    assert settings_doc.main(["--check"]) == 1
    assert settings_doc.main([]) == 0
    assert settings_doc.main(["--check"]) == 0
