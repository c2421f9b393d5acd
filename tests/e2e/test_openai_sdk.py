"""The real server (embedded engine worker, real Redis) through the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Literal

import httpx
import openai
import pydantic
import pytest

from .conftest import Server

MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "Name three colors of the rainbow."}]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def aclient(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_stream_equals_non_stream_under_greedy(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=40
    )
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.completion_tokens <= 40
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason


def test_completions_with_echo_and_logprobs(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    out = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=5, temperature=0, echo=True, logprobs=2
    )
    choice = out.choices[0]
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    assert lp is not None and lp.token_logprobs[0] is None
    assert len(lp.tokens) == len(lp.token_logprobs) == out.usage.prompt_tokens + 5
    assert all(v <= 0 for v in lp.token_logprobs[1:])


def test_n_and_seed(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=1.0, seed=7, n=3)
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]


def test_beam_search_answers_the_same_streamed_or_not(client: openai.OpenAI) -> None:
    """vLLM's use_beam_search through extra_body: n hypotheses, best first, each with
    its tokens' logprobs; a stream carries each one whole when the search ends."""
    kwargs: dict[str, Any] = dict(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=12,
        n=3,
        logprobs=True,
        top_logprobs=2,
        extra_body={"use_beam_search": True, "length_penalty": 0.8},
    )
    full = client.chat.completions.create(**kwargs)
    assert [c.index for c in full.choices] == [0, 1, 2]
    assert all(c.message.content for c in full.choices)
    assert full.usage is not None and full.usage.completion_tokens >= 3
    for choice in full.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        for entry in choice.logprobs.content:
            assert len(entry.top_logprobs) == 2
            assert entry.logprob <= entry.top_logprobs[0].logprob <= 0
    text: dict[int, str] = {}
    finish: dict[int, str] = {}
    logprobs: dict[int, list[float]] = {}
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            text[choice.index] = text.get(choice.index, "") + (choice.delta.content or "")
            if choice.logprobs is not None and choice.logprobs.content:
                logprobs.setdefault(choice.index, []).extend(
                    entry.logprob for entry in choice.logprobs.content
                )
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert [text[i] for i in range(3)] == [c.message.content for c in full.choices]
    assert [finish[i] for i in range(3)] == [c.finish_reason for c in full.choices]
    assert [logprobs[i] for i in range(3)] == [
        [entry.logprob for entry in c.logprobs.content or []]
        for c in full.choices
        if c.logprobs is not None
    ]
    with pytest.raises(openai.BadRequestError, match="stop: cannot be combined"):
        client.chat.completions.create(**kwargs, stop=["."])


def test_bad_input_gets_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=-1)
    assert bad.value.status_code == 400
    assert "temperature" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model=MODEL, prompt="hello " * 3000, max_tokens=10)
    assert "2048" in str(long.value)


def test_32_concurrent_requests_match_sequential(
    client: openai.OpenAI, aclient: openai.AsyncOpenAI
) -> None:
    # 16 prompts, each sent twice at once: 32 concurrent requests, 16 sequential answers.
    distinct = [f"Count from {i} to {i + 5}:" for i in range(16)]
    prompts = distinct * 2
    sequential = [
        client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0)
        .choices[0]
        .text
        for p in distinct
    ] * 2

    async def run() -> list[str]:
        results = await asyncio.gather(
            *(
                aclient.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0)
                for p in prompts
            )
        )
        return [r.choices[0].text for r in results]

    assert asyncio.run(run()) == sequential


def _running(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_disconnect_aborts_streams(server: Server, client: openai.OpenAI) -> None:
    async def open_and_drop() -> None:
        async with httpx.AsyncClient(timeout=30) as http:

            async def one(i: int) -> None:
                body = {
                    "model": MODEL,
                    "prompt": f"Story {i}:",
                    "max_tokens": 1500,
                    "ignore_eos": True,
                    "stream": True,
                }
                async with http.stream("POST", f"{server.v1}/completions", json=body) as resp:
                    assert resp.status_code == 200
                    started = time.monotonic()
                    async for _ in resp.aiter_lines():
                        if time.monotonic() - started > 0.5:
                            break

            await asyncio.gather(*(one(i) for i in range(16)))

    asyncio.run(open_and_drop())
    started = time.monotonic()
    out = client.completions.create(model=MODEL, prompt="Hi", max_tokens=4, temperature=0)
    assert out.choices[0].text is not None
    assert time.monotonic() - started < 30
    deadline = time.monotonic() + 15
    while _running(server) > 0 and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _running(server) == 0


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)
    population_millions: int = pydantic.Field(ge=0, le=1000)


CITY_MESSAGES = [{"role": "user", "content": "Describe Paris as JSON: name, country, population."}]


