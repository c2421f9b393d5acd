"""The real server (embedded engine worker, real Redis) through the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
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


def test_bad_input_gets_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5)
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
    prompts = [f"Count from {i} to {i + 5}:" for i in range(32)]
    sequential = [
        client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0)
        .choices[0]
        .text
        for p in prompts
    ]

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
