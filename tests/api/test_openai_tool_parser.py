"""--tool-call-parser openai: gpt-oss's harmony messages to functions.NAME are tool calls."""

from __future__ import annotations

import json

import pytest

from api.openai_tool_parser import OpenAIToolStream
from api.tool_call_json import AFTER_CALLS
from api.tool_parsers import keeps_special_tokens, parse_tool_calls

CALL = '<|channel|>commentary to=functions.get_weather<|message|>{"city": "Paris"}<|call|>'
SECOND = (
    "<|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json"
    "<|message|>{}<|call|>"
)


def test_calls_and_content_whole() -> None:
    assert keeps_special_tokens("openai")
    parsed = parse_tool_calls("openai", CALL + SECOND)
    assert parsed.content is None
    assert [c["function"]["name"] for c in parsed.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(parsed.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert parsed.tool_calls[1]["function"]["arguments"] == "{}"
    assert parsed.tool_calls[0]["id"] != parsed.tool_calls[1]["id"]
    # A preamble before the call is content; the thinking (when no reasoning parser
    # took it out) is not the answer.
    preamble = "<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant"
    thought = "<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant"
    parsed = parse_tool_calls("openai", thought + preamble + CALL)
    assert parsed.content == "Let me check."
    assert len(parsed.tool_calls) == 1
    # No call: all content; a call cut short (max_tokens) is no call.
    assert parse_tool_calls("openai", "Just text.").content == "Just text."
    cut = CALL[: CALL.index("}")]
    assert parse_tool_calls("openai", cut).tool_calls == []


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_streamed_calls_are_the_whole_ones(step: int) -> None:
    text = "<|channel|>final<|message|>Sure. <|end|><|start|>assistant" + CALL + SECOND
    stream = OpenAIToolStream()
    content, calls, called = "", [], False
    for start in range(0, len(text), step):
        chunk = text[start : start + step]
        fields, called = stream.feed(chunk, final=start + step >= len(text))
        content += fields.get("content", "") + fields.get(AFTER_CALLS, "")
        calls += fields.get("tool_calls", [])
    assert called and content == "Sure. "
    assert [c["index"] for c in calls] == [0, 1]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
