"""The official OpenAI SDK against the API under uvicorn (the client our users run)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from .conftest import MODEL, Stack
from .fakes import FakeWorker

MESSAGES = [{"role": "user", "content": "Count."}]


def test_chat(sdk: openai.OpenAI) -> None:
    out = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, n=2)
    assert [c.message.content for c in out.choices] == [" one two three", " two three four"]
    assert out.usage is not None and out.usage.completion_tokens == 6
    assert out.usage.prompt_tokens_details is not None
    assert out.usage.prompt_tokens_details.cached_tokens == 3
    assert out.service_tier == "default"  # OpenAI's field, as the README says


def test_chat_stream_with_usage(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=1,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " one two three"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    tokens = [
        lp.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for lp in c.choices[0].logprobs.content or []
    ]
    assert tokens == [" one", " two", " three"]
    assert {c.service_tier for c in chunks} == {"default"}


def test_completions_echo_logprobs(sdk: openai.OpenAI) -> None:
    out = sdk.completions.create(model=MODEL, prompt="Hi", max_tokens=2, echo=True, logprobs=1)
    choice = out.choices[0]
    assert choice.text == "Hi one two"
    assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
    assert choice.logprobs.token_logprobs[0] is None
    stream = sdk.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=1, stream=True)
    assert sorted(c.choices[0].index for c in stream) == [0, 1]


def test_null_fields_take_their_defaults(sdk: openai.OpenAI) -> None:
    """Wrappers pass every keyword through; OpenAI types these "X or null"."""
    chat = sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, n=None, stream=None, logprobs=None
    )
    assert [c.message.content for c in chat.choices] == [" one two three"]
    assert chat.choices[0].logprobs is None
    text = sdk.completions.create(model=MODEL, prompt="Hi", max_tokens=2, echo=None, stream=None)
    assert text.choices[0].text == " one two"
    answer = sdk.responses.create(
        model=MODEL, input="Count.", max_output_tokens=3, store=None, stream=None
    )
    assert answer.output_text == " one two three"
    assert sdk.responses.retrieve(answer.id).id == answer.id  # store's default: stored


def test_models(sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == [MODEL]
    assert sdk.models.retrieve(MODEL).owned_by == "conveyor"


def test_errors(sdk: openai.OpenAI, worker: FakeWorker) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=-1)
    assert bad.value.status_code == 400 and "temperature" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as long:
        sdk.completions.create(model=MODEL, prompt="hello " * 300, max_tokens=10)
    assert "256" in str(long.value)
    worker.behaviour = "gap"
    with pytest.raises(openai.APIError, match="lost"):
        for _ in sdk.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
        ):
            pass


def test_async_client_concurrent(stack: Stack, worker: FakeWorker) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=10
        ) as client:
            results = await asyncio.gather(
                *(
                    client.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=2)
                    for i in range(8)
                )
            )
        return [r.choices[0].text for r in results]

    assert asyncio.run(run()) == [" one two"] * 8
