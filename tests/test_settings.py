"""The settings: one typed object read from the environment, and the README's table of it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from models.settings import Settings, get_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def configuration_table() -> set[str]:
    """The variables named in the first column of the README's configuration table."""
    text = README.read_text(encoding="utf-8")
    section = re.split(r"\n#{1,3} ", text.split("\n### Configuration\n", 1)[1], maxsplit=1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    return names


def test_the_readme_table_lists_exactly_the_settings() -> None:
    documented, fields = configuration_table(), set(Settings.variables())
    assert sorted(fields - documented) == [], "settings missing from the README's table"
    assert sorted(documented - fields) == [], "README variables that no setting reads"


def test_every_setting_says_what_it_is() -> None:
    assert [name for name, f in Settings.model_fields.items() if not f.description] == []


def test_settings_are_read_once_and_empty_means_unset(
    settings_env: Callable[..., Settings],
) -> None:
    settings = settings_env(SMTP_PORT="", TASK_QUEUE="elsewhere", SMTP_STARTTLS="yes")
    assert get_settings() is settings
    assert (settings.smtp_port, settings.task_queue, settings.smtp_starttls) == (
        8025,
        "elsewhere",
        True,
    )
    assert settings.database_url is None and settings.content_root is None
