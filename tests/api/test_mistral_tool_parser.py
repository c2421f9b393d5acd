"""tool_choice "auto" with --tool-call-parser mistral: calls after the [TOOL_CALLS] token, in
Mistral 7B v0.3's JSON list or v11's `name[ARGS]{...}`, whole or streamed; text before
them streams at once, and what is not all calls stays text."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from api.mistral_tool_parser import MistralStream
from api.tool_parsers import parse_tool_calls

from .conftest import MODEL, Stack, sdk_client
from .tool_call_helpers import MESSAGES, calls_through_the_sdk, named
from .tool_call_helpers import streamed as feed_pieces

EXPECTED = [("get_weather", {"city": "Paris", "days": [1, 2]}), ("get_time", {})]
PRE_V11 = (
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}, '
    '{"name": "get_time", "arguments": {}}]'
)
V11 = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": [1, 2]}[TOOL_CALLS]get_time[ARGS]{}'
V13 = (
    '[TOOL_CALLS]get_weather[CALL_ID]abc123XYZ[ARGS]{"city": "Paris", "days": [1, 2]}'
    "[TOOL_CALLS]get_time[CALL_ID]def456UVW[ARGS]{}"
)
MISTRAL_ID = re.compile(r"^[A-Za-z0-9]{9}$")


def streamed(pieces: list[str]) -> tuple[str, list[dict[str, Any]], bool, int]:
    return feed_pieces(MistralStream(), pieces)


@pytest.mark.parametrize("text", [PRE_V11, V11, V13, f"{V11}\n"])
def test_calls_are_read_whole_and_split_anywhere(text: str) -> None:
    parsed = parse_tool_calls("mistral", text)
    assert parsed.content is None and named(parsed.tool_calls) == EXPECTED
    # Mistral's chat templates accept only 9-character alphanumeric call ids.
    assert all(MISTRAL_ID.match(call["id"]) for call in parsed.tool_calls)
    for cut in range(len(text) + 1):
        content, calls, called, _ = streamed([text[:cut], text[cut:]])
        assert (content, named(calls), called) == ("", EXPECTED, True), cut
    assert [c["index"] for c in streamed(list(text))[1]] == [0, 1]


def test_the_models_own_call_ids_are_kept() -> None:
    parsed = parse_tool_calls("mistral", V13)
    assert [call["id"] for call in parsed.tool_calls] == ["abc123XYZ", "def456UVW"]


def test_text_before_the_calls_streams_at_once_and_stays_content() -> None:
    prefix = "Let me check the weather. "
    content, calls, called, feeds = streamed(list(prefix + V11))
    assert (content, named(calls), called) == (prefix, EXPECTED, True)
    assert feeds >= len(prefix) - len("[TOOL_CALLS]")  # held back only near the token
    parsed = parse_tool_calls("mistral", prefix + V11)
    assert parsed.content == prefix and named(parsed.tool_calls) == EXPECTED  # as streamed


def test_an_answer_in_words_streams_at_once() -> None:
    text = "The weather in Paris is sunny."
    content, calls, called, feeds = streamed(list(text))
    assert (content, calls, called, feeds) == (text, [], False, len(text))


@pytest.mark.parametrize(
    "text",
    [
        "[TOOL_CALLS] [1, 2]",  # a list, but not of calls
        "[TOOL_CALLS] []",
        '[TOOL_CALLS] [{"name": "f", "arguments": {}}] and words',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Par',  # cut short by max_tokens
        "[TOOL_CALLS]get_weather{}",  # no [ARGS]
        '[TOOL_CALLS]get weather[ARGS]{"city": "Paris"}',  # not a function name
        "[TOOL_CALLS]f[ARGS][1]",  # arguments that are not an object
        "Sunny. [TOOL_CAL",  # a prefix of the token, then the end
    ],
)
def test_text_that_only_looks_like_calls_is_kept_as_it_was(text: str) -> None:
    for pieces in ([text], list(text)):
        content, calls, called, _ = streamed(pieces)
        assert (content, calls, called) == (text, [], False)


@pytest.fixture()
def mistral_sdk(make_stack: Callable[..., Stack]) -> Iterator[tuple[openai.OpenAI, Stack]]:
    stack = make_stack(tool_call_parser="mistral")
    with sdk_client(stack) as client:
        yield client, stack


def test_auto_tool_choice_through_the_sdk(mistral_sdk: tuple[openai.OpenAI, Stack]) -> None:
    client, stack = mistral_sdk
    stack.worker.set_script(V11)
    calls_through_the_sdk(client, MODEL, EXPECTED)
    # [TOOL_CALLS] is a special token: the worker is asked to keep special tokens.
    assert stack.worker.received[-1].sampling["skip_special_tokens"] is False
    # Without tools the request is left as the client sent it.
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert stack.worker.received[-1].sampling["skip_special_tokens"] is True


def test_history_ids_are_trimmed_the_same_way_for_call_and_result() -> None:
    from api.mistral_tool_parser import with_mistral_ids
    from api.schemas.chat import ChatMessage

    long_id = "call_0123456789abcdef0123"
    messages = [
        ChatMessage(role="user", content="Time?"),
        ChatMessage(
            role="assistant",
            tool_calls=[{"id": long_id, "type": "function", "function": {"name": "t"}}],
        ),
        ChatMessage(role="tool", tool_call_id=long_id, content="noon"),
        ChatMessage(
            role="assistant",
            tool_calls=[{"id": "abc123XYZ", "type": "function", "function": {"name": "t"}}],
        ),
    ]
    out = with_mistral_ids(messages)
    short = out[1].tool_calls[0]["id"]
    assert MISTRAL_ID.match(short) and short == long_id[-9:]
    assert out[2].tool_call_id == short
    assert out[3].tool_calls[0]["id"] == "abc123XYZ"  # already valid: kept


def test_forced_calls_get_mistral_ids_too(mistral_sdk: tuple[openai.OpenAI, Stack]) -> None:
    client, stack = mistral_sdk
    stack.worker.set_script('{"city": "Paris"}')
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    whole = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=tools, tool_choice=choice
    )
    (call,) = whole.choices[0].message.tool_calls or []
    assert MISTRAL_ID.match(call.id)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=tools, tool_choice=choice, stream=True
        )
    )
    ids = [d.id for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or [] if d.id]
    assert len(ids) == 1 and MISTRAL_ID.match(ids[0])
