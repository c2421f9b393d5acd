"""tool_choice "auto" with --tool-call-parser llama3_json: an answer that is JSON calls
becomes tool_calls, whole or streamed; any other answer streams as content at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from api.llama3_tool_parser import Llama3JsonStream
from api.tool_parsers import parse_tool_calls

from .conftest import MODEL, Stack, sdk_client
from .tool_call_helpers import named
from .tool_call_helpers import streamed as feed_pieces

WEATHER = '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}'
CLOCK = '{"name": "get_time", "arguments": {}}'
EXPECTED = [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {})]


def streamed(pieces: list[str]) -> tuple[str, list[dict[str, Any]], bool, int]:
    return feed_pieces(Llama3JsonStream(), pieces)


@pytest.mark.parametrize(
    "text",
    [WEATHER + "; " + CLOCK, f"<|python_tag|>{WEATHER};{CLOCK}", f"\n {WEATHER}\n{CLOCK} "],
)
def test_calls_are_read_whole_and_split_anywhere(text: str) -> None:
    parsed = parse_tool_calls("llama3_json", text)
    assert parsed.content is None and named(parsed.tool_calls) == EXPECTED
    for cut in range(len(text) + 1):
        content, calls, called, _ = streamed([text[:cut], text[cut:]])
        assert (content, named(calls), called) == ("", EXPECTED, True), cut
    assert [c["index"] for c in streamed(list(text))[1]] == [0, 1]


def test_an_answer_in_words_streams_at_once() -> None:
    text = "The weather in Paris is sunny."
    content, calls, called, feeds = streamed(list(text))
    assert (content, calls, called) == (text, [], False)
    assert feeds == len(text)  # decided on the first character, nothing held back
    assert parse_tool_calls("llama3_json", text).content == text


@pytest.mark.parametrize(
    "text",
    [
        '{"answer": 42}',  # JSON, but no call
        WEATHER + " and then some words",
        '{"name": "f", "parameters": {"x": ',  # cut short by max_tokens
        "<|python_tag|>print('hi')",  # code, not JSON
        "<|pyth",  # a prefix of the tag, then the end
    ],
)
def test_text_that_only_looks_like_calls_is_kept_as_it_was(text: str) -> None:
    for pieces in ([text], list(text)):
        content, calls, called, _ = streamed(pieces)
        assert (content, calls, called) == (text, [], False)
    assert parse_tool_calls("llama3_json", text).tool_calls == []


TOOLS = [
    {"type": "function", "function": {"name": "get_weather"}},
    {"type": "function", "function": {"name": "get_time"}},
]
MESSAGES = [{"role": "user", "content": "Weather in Paris, and the time?"}]


@pytest.fixture()
def llama3_sdk(make_stack: Callable[..., Stack]) -> Iterator[tuple[openai.OpenAI, Stack]]:
    stack = make_stack(tool_call_parser="llama3_json")
    with sdk_client(stack) as client:
        yield client, stack


def test_auto_tool_choice_through_the_sdk(llama3_sdk: tuple[openai.OpenAI, Stack]) -> None:
    client, stack = llama3_sdk
    stack.worker.set_script(f"{WEATHER}; {CLOCK}")
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert named([c.model_dump() for c in choice.message.tool_calls or []]) == EXPECTED

    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, stream=True)
    )
    deltas = [
        d.model_dump() for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []
    ]
    assert named(deltas) == EXPECTED
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    response = client.responses.create(
        model=MODEL,
        input="Weather?",
        tools=[
            {"type": "function", "name": "get_weather"},
            {"type": "function", "name": "get_time"},
        ],
    )
    assert [i.type for i in response.output] == ["function_call", "function_call"]

    stack.worker.set_script(" It is sunny.")
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    assert plain.choices[0].message.content == " It is sunny."
    assert plain.choices[0].finish_reason == "stop"
