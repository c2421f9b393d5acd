from __future__ import annotations

import pytest

from conveyor.display_names import key_name, project_name


def test_names_are_trimmed() -> None:
    assert project_name("  acme ") == "acme"
    assert key_name(" ci ") == "ci"
    assert key_name("") == ""  # keys may go unnamed


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "a\tb", "a\x00b", "bell\x07"])
def test_blank_names_and_control_characters_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        project_name(name)


def test_unicode_names_are_kept() -> None:
    assert project_name("Équipe 日本 🚀") == "Équipe 日本 🚀"
