"""POST /inference/v1/generate on the real `conveyor serve` tree: the token ids it
answers are the ones /v1/completions generates for the same prompt ids, streamed or
whole, with logprobs named by id; and POST /abort_requests ends one by its name."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai

MODEL = "smollm2"
PATH = "/inference/v1/generate"


def prompt_ids(http: httpx.Client) -> list[int]:
    reply = http.post("/tokenize", json={"model": MODEL, "prompt": "The capital of France is"})
    return reply.json()["tokens"]


def stream_events(http: httpx.Client, body: dict[str, Any], **headers: str) -> Iterator[dict]:
    with http.stream("POST", PATH, json={**body, "stream": True}, headers=headers) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line.removeprefix("data: "))


def test_greedy_token_ids_equal_the_completions_endpoints_streamed_or_whole(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, sdk = dev_server
    prompt = prompt_ids(http)
    completion = sdk.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=12,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    want = completion.choices[0].token_ids  # type: ignore[attr-defined]
    assert len(want) == 12
    body = {
        "token_ids": prompt,
        "sampling_params": {"temperature": 0, "max_tokens": 12, "logprobs": 2},
    }
    whole = http.post(PATH, json=body).json()
    (choice,) = whole["choices"]
    assert choice["token_ids"] == want and choice["finish_reason"] == "length"
    content = choice["logprobs"]["content"]
    assert [entry["token"] for entry in content] == [f"token_id:{t}" for t in want]
    for entry, token in zip(content, want, strict=True):
        # Greedy: the token chosen is the most likely one listed.
        assert entry["top_logprobs"][0]["token"] == f"token_id:{token}"
        assert entry["logprob"] <= 0
    assert whole["usage"] == {
        **whole["usage"],
        "prompt_tokens": len(prompt),
        "completion_tokens": 12,
    }
    streamed = [
        t for event in stream_events(http, body) for c in event["choices"] for t in c["token_ids"]
    ]
    assert streamed == want


def test_a_named_stream_ends_on_abort_with_the_ids_it_has(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, _ = dev_server
    body = {
        "token_ids": prompt_ids(http),
        "sampling_params": {"temperature": 0, "max_tokens": 200, "ignore_eos": True},
    }
    got: list[int] = []
    finish = None
    aborted: list[dict] = []

    def abort() -> None:
        reply = http.post("/abort_requests", json={"request_ids": ["generate-tokens-rl-9"]})
        aborted.append(reply.json())

    caller = threading.Thread(target=abort)
    for event in stream_events(http, body, **{"X-Request-Id": "rl-9"}):
        assert event["request_id"] == "generate-tokens-rl-9"
        for choice in event["choices"]:
            got += choice["token_ids"]
            finish = choice["finish_reason"] or finish
        if len(got) >= 3 and not caller.is_alive() and not aborted:
            caller.start()
            time.sleep(0.1)
    caller.join()
    assert aborted == [{"status": "aborted", "aborted": 1}]
    assert finish == "abort" and 3 <= len(got) < 200


def test_a_structured_output_constraint_holds(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, _ = dev_server
    params = {"temperature": 1.0, "seed": 3, "structured_outputs": {"choice": ["Rome", "Oslo"]}}
    answer = http.post(PATH, json={"token_ids": prompt_ids(http), "sampling_params": params})
    assert answer.status_code == 200, answer.text
    (choice,) = answer.json()["choices"]
    text = http.post("/detokenize", json={"model": MODEL, "tokens": choice["token_ids"]})
    assert text.json()["prompt"] in ("Rome", "Oslo")
    assert choice["finish_reason"] == "stop"


def test_a_rendered_chat_generates_the_chats_own_tokens(
    dev_server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, sdk = dev_server
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = sdk.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=10,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    want = chat.choices[0].token_ids  # type: ignore[attr-defined]
    rendered = http.post(
        "/v1/chat/completions/render",
        json={"model": MODEL, "messages": messages, "max_tokens": 10, "temperature": 0},
    ).json()
    assert rendered["token_ids"] == chat.prompt_token_ids  # type: ignore[attr-defined]
    answer = http.post(PATH, json=rendered).json()
    assert answer["choices"][0]["token_ids"] == want
