"""vLLM's --structured-outputs-config: what is served, what changes nothing, what is refused."""

from __future__ import annotations

import pytest

from conveyor.structured_outputs_config import StructuredOutputsConfig


def test_none_and_the_backends_are_vllms_defaults() -> None:
    assert StructuredOutputsConfig.parse(None) == StructuredOutputsConfig()
    for backend in ("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"):
        config = StructuredOutputsConfig.parse(
            f'{{"backend": "{backend}", "disable_fallback": true, '
            '"disable_additional_properties": true}'
        )
        assert config == StructuredOutputsConfig()


def test_disable_any_whitespace_and_the_reasoning_parser_are_read() -> None:
    config = StructuredOutputsConfig.parse(
        '{"disable_any_whitespace": true, "reasoning_parser": "qwen3"}'
    )
    assert (config.compact_json, config.reasoning_parser) == (True, "qwen3")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[]", "must be a JSON object"),
        ('{"backend": "magic"}', "backend 'magic' is not one of vLLM's"),
        ('{"whitespace": true}', "no field 'whitespace'"),
        ('{"disable_any_whitespace": "yes"}', "must be a bool"),
        ('{"enable_in_reasoning": true}', "enable_in_reasoning is not served"),
        ('{"reasoning_parser_plugin": "/p.py"}', "reasoning_parser_plugin is not served"),
        ("{bad", "Expecting"),
    ],
)
def test_what_is_not_served_stops_start_up(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StructuredOutputsConfig.parse(text)
