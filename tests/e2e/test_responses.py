"""The Responses API on the real server and bundled model, through the official SDK.

A response is the chat generation its input describes, so under greedy
decoding it must say exactly what chat completions says for the same turn.
"""

from __future__ import annotations

import json
import time

import openai
import pydantic
import pytest

from .conftest import Server

MODEL = "smollm2"
QUESTION = "Name three colors of the rainbow."


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def chat_text(client: openai.OpenAI, messages: list[dict[str, str]], max_tokens: int) -> str:
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens
    )
    return answer.choices[0].message.content or ""


def test_a_response_says_what_chat_says_and_streams_the_same(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=QUESTION,
        instructions="Answer briefly.",
        temperature=0,
        max_output_tokens=30,
    )
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": QUESTION},
    ]
    assert response.output_text == chat_text(client, messages, 30)
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None and 0 < response.usage.output_tokens <= 30

    with client.responses.stream(
        model=MODEL,
        input=QUESTION,
        instructions="Answer briefly.",
        temperature=0,
        max_output_tokens=30,
    ) as stream:
        events = list(stream)
    # The last event is response.completed, or response.incomplete if max_output_tokens
    # cut the answer (the SDK's get_final_response() accepts only the former).
    final = events[-1].response
    assert events[-1].type == f"response.{response.status}"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text == response.output_text
    assert final.usage is not None
    assert final.usage.output_tokens == response.usage.output_tokens


def test_previous_response_id_gives_the_model_the_whole_conversation(
    client: openai.OpenAI,
) -> None:
    first = client.responses.create(
        model=MODEL, input="My name is Ada.", temperature=0, max_output_tokens=20
    )
    second = client.responses.create(
        model=MODEL,
        input="What is my name?",
        previous_response_id=first.id,
        temperature=0,
        max_output_tokens=20,
    )
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    assert second.output_text == chat_text(client, messages, 20)
    assert client.responses.retrieve(second.id).output_text == second.output_text


class Planet(pydantic.BaseModel):
    name: str
    moons: int


def test_parse_with_text_format_and_a_forced_function_call(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(
        model=MODEL,
        input="Describe Mars as JSON.",
        text_format=Planet,
        temperature=0,
        max_output_tokens=60,
    )
    assert isinstance(parsed.output_parsed, Planet)

    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
    called = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[tool],
        tool_choice="required",
        temperature=0,
        max_output_tokens=60,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and all(call.name == "get_weather" for call in calls)
    assert all(isinstance(json.loads(call.arguments)["city"], str) for call in calls)


def test_a_background_response_is_polled_to_what_chat_says_and_cancels(
    client: openai.OpenAI,
) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    queued = client.responses.create(
        model=MODEL, input=QUESTION, temperature=0, max_output_tokens=24, background=True
    )
    assert queued.status == "queued"
    response = queued
    for _ in range(600):
        if response.status not in ("queued", "in_progress"):
            break
        time.sleep(0.1)
        response = client.responses.retrieve(queued.id)
    assert response.status in ("completed", "incomplete"), response.status
    assert response.output_text == chat_text(client, messages, 24)
    # A long one, cancelled while it generates, stays cancelled.
    long = client.responses.create(
        model=MODEL, input="Write a long story.", max_output_tokens=1500, background=True
    )
    time.sleep(0.5)
    assert client.responses.cancel(long.id).status == "cancelled"
    time.sleep(1.0)
    assert client.responses.retrieve(long.id).status == "cancelled"


def test_a_streamed_background_response_resumes_to_what_chat_says(
    client: openai.OpenAI,
) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    stream = client.responses.create(
        model=MODEL,
        input=QUESTION,
        temperature=0,
        max_output_tokens=24,
        background=True,
        stream=True,
    )
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta":
            break  # the client drops after the first text
    stream.close()
    rest = list(
        client.responses.retrieve(
            seen[0].response.id, stream=True, starting_after=seen[-1].sequence_number
        )
    )
    text = "".join(e.delta for e in seen + rest if e.type == "response.output_text.delta")
    assert rest[-1].type in ("response.completed", "response.incomplete")
    assert text == rest[-1].response.output_text == chat_text(client, messages, 24)
