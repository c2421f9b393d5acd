"""Anthropic's Messages API against a scripted worker, through Anthropic's SDK and raw
HTTP: a message is the chat completion its conversation asks for (the same prompt
reaches the worker), its events come in Anthropic's order, tool calls become
tool_use blocks, and errors are Anthropic's shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from api.errors import anthropic_body_of
from api.messages_output import MessageEvents, stop_reason
from api.schemas.chat import ChatChunkChoice, ChatCompletionChunk, DeltaMessage
from api.schemas.common import UsageInfo

from .conftest import MODEL, Stack, log_row
from .fakes import SCRIPT_TEXT, FakeWorker

GREEDY = {"temperature": 0}


@pytest.fixture()
def claude(stack: Stack, worker: FakeWorker) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0) as client:
        yield client


def _events(client: httpx.Client, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The stream's (event name, data) pairs, as its SSE lines say them."""
    events = []
    name = None
    with client.stream("POST", "/v1/messages", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                assert data["type"] == name
                events.append((name, data))
    return events


def test_a_message_and_its_events_carry_the_answer(
    claude: anthropic.Anthropic, client: httpx.Client, stack: Stack, worker: FakeWorker
) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "Count."}],
    }
    message = claude.messages.create(**body)
    words = SCRIPT_TEXT.split()[:5]
    assert message.content[0].type == "text"
    assert message.content[0].text.split() == words
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    prompt_tokens = len(worker.received[-1].prompt_token_ids)
    usage = message.usage
    assert (usage.input_tokens + (usage.cache_read_input_tokens or 0), usage.output_tokens) == (
        prompt_tokens,
        5,
    )
    assert (
        claude.messages.count_tokens(**{k: body[k] for k in ("model", "messages")}).input_tokens
        == prompt_tokens
    )
    row = log_row(stack, "chatcmpl-" + message.id.removeprefix("msg_"))
    assert (row.endpoint, row.status_code, row.completion_tokens) == ("/v1/messages", 200, 5)

    events = _events(client, body)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == []
    # The same split as message_delta's (and the whole message's), which clients add up.
    final_usage = events[-2][1]["usage"]
    assert start["usage"] == {**final_usage, "output_tokens": 0}
    assert final_usage["cache_read_input_tokens"] > 0  # the scripted worker's cache hit
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"text_delta"}
    assert "".join(d["text"] for d in deltas) == message.content[0].text
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == 5


def test_the_prompt_is_the_same_conversation_s_as_a_chat(
    client: httpx.Client, worker: FakeWorker
) -> None:
    """System blocks (Claude Code's billing line left out), text blocks, a tool_use with
    its thinking and the user's tool_result reach the worker as the equivalent chat
    request's prompt, with the sampling knobs mapped."""
    messages = {
        "model": MODEL,
        "max_tokens": 7,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=abc"},
            {"type": "text", "text": "You are terse."},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should look.", "signature": "s"},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "text", "text": "<reminder>be brief</reminder>"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        "stop_sequences": ["seven"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
    }
    reply = client.post("/v1/messages", json=messages)
    assert reply.status_code == 200, reply.text
    sent = worker.received[-1]
    chat = {
        "model": MODEL,
        "max_tokens": 7,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "I should look.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            # Text blocks newline-joined, as chat joins text parts.
            {"role": "user", "content": "<reminder>be brief</reminder>\nAnd tomorrow?"},
        ],
    }
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    assert sent.prompt_token_ids == worker.received[-1].prompt_token_ids
    sampling = sent.sampling
    assert sampling["stop"] == ["seven"] and sampling["max_tokens"] == 7
    assert (sampling["temperature"], sampling["top_p"], sampling["top_k"]) == (0.5, 0.9, 5)


