"""tool_choice "auto" with --tool-call-parser phi4_mini_json: Phi-4-mini's
`functools[...]` answer, whole or streamed, read as JSON (brackets inside arguments
included); any other answer streams as content at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from api.phi4_mini_tool_parser import Phi4MiniJsonStream
from api.tool_parsers import parse_tool_calls

from .conftest import MODEL, Stack, sdk_client
from .tool_call_helpers import calls_through_the_sdk, named
from .tool_call_helpers import streamed as feed_pieces

CALLS = (
    'functools[{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}},'
    ' {"name": "get_time", "arguments": {}}]'
)
EXPECTED = [("get_weather", {"city": "Paris", "days": [1, 2]}), ("get_time", {})]


def streamed(pieces: list[str]) -> tuple[str, list[dict[str, Any]], bool, int]:
    return feed_pieces(Phi4MiniJsonStream(), pieces)


@pytest.mark.parametrize("text", [CALLS, f" {CALLS}\n"])
def test_calls_are_read_whole_and_split_anywhere(text: str) -> None:
    parsed = parse_tool_calls("phi4_mini_json", text)
    assert parsed.content is None and named(parsed.tool_calls) == EXPECTED
    for cut in range(len(text) + 1):
        content, calls, called, _ = streamed([text[:cut], text[cut:]])
        assert (content, named(calls), called) == ("", EXPECTED, True), cut


@pytest.mark.parametrize(
    "text",
    [
        "functools[1]",
        'functools[{"name": "f", "arguments": {}}',  # cut short by max_tokens
        CALLS + " and some words",
        "functools are handy",  # a word, not the opener
    ],
)
def test_text_that_only_looks_like_calls_is_kept_as_it_was(text: str) -> None:
    for pieces in ([text], list(text)):
        content, calls, called, _ = streamed(pieces)
        assert (content, calls, called) == (text, [], False)


def test_auto_tool_choice_through_the_sdk(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(tool_call_parser="phi4_mini_json")
    stack.worker.set_script(CALLS)
    with sdk_client(stack) as client:
        calls_through_the_sdk(client, MODEL, EXPECTED)
