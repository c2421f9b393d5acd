"""Responses input items -> the chat request a response runs as."""

from __future__ import annotations

from typing import Any

import pytest

from api.errors import ApiError
from api.responses_input import (
    chat_messages,
    chat_request,
    chat_tool_choice,
    chat_tools,
    normalize_input,
)
from api.schemas.responses import ResponsesRequest


def messages_of(raw: Any) -> list[dict[str, Any]]:
    return chat_messages(normalize_input(raw))


def test_a_string_is_one_user_message() -> None:
    (item,) = normalize_input("Hello")
    assert item["type"] == "message" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "input_text", "text": "Hello"}]
    assert messages_of("Hello") == [{"role": "user", "content": "Hello"}]


def test_given_ids_are_kept_and_missing_ones_made() -> None:
    items = normalize_input(
        [
            {"id": "msg_mine", "role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
        ]
    )
    assert items[0]["id"] == "msg_mine" and items[1]["id"].startswith("msg_")
    assert items[1]["content"] == [{"type": "output_text", "text": "b", "annotations": []}]


def test_developer_stays_for_the_template_and_text_parts_are_joined() -> None:
    assert messages_of(
        [
            {"role": "developer", "content": "Rules."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "line one"},
                    {"type": "input_text", "text": "line two"},
                ],
            },
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        ]
    ) == [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": "line one\nline two"},
        {"role": "assistant", "content": "No."},
    ]


def test_calls_join_the_assistant_turn_and_outputs_name_their_function() -> None:
    messages = messages_of(
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Checking."},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "clock", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "noon"}],
            },
            {"type": "function_call", "call_id": "c3", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c3", "output": "?"},
        ]
    )
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "tool",
    ]
    assert messages[1]["content"] == "Checking."
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": "sunny",
        "name": "weather",
    }
    assert messages[3]["content"] == "noon" and messages[3]["name"] == "clock"
    assert messages[4] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c3", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ],
    }
    assert messages[5]["name"] == "weather"


def test_an_output_for_a_call_never_made_is_openais_400() -> None:
    """A call_id neither the history nor the input holds: the model would answer a call
    it never made, so OpenAI refuses it, and so do we."""
    with pytest.raises(ApiError) as refused:
        messages_of(
            [
                {"role": "user", "content": "Weather?"},
                {"type": "function_call_output", "call_id": "call_typo", "output": "sunny"},
            ]
        )
    assert (refused.value.status, refused.value.param) == (400, "input")
    assert "call_id call_typo" in refused.value.message


def test_a_call_left_without_its_output_is_openais_400() -> None:
    """A turn continued after a function call (previous_response_id's output, or the
    input's) must send what the function returned, as OpenAI requires; every other call
    answered is not enough."""
    with pytest.raises(ApiError) as refused:
        messages_of(
            [
                {"role": "user", "content": "Weather and time?"},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "clock", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"role": "user", "content": "And?"},
            ]
        )
    assert (refused.value.status, refused.value.param) == (400, "input")
    assert refused.value.message == "No tool output found for function call c2."


def test_reasoning_items_are_kept_but_not_read() -> None:
    items = normalize_input(
        [{"type": "reasoning", "summary": []}, {"role": "user", "content": "Hi"}]
    )
    assert items[0]["type"] == "reasoning" and items[0]["id"].startswith("rs_")
    assert chat_messages(items) == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (["not an object"], "input[0]"),
        ([{"role": "user"}], "input[0].content"),
        ([{"role": "user", "content": [{"type": "input_text"}]}], "input[0].content[0]"),
        ([{"role": "user", "content": [{"type": "video"}]}], "input[0].content[0]"),
        ([{"role": "user", "content": [{"type": "input_file"}]}], "input[0].content[0]"),
        ([{"type": "function_call", "call_id": "c", "name": "f"}], "input[0].arguments"),
        ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
        ([{"type": "function_call_output", "call_id": "c", "output": 3}], "input[0].output"),
        ([{"type": "web_search_call", "id": "ws_1"}], "input[0].type"),
    ],
)
def test_malformed_items_are_400s_naming_them(raw: Any, param: str) -> None:
    with pytest.raises(ApiError) as refused:
        normalize_input(raw)
    assert refused.value.status == 400 and refused.value.param == param


def test_flat_function_tools_become_chat_tools() -> None:
    tools = [
        {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
        {"type": "function", "name": "g", "description": "G."},
    ]
    assert chat_tools(tools) == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "strict": True},
        },
        {"type": "function", "function": {"name": "g", "description": "G."}},
    ]
    assert chat_tool_choice({"type": "function", "name": "f"}) == {
        "type": "function",
        "function": {"name": "f"},
    }
    assert chat_tool_choice("required") == "required"
    with pytest.raises(ApiError) as refused:
        chat_tools([{"type": "function"}])
    assert refused.value.param == "tools[0].name"
    with pytest.raises(ApiError):
        chat_tool_choice({"type": "function"})


def test_the_chat_request_carries_every_setting() -> None:
    body = ResponsesRequest.model_validate(
        {
            "model": "m",
            "input": "Hi",
            "instructions": "Be kind.",
            "max_output_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 3,
            "seed": 11,
            "cache_salt": "tenant-7",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "include": ["message.output_text.logprobs"],
            "stream": True,
        }
    )
    history = normalize_input([{"role": "user", "content": "Before"}])
    chat = chat_request(body, history, normalize_input(body.input))
    assert [m.role for m in chat.messages] == ["system", "user", "user"]
    assert [m.content for m in chat.messages] == ["Be kind.", "Before", "Hi"]
    assert (chat.max_completion_tokens, chat.temperature, chat.top_p) == (7, 0.5, 0.9)
    assert (chat.top_k, chat.seed, chat.logprobs, chat.top_logprobs) == (3, 11, True, 0)
    assert chat.cache_salt == "tenant-7"
    constraint, param = chat.structured_output()
    assert constraint is not None and constraint.kind == "json" and param == "text.format"
    assert chat.requested_max_tokens == (7, "max_output_tokens")