def test_sdk_parse_returns_the_pydantic_model(client: openai.OpenAI) -> None:
    """`chat.completions.parse` sends a strict json_schema and parses the reply with pydantic."""
    completion = client.chat.completions.parse(
        model=MODEL, messages=CITY_MESSAGES, response_format=City, temperature=0, max_tokens=200
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    city = choice.message.parsed
    assert isinstance(city, City)
    # The schema's property order, as OpenAI's strict mode produces it.
    assert list(json.loads(choice.message.content or "")) == [
        "name",
        "country",
        "population_millions",
    ]


def test_streamed_structured_output_equals_the_non_streamed_one(client: openai.OpenAI) -> None:
    options: dict = dict(
        model=MODEL,
        messages=CITY_MESSAGES,
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    full = client.chat.completions.create(**options).choices[0].message.content or ""
    assert isinstance(json.loads(full), dict)
    chunks = client.chat.completions.create(**options, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full


def test_vllm_guided_extras_work_through_extra_body(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        temperature=0,
        max_tokens=10,
        extra_body={"guided_choice": ["yes", "no"]},
    )
    assert answer.choices[0].message.content in ("yes", "no")
    date = client.completions.create(
        model=MODEL,
        prompt="The date today is",
        temperature=0.8,
        seed=1,
        max_tokens=20,
        extra_body={"structured_outputs": {"regex": r" \d{4}-\d{2}-\d{2}"}},
    )
    assert re.fullmatch(r" [0-9]{4}-[0-9]{2}-[0-9]{2}", date.choices[0].text)


def test_a_schema_that_cannot_compile_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=CITY_MESSAGES,
            max_tokens=5,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"type": "objekt"}},
            },
        )
    assert caught.value.body["param"] == "response_format"  # type: ignore[index]
    assert "invalid JSON schema" in caught.value.body["message"]  # type: ignore[index]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 20}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def _weather_call(tool_choice: Any, **extra: Any) -> dict[str, Any]:
    """A greedy request offering both tools, forcing a call with `tool_choice`."""
    options: dict[str, Any] = dict(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice=tool_choice,
        temperature=0,
        max_tokens=120,
    )
    return {**options, **extra}


def _streamed_calls(chunks: Any) -> tuple[list[dict[str, str]], str | None]:
    """Assemble streamed tool-call deltas the way OpenAI clients do (by index)."""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_choice_returns_that_call_with_valid_arguments(
    client: openai.OpenAI, stream: bool
) -> None:
    options = _weather_call({"type": "function", "function": {"name": "get_weather"}})
    full = client.chat.completions.create(**options)
    choice = full.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    if stream:
        calls, finish = _streamed_calls(client.chat.completions.create(**options, stream=True))
        assert finish == "stop"
        assert [(c["name"], c["arguments"]) for c in calls] == [
            ("get_weather", call.function.arguments)
        ]
        assert calls[0]["id"].startswith("call_")


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice_returns_calls_of_the_given_tools(
    client: openai.OpenAI, stream: bool
) -> None:
    options = _weather_call("required", parallel_tool_calls=False)
    full = client.chat.completions.create(**options)
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name in ("get_weather", "get_time")
    arguments = json.loads(call.function.arguments)
    wanted = {"get_weather": {"city", "unit"}, "get_time": {"zone"}}[call.function.name]
    assert set(arguments) == wanted
    if stream:
        calls, finish = _streamed_calls(client.chat.completions.create(**options, stream=True))
        assert finish == "tool_calls"
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
            (call.function.name, arguments)
        ]


def test_auto_tool_choice_is_refused_naming_what_works(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], max_tokens=5
        )
    body: Any = caught.value.body
    assert body["param"] == "tool_choice"
    assert '"auto" tool choice' in body["message"] and "required" in body["message"]


class Forecast(pydantic.BaseModel):
    """The weather forecast for a city."""

    city: str = pydantic.Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]
    days: int = pydantic.Field(ge=1, le=7)


class Clock(pydantic.BaseModel):
    """The time in a zone."""

    zone: str = pydantic.Field(max_length=20)


def test_sdk_parse_with_a_pydantic_tool_gives_parsed_arguments(client: openai.OpenAI) -> None:
    """`pydantic_function_tool` sends a strict schema with $defs; both forced modes parse."""
    tools = [openai.pydantic_function_tool(Forecast), openai.pydantic_function_tool(Clock)]
    for tool_choice in ("required", {"type": "function", "function": {"name": "Forecast"}}):
        completion = client.chat.completions.parse(
            model=MODEL,
            messages=WEATHER_QUESTION,
            tools=tools,  # type: ignore[arg-type]
            tool_choice=tool_choice,  # type: ignore[arg-type]
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=120,
        )
        (call,) = completion.choices[0].message.tool_calls or []
        expected = {"Forecast": Forecast, "Clock": Clock}[call.function.name]
        assert isinstance(call.function.parsed_arguments, expected)


def test_sdk_stream_helper_reports_every_forced_call_done(client: openai.OpenAI) -> None:
    """The SDK's stream state reads a chunk's finish_reason before its tool calls: calls and
    finish come in separate chunks, or the last call's "done" event is never raised."""
    with client.chat.completions.stream(**_weather_call("required", max_tokens=200)) as stream:
        done = [e.name for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert calls and done == [c.function.name for c in calls]
    assert final.choices[0].finish_reason == "tool_calls"
