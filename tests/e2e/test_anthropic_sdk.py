"""The real server through Anthropic's own SDK (`/v1/messages`): under greedy decoding a
message says what the same conversation says through chat completions, streamed or
not, tool calls and their results included, and its usage and stop reasons are
Anthropic's."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from .conftest import Server

MODEL = "smollm2"
# The SDK has dropped Anthropic's sampling knobs; the API still takes them (as vLLM's does).
GREEDY = {"temperature": 0}
SYSTEM = "You are a terse assistant."
QUESTION = "Name three colors of the rainbow."
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def claude(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def chat(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def _chat_text(chat: openai.OpenAI, messages: list[dict[str, Any]], **options: Any) -> Any:
    return chat.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=24, **options
    )


def test_a_message_says_what_chat_says_streamed_or_not(
    claude: anthropic.Anthropic, chat: openai.OpenAI
) -> None:
    user = [{"role": "user", "content": QUESTION}]
    expected = _chat_text(chat, [{"role": "system", "content": SYSTEM}, *user])
    want = expected.choices[0].message.content
    options: dict[str, Any] = {
        "model": MODEL,
        "system": SYSTEM,
        "messages": user,
        "max_tokens": 24,
        "extra_body": GREEDY,
    }
    message = claude.messages.create(**options)
    assert message.id.startswith("msg_") and message.role == "assistant"
    (block,) = message.content
    assert block.type == "text" and block.text == want
    assert (
        message.stop_reason
        == {"stop": "end_turn", "length": "max_tokens"}[expected.choices[0].finish_reason]
    )
    usage = message.usage
    assert usage.output_tokens == expected.usage.completion_tokens
    prompt = expected.usage.prompt_tokens
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == prompt
    counted = claude.messages.count_tokens(model=MODEL, system=SYSTEM, messages=user)
    assert counted.input_tokens == prompt

    with claude.messages.stream(**options) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == want
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == want
    assert final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == usage.output_tokens


def test_a_stop_sequence_ends_the_message_and_is_named(claude: anthropic.Anthropic) -> None:
    options: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 24,
        "extra_body": GREEDY,
    }
    whole = claude.messages.create(**options).content[0].text
    words = whole.split()
    assert len(words) >= 3, whole
    stop = " " + words[2]
    cut = claude.messages.create(**options, stop_sequences=[stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == whole[: whole.index(stop)]


def test_a_forced_tool_use_has_valid_input_streamed_or_not(claude: anthropic.Anthropic) -> None:
    options: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "max_tokens": 120,
        "extra_body": GREEDY,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    message = claude.messages.create(**options)
    (call,) = message.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id
    assert set(call.input) == {"city", "unit"}
    assert call.input["unit"] in ("celsius", "fahrenheit")
    assert message.stop_reason == "tool_use"
    with claude.messages.stream(**options) as events:
        streamed = events.get_final_message()
    (streamed_call,) = streamed.content
    assert streamed_call.type == "tool_use" and streamed_call.input == call.input
    assert streamed.stop_reason == "tool_use"


def test_a_tool_result_turn_is_the_chat_conversation(
    claude: anthropic.Anthropic, chat: openai.OpenAI
) -> None:
    """tool_use and tool_result blocks reach the model as chat tool calls and tool
    messages: the answer is the chat conversation's answer."""
    arguments = {"city": "Paris", "unit": "celsius"}
    chat_messages: list[dict[str, Any]] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(arguments)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    tool = {
        "type": "function",
        "function": {**WEATHER_TOOL, "parameters": WEATHER_TOOL["input_schema"]},
    }
    del tool["function"]["input_schema"]
    expected = _chat_text(chat, chat_messages, tools=[tool], tool_choice="none")
    message = claude.messages.create(
        model=MODEL,
        max_tokens=24,
        extra_body=GREEDY,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "none"},
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": arguments}
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_1",
                        "content": [{"type": "text", "text": "18 degrees and sunny"}],
                    }
                ],
            },
        ],
    )
    assert message.content[0].text == expected.choices[0].message.content
    assert message.usage.output_tokens == expected.usage.completion_tokens


def test_bad_requests_are_anthropic_errors(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"temperature": -0.5},
        )
    assert bad.value.body["type"] == "error"  # type: ignore[index]
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "temperature" in bad.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(
            model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
