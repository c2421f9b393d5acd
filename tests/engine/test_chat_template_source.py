"""--chat-template as vLLM reads it: a file's text, a literal template, or an error that
stops start-up (never a worker that keeps failing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.chat_template_source import read_chat_template
from engine.configuration_error import ConfigurationError


def test_a_file_is_read_and_a_literal_template_is_itself(tmp_path: Path) -> None:
    path = tmp_path / "chat.jinja"
    path.write_text("{{ messages }}", encoding="utf-8")
    assert read_chat_template(path) == read_chat_template(str(path)) == "{{ messages }}"
    assert read_chat_template("{{ messages }}") == "{{ messages }}"
    assert read_chat_template("~nosuchuser{{ x }}") == "~nosuchuser{{ x }}"
    long = "{{ messages }}" + " " * 5000  # too long for a file name: a template
    assert read_chat_template(long) == long


@pytest.mark.parametrize("value", ["missing/template.jinja", "chatml"])
def test_a_path_to_nothing_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="no such file exists") as missing:
        read_chat_template(value)
    assert isinstance(missing.value, FileNotFoundError)


def test_an_unreadable_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jinja"
    path.write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(ConfigurationError, match="cannot read it"):
        read_chat_template(path)