def test_claude_code_s_system_messages_and_roles_are_taken_as_vllm_takes_them(
    client: httpx.Client, worker: FakeWorker
) -> None:
    """System-role messages and the ctx/msg roles (newer Claude Code) were a 400; and a
    temperature past Anthropic's 1 is vLLM's to take."""
    messages = {
        "model": MODEL,
        "max_tokens": 3,
        "temperature": 1.5,
        "system": [{"type": "text", "text": "You are"}, {"type": "text", "text": " terse."}],
        "messages": [
            {"role": "system", "content": "Cite sources."},
            {"role": "ctx", "content": "Context here."},
            {"role": "msg", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Why?"},
        ],
    }
    reply = client.post("/v1/messages", json=messages)
    assert reply.status_code == 200, reply.text
    sent = worker.received[-1]
    assert sent.sampling["temperature"] == 1.5
    chat = {
        "model": MODEL,
        "max_tokens": 3,
        "messages": [
            {"role": "system", "content": "You are terse.\n\nCite sources."},
            {"role": "user", "content": "Context here."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Be brief.\n\nWhy?"},
        ],
    }
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    assert sent.prompt_token_ids == worker.received[-1].prompt_token_ids


def test_a_conversation_ending_in_the_assistant_s_text_is_continued(
    client: httpx.Client, worker: FakeWorker
) -> None:
    """Anthropic's prefill: the answer picks up where the assistant's text stops."""
    turns = [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "The color is"},
    ]
    reply = client.post("/v1/messages", json={"model": MODEL, "max_tokens": 3, "messages": turns})
    assert reply.status_code == 200, reply.text
    sent = worker.received[-1].prompt_token_ids
    chat = {
        "model": MODEL,
        "max_tokens": 3,
        "messages": turns,
        "add_generation_prompt": False,
        "continue_final_message": True,
    }
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    assert sent == worker.received[-1].prompt_token_ids
    tokens = worker.tokenizer.decode(sent)
    assert tokens.rstrip().endswith("The color is")
    counted = client.post(
        "/v1/messages/count_tokens", json={"model": MODEL, "messages": turns}
    ).json()
    assert counted == {"input_tokens": len(sent)}


def test_a_forced_tool_use_is_a_block_and_streams_its_input(
    claude: anthropic.Anthropic, client: httpx.Client, worker: FakeWorker
) -> None:
    arguments = '{"city": "Paris"}'
    worker.set_script(arguments)
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 40,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [
            {
                "name": "get_weather",
                "input_schema": {"properties": {"city": {"type": "string"}}},
            }
        ],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    message = claude.messages.create(**body)
    (call,) = message.content
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"city": "Paris"})
    assert call.id and message.stop_reason == "tool_use"
    events = _events(client, body)
    start = next(data for name, data in events if name == "content_block_start")
    assert start["content_block"] == {
        "type": "tool_use",
        "id": start["content_block"]["id"],
        "name": "get_weather",
        "input": {},
    }
    partial = [
        data["delta"]["partial_json"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"
    ]
    assert json.loads("".join(partial)) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    with claude.messages.stream(**body) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]


def test_a_stream_that_fails_ends_with_an_error_event(
    claude: anthropic.Anthropic, client: httpx.Client, worker: FakeWorker
) -> None:
    worker.behaviour = "gap"  # a reply lost on the way: the stream cannot go on
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
    events = _events(client, body)
    name, data = events[-1]
    assert name == "error" and data["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in events]
    with pytest.raises(anthropic.APIStatusError), claude.messages.stream(**body) as stream:
        stream.get_final_message()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> ChatCompletionChunk:
    choice = ChatChunkChoice(index=0, delta=DeltaMessage(**delta), finish_reason=finish)
    return ChatCompletionChunk(id="chatcmpl-abc", created=0, model=MODEL, choices=[choice])


def test_thinking_text_and_calls_stream_as_blocks_the_sdk_accumulates() -> None:
    """A reasoning model's thinking, its text and two calls: one block each, thinking
    signed as it closes, and Anthropic's SDK assembles the message from the events."""
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"reasoning_content": "Let me "}),
        _chunk({"reasoning_content": "think."}),
        _chunk({"content": "Checking."}),
        _chunk({"tool_calls": [_call(0, "toolu_a", "get_weather", '{"city": ')]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chunk({"tool_calls": [_call(1, "toolu_b", "get_time", "{}")]}),
        _chunk({}, finish="tool_calls"),
        ChatCompletionChunk(
            id="chatcmpl-abc", created=0, model=MODEL, choices=[], usage=UsageInfo.of(10, 7, 4)
        ),
    ]

    async def collect() -> list[dict[str, Any]]:
        async def source() -> AsyncIterator[ChatCompletionChunk]:
            for chunk in chunks:
                yield chunk

        return [e async for e in MessageEvents("chatcmpl-abc", MODEL, 10).events(source())]

    events = asyncio.run(collect())
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use", "tool_use"]
    signature = [e for e in events if e.get("delta", {}).get("type") == "signature_delta"]
    assert len(signature) == 1 and signature[0]["index"] == 0
    assert [e["index"] for e in events if e["type"] == "content_block_stop"] == [0, 1, 2, 3]
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    thinking, text, weather, clock = snapshot.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert thinking.signature == signature[0]["delta"]["signature"]
    assert text.type == "text" and text.text == "Checking."
    assert (weather.type, weather.id, weather.input) == ("tool_use", "toolu_a", {"city": "Paris"})
    assert (clock.type, clock.name, clock.input) == ("tool_use", "get_time", {})
    assert snapshot.stop_reason == "tool_use" and snapshot.id == "msg_abc"
    usage = snapshot.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (6, 4, 7)


def _call(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"type": "server_error", "code": "shutting_down"}, "overloaded_error"),
        ({"type": "server_error", "code": "no_worker"}, "overloaded_error"),
        ({"type": "server_error", "code": "reply_lost"}, "api_error"),
        ({"type": "timeout_error", "code": None}, "timeout_error"),
        ({"type": "rate_limit_error", "code": "rate_limit_exceeded"}, "rate_limit_error"),
        ({"type": "invalid_request_error", "code": None}, "invalid_request_error"),
    ],
)
def test_a_failed_stream_s_error_is_typed_as_anthropic_types_it(
    error: dict[str, Any], kind: str
) -> None:
    body = anthropic_body_of({"error": {**error, "message": "why"}})
    assert body == {"type": "error", "error": {"type": kind, "message": "why"}}


