"""tool_choice "auto" with --tool-call-parser granite: Granite 3's JSON list of calls,
after `<|tool_call|>` (3.0), `<tool_call>` (3.1+) or bare, whole or streamed; any other
answer streams as content at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from api.granite_tool_parser import GraniteStream
from api.tool_parsers import parse_tool_calls

from .conftest import MODEL, Stack, sdk_client
from .tool_call_helpers import calls_through_the_sdk, named
from .tool_call_helpers import streamed as feed_pieces

CALLS = (
    '[{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}},'
    ' {"name": "get_time", "arguments": {}}]'
)
EXPECTED = [("get_weather", {"city": "Paris", "days": [1, 2]}), ("get_time", {})]


def streamed(pieces: list[str]) -> tuple[str, list[dict[str, Any]], bool, int]:
    return feed_pieces(GraniteStream(), pieces)


@pytest.mark.parametrize(
    "text", [CALLS, f"<|tool_call|>{CALLS}", f"<tool_call> {CALLS}\n", f" <|tool_call|>\n{CALLS}"]
)
def test_calls_are_read_whole_and_split_anywhere(text: str) -> None:
    parsed = parse_tool_calls("granite", text)
    assert parsed.content is None and named(parsed.tool_calls) == EXPECTED
    for cut in range(len(text) + 1):
        content, calls, called, _ = streamed([text[:cut], text[cut:]])
        assert (content, named(calls), called) == ("", EXPECTED, True), cut


def test_parameters_is_read_as_arguments() -> None:
    parsed = parse_tool_calls("granite", '[{"name": "f", "parameters": {"x": 1}}]')
    assert named(parsed.tool_calls) == [("f", {"x": 1})]


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",  # a list, but not of calls
        "[]",
        '{"name": "f", "arguments": {}}',  # not a list: no opener either
        '<tool_call>[{"name": "f", "arguments": {}}',  # cut short by max_tokens
        CALLS + " and some words",
        "<tool_call>not json",
    ],
)
def test_text_that_only_looks_like_calls_is_kept_as_it_was(text: str) -> None:
    for pieces in ([text], list(text)):
        content, calls, called, _ = streamed(pieces)
        assert (content, calls, called) == (text, [], False)


def test_an_answer_in_words_streams_at_once() -> None:
    text = "It is sunny."
    assert streamed(list(text)) == (text, [], False, len(text))


def test_auto_tool_choice_through_the_sdk(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(tool_call_parser="granite")
    stack.worker.set_script(f"<tool_call>{CALLS}")
    with sdk_client(stack) as client:
        calls_through_the_sdk(client, MODEL, EXPECTED)
