"""tool_choice "auto" with --tool-call-parser olmo3: OLMo 3's Python calls inside
`<function_calls>`, a call per line, JSON's null/true/false allowed, read without
running anything, whole or streamed; any other answer streams as content at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from api.olmo3_tool_parser import Olmo3Stream
from api.tool_parsers import parse_tool_calls

from .conftest import MODEL, Stack, sdk_client
from .tool_call_helpers import calls_through_the_sdk, named
from .tool_call_helpers import streamed as feed_pieces

CALLS = (
    '<function_calls>\nget_weather(city="Paris", unit=null, alerts=true, days=[1, false])\n'
    "get_time()\n</function_calls>"
)
EXPECTED = [
    ("get_weather", {"city": "Paris", "unit": None, "alerts": True, "days": [1, False]}),
    ("get_time", {}),
]


def streamed(pieces: list[str]) -> tuple[str, list[dict[str, Any]], bool, int]:
    return feed_pieces(Olmo3Stream(), pieces)


@pytest.mark.parametrize(
    "text",
    [
        CALLS,
        CALLS.removesuffix("</function_calls>"),  # the closing tag left out
        '<function_calls>get_weather(\n  city="Paris",\n  unit=None,\n  alerts=True,\n'
        "  days=[1, False],\n)\nget_time()</function_calls>",  # a call over several lines
    ],
)
def test_calls_are_read_whole_and_split_anywhere(text: str) -> None:
    parsed = parse_tool_calls("olmo3", text)
    assert parsed.content is None and named(parsed.tool_calls) == EXPECTED
    for cut in range(len(text) + 1):
        content, calls, called, _ = streamed([text[:cut], text[cut:]])
        assert (content, named(calls), called) == ("", EXPECTED, True), cut


@pytest.mark.parametrize(
    "text",
    [
        "<function_calls>\n</function_calls>",
        "<function_calls>\nx = 1\n</function_calls>",  # a statement, not a call
        "<function_calls>\nf(x=open('/etc/passwd'))\n</function_calls>",  # never evaluated
        "<function_calls>\nf('positional')\n</function_calls>",
        "<function_calls>\nf(x=nul)\n</function_calls>",  # only JSON's three names
        '<function_calls>\nget_weather(city="Par',  # cut short by max_tokens
        CALLS + " and some words",
    ],
)
def test_text_that_only_looks_like_calls_is_kept_as_it_was(text: str) -> None:
    for pieces in ([text], list(text)):
        content, calls, called, _ = streamed(pieces)
        assert (content, calls, called) == (text, [], False)


def test_auto_tool_choice_through_the_sdk(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(tool_call_parser="olmo3")
    stack.worker.set_script(CALLS)
    with sdk_client(stack) as client:
        calls_through_the_sdk(client, MODEL, EXPECTED)