@pytest.mark.parametrize(
    ("finish", "stop", "called", "expected"),
    [
        ("stop", None, False, ("end_turn", None)),
        ("stop", 2, False, ("end_turn", None)),  # a stop token: Anthropic has none
        ("stop", "END", False, ("stop_sequence", "END")),
        ("length", None, False, ("max_tokens", None)),
        ("length", None, True, ("max_tokens", None)),  # a call cut short
        ("tool_calls", None, True, ("tool_use", None)),
        ("stop", None, True, ("tool_use", None)),
        ("abort", None, False, ("pause_turn", None)),  # POST /pause cut it short
        ("abort", None, True, ("pause_turn", None)),
    ],
)
def test_stop_reasons_say_how_the_answer_ended(
    finish: str, stop: int | str | None, called: bool, expected: tuple[str, str | None]
) -> None:
    assert stop_reason(finish, stop, called) == expected


@pytest.mark.parametrize(
    ("body", "status", "kind", "words"),
    [
        (
            {"messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        ({"max_tokens": 5, "messages": []}, 400, "invalid_request_error", "messages"),
        (
            {"max_tokens": 5, "temperature": -0.5, "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_request_error",
            "temperature",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [
                    {"type": "web_search_20250305", "name": "web_search", "input_schema": {}}
                ],
            },
            400,
            "invalid_request_error",
            "server tools",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
                ],
            },
            400,
            "invalid_request_error",
            "tool_result",
        ),
        (  # a call left without its result: refused, not generated on as if answered
            {
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": "weather?"},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}
                        ],
                    },
                    {"role": "user", "content": "never mind"},
                ],
            },
            400,
            "invalid_request_error",
            "messages.1: `tool_use` ids were found without `tool_result` blocks",
        ),
        (  # a text-only model: told it is the image, not chat's `image_url` part it became
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "iVBO",
                                },
                            }
                        ],
                    }
                ],
            },
            400,
            "invalid_request_error",
            "reads text only, not images",
        ),
        (
            {
                "model": "no-such-model",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
            },
            404,
            "not_found_error",
            "no-such-model",
        ),
    ],
)
def test_errors_are_anthropic_shaped(
    client: httpx.Client,
    worker: FakeWorker,
    body: dict[str, Any],
    status: int,
    kind: str,
    words: str,
) -> None:
    received = len(worker.received)
    reply = client.post("/v1/messages", json={"model": MODEL, **body})
    assert reply.status_code == status, reply.text
    error = reply.json()
    assert error["type"] == "error" and error["error"]["type"] == kind
    assert words in error["error"]["message"]
    assert len(worker.received) == received
